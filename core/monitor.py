"""What the scoring path saw, per model version: bounded windows, running totals, a time series.

``ScoringWindow.observe`` is on the hot path of every scored batch, so it only copies the batch
into fixed-size ring buffers and updates a handful of totals; everything that sorts or averages
(``snapshot``, ``roll``) runs on the scheduler's or the HTTP handler's time. Memory is fixed at
construction: rings of ``capacity`` records and ``latency_capacity`` requests, at most
``max_intervals`` closed intervals.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from modeld.core.ring import Ring

STATE_FORMAT: Final = "modeld.scoring_window/1"

# Upper bounds (seconds) of the latency histogram's buckets; a last bucket takes the rest.
LATENCY_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                            1.0, 2.5, 5.0, 10.0)


def _quantile(values: NDArray[np.float64], q: float) -> float | None:
    return float(np.quantile(values, q)) if values.size else None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True)
class IntervalSummary:
    """Aggregates of one closed interval (one point of the dashboard's time series).

    ``sampled`` is true when the interval held more records (or requests) than the rings keep:
    its quantiles then describe only the latest ``capacity`` of them; the counts are exact.
    """

    start: float
    end: float
    records: int
    anomalies: int
    invalid: int
    requests: int
    anomaly_rate: float | None
    score_p50: float | None
    latency_p50_s: float | None
    latency_p99_s: float | None
    sampled: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervalSummary:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


class ScoringWindow:
    """Recent records and running totals of one model version's scoring.

    Called by the scoring path (``observe``, ``observe_invalid``) from many threads: the daemon
    holds one small lock around each call; this class itself is not thread-safe. The scheduler
    calls ``roll`` once per interval; the HTTP layer calls ``snapshot`` and ``time_series``.
    ``observe`` raises ``ValueError`` only for arrays of inconsistent shape (a caller bug).
    ``to_state``/``from_state`` keep the totals, the histogram and the closed intervals (not the
    raw rings) across restarts as a JSON-ready dict.
    """

    def __init__(self, version: str, *, n_features: int | None = None, capacity: int = 10_000,
                 latency_capacity: int = 10_000, max_intervals: int = 1440,
                 started_at: float = 0.0) -> None:
        if capacity < 1 or latency_capacity < 1 or max_intervals < 1:
            raise ValueError("capacities must be at least 1")
        self.version = version
        self.capacity = capacity
        self.latency_capacity = latency_capacity
        self.max_intervals = max_intervals
        self._scores = Ring(capacity, fill=np.nan)
        self._flags = Ring(capacity, dtype=bool, fill=False)
        self._features: Ring | None = None
        if n_features is not None:
            self._features = Ring(capacity, (n_features,), fill=np.nan)
        self._latencies = Ring(latency_capacity)
        # Running totals since the version was first observed (survive restarts).
        self.records = 0
        self.anomalies = 0
        self.invalid = 0
        self.requests = 0
        self._score_count = 0
        self._score_sum = 0.0
        self._score_min = math.inf
        self._score_max = -math.inf
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        # The open interval: where it started in time and in the rings' write counts.
        self._interval_start = started_at
        self._interval_first_record = 0
        self._interval_first_request = 0
        self._interval_first_written = 0
        self._interval_first_lat_written = 0
        self._interval_anomalies = 0
        self._interval_invalid = 0
        self._intervals: deque[IntervalSummary] = deque(maxlen=max_intervals)

    # ---- hot path

    def observe(self, features: NDArray[np.float64] | None, scores: NDArray[np.float64],
                flags: NDArray[np.bool_], latency_s: float, now: float) -> None:
        """Record one scored request: its rows' features, scores, flags, and its latency."""
        n = scores.shape[0]
        if n == 1:
            score = float(scores[0])
            flag = bool(flags[0])
            self._write_features(features, 1)
            self._scores.append(score)
            self._flags.append(flag)
            self.records += 1
            if flag:
                self.anomalies += 1
                self._interval_anomalies += 1
            if not math.isnan(score):
                self._score_count += 1
                self._score_sum += score
                self._score_min = min(self._score_min, score)
                self._score_max = max(self._score_max, score)
        elif n:
            if flags.shape != (n,) or (features is not None and features.shape[0] != n):
                raise ValueError("features, scores and flags must have one entry per row")
            self._write_features(features, n)
            self._scores.extend(scores)
            self._flags.extend(flags)
            anomalies = int(np.count_nonzero(flags))
            self.records += n
            self.anomalies += anomalies
            self._interval_anomalies += anomalies
            finite = scores[np.isfinite(scores)]
            if finite.size:
                self._score_count += finite.size
                self._score_sum += float(finite.sum())
                self._score_min = min(self._score_min, float(finite.min()))
                self._score_max = max(self._score_max, float(finite.max()))
        self._latencies.append(latency_s)
        self.requests += 1
        self._latency_sum += latency_s
        self._latency_max = max(self._latency_max, latency_s)
        self._latency_counts[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        if self.first_seen is None:
            self.first_seen = now
        self.last_seen = now

    def observe_invalid(self, count: int, now: float) -> None:
        """Count records rejected before scoring (invalid input)."""
        if count <= 0:
            return
        self.invalid += count
        self._interval_invalid += count
        if self.first_seen is None:
            self.first_seen = now
        self.last_seen = now

    def _write_features(self, features: NDArray[np.float64] | None, n: int) -> None:
        """Features of the next ``n`` records, in step with the score ring (before it)."""
        ring = self._features
        if features is None:
            if ring is not None:
                ring.skip(n)
            return
        width = features.shape[1]
        if ring is None:
            # The first features seen: a ring that starts where the score ring is, so that
            # row i of both is the same record.
            ring = self._features = Ring(self.capacity, (width,), fill=np.nan)
            ring.skip(self._scores.written)
        elif ring.row_shape[0] != width:
            raise ValueError(f"features have {width} columns, this window holds "
                             f"{ring.row_shape[0]}")
        if n == 1:
            ring.append(features[0])
        else:
            ring.extend(features)

    # ---- reads (scheduler / HTTP)

    def recent_scores(self, last: int | None = None) -> NDArray[np.float64]:
        return self._scores.recent(last or self.capacity)

    def recent_flags(self, last: int | None = None) -> NDArray[np.bool_]:
        return self._flags.recent(last or self.capacity)

    def recent_features(self, last: int | None = None) -> NDArray[np.float64] | None:
        if self._features is None:
            return None
        return self._features.recent(last or self.capacity)

    def recent_latencies(self, last: int | None = None) -> NDArray[np.float64]:
        return self._latencies.recent(last or self.latency_capacity)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready aggregates: totals since first seen, quantiles over the windows."""
        scores = self.recent_scores()
        scores = scores[np.isfinite(scores)]
        flags = self.recent_flags()
        latencies = self.recent_latencies()
        mean = self._score_sum / self._score_count if self._score_count else None
        return {
            "version": self.version,
            "records": self.records,
            "anomalies": self.anomalies,
            "anomaly_rate": self.anomalies / self.records if self.records else None,
            "invalid": self.invalid,
            "requests": self.requests,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "score": {
                "mean": mean,
                "min": _finite_or_none(self._score_min),
                "max": _finite_or_none(self._score_max),
                "p50": _quantile(scores, 0.5),
                "p95": _quantile(scores, 0.95),
            },
            "latency_s": {
                "mean": self._latency_sum / self.requests if self.requests else None,
                "max": self._latency_max if self.requests else None,
                "p50": _quantile(latencies, 0.5),
                "p99": _quantile(latencies, 0.99),
                "histogram": {"le": [*LATENCY_BUCKETS_S, None],
                              "counts": list(self._latency_counts)},
            },
            "window": {
                "records": int(flags.size),
                "capacity": self.capacity,
                "anomaly_rate": float(flags.mean()) if flags.size else None,
                "requests": int(latencies.size),
                "latency_capacity": self.latency_capacity,
            },
            "interval": {
                "start": self._interval_start,
                "records": self.records - self._interval_first_record,
                "requests": self.requests - self._interval_first_request,
                "anomalies": self._interval_anomalies,
                "invalid": self._interval_invalid,
            },
        }

    def roll(self, now: float) -> IntervalSummary:
        """Close the open interval at ``now``, append it to the time series, open the next."""
        records = self.records - self._interval_first_record
        requests = self.requests - self._interval_first_request
        in_ring = self._scores.written - self._interval_first_written
        lat_in_ring = self._latencies.written - self._interval_first_lat_written
        scores = self.recent_scores(in_ring) if in_ring else np.zeros(0)
        scores = scores[np.isfinite(scores)]
        latencies = self.recent_latencies(lat_in_ring) if lat_in_ring else np.zeros(0)
        summary = IntervalSummary(
            start=self._interval_start, end=now, records=records,
            anomalies=self._interval_anomalies, invalid=self._interval_invalid,
            requests=requests,
            anomaly_rate=self._interval_anomalies / records if records else None,
            score_p50=_quantile(scores, 0.5),
            latency_p50_s=_quantile(latencies, 0.5),
            latency_p99_s=_quantile(latencies, 0.99),
            sampled=(in_ring > self.capacity or lat_in_ring > self.latency_capacity
                     or in_ring < records or lat_in_ring < requests))
        self._intervals.append(summary)
        self._interval_start = now
        self._interval_first_record = self.records
        self._interval_first_request = self.requests
        self._interval_first_written = self._scores.written
        self._interval_first_lat_written = self._latencies.written
        self._interval_anomalies = 0
        self._interval_invalid = 0
        return summary

    @property
    def intervals(self) -> tuple[IntervalSummary, ...]:
        return tuple(self._intervals)

    def time_series(self) -> list[dict[str, Any]]:
        """The closed intervals, oldest first, as JSON-ready dicts."""
        return [summary.to_dict() for summary in self._intervals]

    # ---- persistence

    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": self.version,
            "capacity": self.capacity,
            "latency_capacity": self.latency_capacity,
            "max_intervals": self.max_intervals,
            "n_features": None if self._features is None else self._features.row_shape[0],
            "totals": {
                "records": self.records, "anomalies": self.anomalies, "invalid": self.invalid,
                "requests": self.requests, "score_count": self._score_count,
                "score_sum": self._score_sum,
                "score_min": _finite_or_none(self._score_min),
                "score_max": _finite_or_none(self._score_max),
                "latency_sum": self._latency_sum, "latency_max": self._latency_max,
                "latency_counts": list(self._latency_counts),
                "first_seen": self.first_seen, "last_seen": self.last_seen,
            },
            "interval": {
                "start": self._interval_start,
                "records": self.records - self._interval_first_record,
                "requests": self.requests - self._interval_first_request,
                "anomalies": self._interval_anomalies,
                "invalid": self._interval_invalid,
            },
            "intervals": self.time_series(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ScoringWindow:
        """Inverse of ``to_state``; the rings start empty. Raises ``ValueError`` on another format."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state: {state.get('format')!r}")
        window = cls(str(state["version"]), n_features=state.get("n_features"),
                     capacity=int(state["capacity"]),
                     latency_capacity=int(state["latency_capacity"]),
                     max_intervals=int(state["max_intervals"]))
        totals = state["totals"]
        window.records = int(totals["records"])
        window.anomalies = int(totals["anomalies"])
        window.invalid = int(totals["invalid"])
        window.requests = int(totals["requests"])
        window._score_count = int(totals["score_count"])
        window._score_sum = float(totals["score_sum"])
        low, high = totals["score_min"], totals["score_max"]
        window._score_min = math.inf if low is None else float(low)
        window._score_max = -math.inf if high is None else float(high)
        window._latency_sum = float(totals["latency_sum"])
        window._latency_max = float(totals["latency_max"])
        counts = [int(c) for c in totals["latency_counts"]]
        if len(counts) != len(window._latency_counts):
            raise ValueError("latency histogram has another bucket layout")
        window._latency_counts = counts
        window.first_seen = totals["first_seen"]
        window.last_seen = totals["last_seen"]
        interval = state["interval"]
        window._interval_start = float(interval["start"])
        # The open interval's counts carry over; its records are no longer in the rings.
        window._interval_first_record = window.records - int(interval["records"])
        window._interval_first_request = window.requests - int(interval["requests"])
        window._interval_anomalies = int(interval["anomalies"])
        window._interval_invalid = int(interval["invalid"])
        for item in state.get("intervals", []):
            window._intervals.append(IntervalSummary.from_dict(item))
        return window


__all__ = ["LATENCY_BUCKETS_S", "IntervalSummary", "ScoringWindow"]

