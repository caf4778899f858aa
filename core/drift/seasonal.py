"""The daily and weekly cycle: which records are compared with which part of the reference.

WiFi traffic has a cycle that is not drift: by day clients connect and roam, at night idle ones
time out, at weekends there are fewer of them. A model that sees the hour (``hour_of_day``)
gets a reference per part of the day (adjacent hours with enough reference rows: a busy hour
alone, the quiet night together), and per working day and weekend when it also sees
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

MIN_SEASON_ROWS: Final = 300
"""The fewest reference rows a part of the day is built from: adjacent hours are merged until
they hold as many (busy hours stand alone, the night is one part). A kind of day with fewer
rows in all has no parts: its records are judged against the whole reference."""


@dataclass(frozen=True, slots=True)
class SeasonKey:
    """Where a record's season is read: the hour column and, if any, the weekday column.

    A record's slot is its hour, plus 24 at weekends when the model sees the weekday; -1 for
    a record whose hour is not a number in [0, 24).
    """

    hour_column: int
    day_column: int | None
    weekend_from: float  # day_of_week >= 5 (Saturday) or is_weekend >= 0.5

    @property
    def slots(self) -> int:
        return 24 * (2 if self.day_column is not None else 1)

    def name(self, slots: Sequence[int]) -> str:
        """``working days 08-09 h UTC`` for the slots of one part (adjacent hours)."""
        first, last = min(slots) % 24, max(slots) % 24
        hours = f"{first:02d}-{last + 1:02d} h UTC"
        if self.day_column is None:
            return hours
        return ("weekends " if min(slots) >= 24 else "working days ") + hours

    def of_rows(self, values: FloatArray) -> IntArray:
        """The slot of every row of ``values`` (n, columns)."""
        hour = values[:, self.hour_column]
        good = (hour >= 0.0) & (hour < 24.0)
        slot = np.where(good, np.floor(np.where(good, hour, 0.0)), -1).astype(np.intp)
        if self.day_column is not None:
            slot = np.where(good, slot + 24 * (values[:, self.day_column] >= self.weekend_from),
                            -1)
        return slot

    def of_one(self, values: FloatArray) -> int:
        """``of_rows`` for one record (columns,): the scoring path's lean version."""
        hour = float(values[self.hour_column])
        if not 0.0 <= hour < 24.0:
            return -1
        slot = int(hour)
        if self.day_column is not None and float(values[self.day_column]) >= self.weekend_from:
            slot += 24
        return slot

    def parts(self, slots: IntArray) -> list[tuple[int, ...]]:
        """Adjacent hours grouped into parts of at least ``MIN_SEASON_ROWS`` of the rows whose
        slots are given, per kind of day; a short last group joins the one before."""
        counts = np.bincount(slots[slots >= 0], minlength=self.slots)
        parts: list[tuple[int, ...]] = []
        for day in range(self.slots // 24):
            if counts[24 * day:24 * day + 24].sum() < MIN_SEASON_ROWS:
                continue
            groups: list[list[int]] = [[]]
            held = 0
            for slot in range(24 * day, 24 * day + 24):
                groups[-1].append(slot)
                held += int(counts[slot])
                if held >= MIN_SEASON_ROWS:
                    groups.append([])
                    held = 0
            if not groups[-1]:
                groups.pop()
            elif len(groups) > 1:
                groups[-2].extend(groups.pop())
            parts.extend(tuple(g) for g in groups)
        return parts


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


__all__ = ["CLOCK_FEATURES", "MIN_SEASON_ROWS", "SeasonKey", "clock_columns", "season_key"]
