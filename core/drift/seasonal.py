"""The daily and weekly cycle: which records are compared with which part of the reference.

WiFi traffic has a cycle that is not drift: by day clients connect and roam, at night idle ones
time out, at weekends there are fewer of them. A model that sees the hour (``hour_of_day``)
gets a reference per part of the day, and per working day and weekend when it also sees
``day_of_week`` or ``is_weekend``; each record is judged against the part it belongs to (like
hour to like hour). The clock features themselves are the key, not data: in records streamed
in time order their distribution is the clock's, so they get no CUSUM and no windowed test of
their own (the report names them with method ``seasonal``). Pure functions of the values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from modeld.core.drift.arrays import FloatArray, IntArray

CLOCK_FEATURES: Final = frozenset({
    "hour_of_day", "day_of_week", "minute_of_day", "is_weekend", "time_of_day_sin",
    "time_of_day_cos", "day_fraction"})
"""Catalog features computed from the timestamp alone (see docs/features.md)."""

PARTS_OF_DAY: Final = ((0, 6), (6, 12), (12, 18), (18, 24))
"""The parts of the day (UTC hours, end excluded) that get a reference of their own."""

MIN_SEASON_ROWS: Final = 300
"""A part of the reference with fewer rows is not used: its records are judged against the
whole reference (a small reference would make its thresholds, and its alarms, unreliable)."""


@dataclass(frozen=True, slots=True)
class SeasonKey:
    """Where a record's season is read: the hour column and, if any, the weekday column.

    A season is a slot ``part + 4 * weekend`` in ``0..7``; -1 for a record whose hour is not a
    number in [0, 24).
    """

    hour_column: int
    day_column: int | None
    weekend_from: float  # day_of_week >= 5 (Saturday) or is_weekend >= 0.5

    @property
    def slots(self) -> int:
        return len(PARTS_OF_DAY) * (2 if self.day_column is not None else 1)

    def name(self, slot: int) -> str:
        start, end = PARTS_OF_DAY[slot % len(PARTS_OF_DAY)]
        hours = f"{start:02d}-{end:02d} h UTC"
        if self.day_column is None:
            return hours
        return ("weekend " if slot >= len(PARTS_OF_DAY) else "working days ") + hours

    def of_rows(self, values: FloatArray) -> IntArray:
        """The slot of every row of ``values`` (n, columns)."""
        hour = values[:, self.hour_column]
        part = np.searchsorted(np.asarray([end for _, end in PARTS_OF_DAY[:-1]], dtype=float),
                               hour, side="right")
        slot = part.astype(np.intp)
        if self.day_column is not None:
            slot = slot + len(PARTS_OF_DAY) * (values[:, self.day_column] >= self.weekend_from)
        bad = ~((hour >= 0.0) & (hour < 24.0))
        slot[bad] = -1
        return slot

    def of_one(self, values: FloatArray) -> int:
        """``of_rows`` for one record (columns,): the scoring path's lean version."""
        hour = float(values[self.hour_column])
        if not 0.0 <= hour < 24.0:
            return -1
        slot = min(int(hour // 6.0), len(PARTS_OF_DAY) - 1)
        if self.day_column is not None and float(values[self.day_column]) >= self.weekend_from:
            slot += len(PARTS_OF_DAY)
        return slot


def season_key(feature_names: Sequence[str]) -> SeasonKey | None:
    """The season key of a model's features; None when it does not see the hour."""
    names = list(feature_names)
    if "hour_of_day" not in names:
        return None
    day: int | None = None
    weekend_from = math.inf
    if "day_of_week" in names:
        day, weekend_from = names.index("day_of_week"), 5.0
    elif "is_weekend" in names:
        day, weekend_from = names.index("is_weekend"), 0.5
    return SeasonKey(names.index("hour_of_day"), day, weekend_from)


def clock_columns(feature_names: Sequence[str]) -> list[bool]:
    """Per feature, whether it is a clock feature (a seasonal key, not data)."""
    return [name in CLOCK_FEATURES for name in feature_names]


__all__ = ["CLOCK_FEATURES", "MIN_SEASON_ROWS", "PARTS_OF_DAY", "SeasonKey", "clock_columns",
           "season_key"]
