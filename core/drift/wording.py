"""An alarm in words an operator understands: what changed, in the signal's own units.

"feature:signal_dbm median -62 -> -72 dBm (where not 0: ...)", "feature:is_eap_failure rate 1.1%
-> 4.3%", over which records and time span, against which reference, by which test and with
which false-alarm budget. Called by ``DriftDetector`` when an episode of change opens or a
signal joins one (rarely: never on the common scoring path). Pure functions.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final

import numpy as np

from modeld.core.drift.arrays import BoolArray, FloatArray
from modeld.core.drift.reference import Distribution, Rate

UNITS: Final = {"signal_dbm": " dBm", "message_length": " characters", "frequency_mhz": " MHz",
                "noise_dbm": " dBm", "word_count": " words"}
"""Units of the catalog features that have one (docs/features.md)."""


def number(value: float) -> str:
    """A value as an operator reads it: integers as integers, others to three digits."""
    if not math.isfinite(value):
        return str(value)
    if abs(value - round(value)) < 1e-9 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def percent(rate: float) -> str:
    return f"{100.0 * rate:.2g}%" if rate < 0.1 else f"{100.0 * rate:.0f}%"


def moment(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def rate_change(name: str, reference: Rate | float, events: int, n: int) -> str:
    """``name rate 1.1% -> 4.3% (31 of 720 records)``."""
    before = reference.rate if isinstance(reference, Rate) else float(reference)
    after = events / n if n else math.nan
    return f"{name} rate {percent(before)} -> {percent(after)} ({events:,} of {n:,} records)"


def distribution_change(name: str, dist: Distribution, values: FloatArray) -> str:
    """The median before and after in the feature's units; when one value (an "absent"
    sentinel, a success code) holds most of the reference, the median of the other values
    and how often that value occurs."""
    unit = UNITS.get(name.removeprefix("feature:"), "")
    grid = dist.quantiles
    values = values[np.isfinite(values)]
    if values.size == 0:
        return f"{name}: no finite values held"
    common, count = np.unique(grid, return_counts=True)
    mode = float(common[int(np.argmax(count))])
    share = float(count.max()) / grid.size
    if share >= 0.5 and np.any(grid != mode):
        rest_before = grid[grid != mode]
        rest_after = values[values != mode]
        after = number(float(np.median(rest_after))) if rest_after.size else "none"
        return (f"{name} median {number(float(np.median(rest_before)))} -> {after}{unit} "
                f"where not {number(mode)} ({number(mode)} in {percent(share)} -> "
                f"{percent(float(np.mean(values == mode)))} of records)")
    return (f"{name} median {number(float(np.median(grid)))} -> "
            f"{number(float(np.median(values)))}{unit}")


def span(since: int, record: int, n: int, times: FloatArray) -> str:
    finite = times[np.isfinite(times)]
    when = f", {moment(float(finite[0]))} to {moment(float(finite[-1]))}" if finite.size else ""
    return f"records {since:,}-{record:,} ({n:,} judged{when})"


def flags_of(values: BoolArray) -> tuple[int, int]:
    return int(np.count_nonzero(values)), int(values.size)


__all__ = ["UNITS", "distribution_change", "flags_of", "moment", "number", "percent",
           "rate_change", "span"]
