"""What the detector concludes: alarms, per-signal verdicts and the report (frozen, JSON-ready)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from modeld.core.drift.arrays import json_float


@dataclass(frozen=True, slots=True)
class DriftAlarm:
    """One alarm: the start of one episode of change (see ``DriftDetector``).

    ``signal`` is the first signal that left its reference; ``signals`` every signal that
    moved with it (in the same scored batch, or the same evaluation), ``signal`` first.
    ``detail`` says, in each signal's own units, what changed, over which records and time
    span, against which reference, by which test and with which false-alarm budget.
    ``episode`` numbers the detector's episodes from 1.
    """

    signal: str
    kind: str
    detector: str  # "cusum" (streaming) or "window" (scheduled test)
    at: float
    record: int
    statistic: float
    detail: str
    signals: tuple[str, ...] = ()
    episode: int = 0

    @property
    def moved(self) -> tuple[str, ...]:
        """Every signal of the alarm, ``signal`` first (an alarm built without ``signals``
        names its one)."""
        return self.signals or (self.signal,)

    def to_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "kind": self.kind, "detector": self.detector,
                "at": self.at, "record": self.record, "statistic": json_float(self.statistic),
                "detail": self.detail, "signals": list(self.moved), "episode": self.episode}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftAlarm:
        stat = data.get("statistic")
        return cls(str(data["signal"]), str(data["kind"]), str(data["detector"]),
                   float(data["at"]), int(data["record"]),
                   float("nan") if stat is None else float(stat), str(data.get("detail", "")),
                   tuple(str(s) for s in data.get("signals", ())), int(data.get("episode", 0)))


@dataclass(frozen=True, slots=True)
class SignalResult:
    """The verdict on one watched signal at one evaluation.

    ``status``: ``ok``, ``warning`` (significant but below the effect-size gate, or latency
    degraded), ``drift`` (significant and above the gate, or a streaming alarm still within its
    cooldown) or ``insufficient_data`` (no reference yet, or fewer than ``min_window_records``
    usable values). ``cusum_level`` is the largest CUSUM statistic of the signal as a fraction of
    its threshold (1.0 would alarm).
    """

    name: str
    kind: str  # score | anomaly_rate | feature | invalid_rate | correlation | latency
    status: str
    method: str
    statistic: float | None
    p_value: float | None
    p_adjusted: float | None
    effect_size: float | None
    psi: float | None
    window_size: int
    reference_size: int
    reference_source: str
    missing: int = 0
    cusum_level: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = json_float(value) if isinstance(value, float) else value
        return out


@dataclass(frozen=True, slots=True)
class DriftReport:
    """What ``DriftDetector.evaluate`` concluded; JSON-ready through ``to_dict``.

    ``alarms`` are the alarms raised since the previous evaluation (streaming and windowed).
    ``status`` is ``drift`` when any data signal drifts (latency never counts as drift).
    ``episode`` is the latest episode of change (``number``, ``opened_at``, ``opened_record``,
    ``open``, ``signals`` with what each said when it joined), or None before the first.
    """

    evaluated_at: float
    status: str
    reference_source: str
    baseline_progress: tuple[int, int] | None
    records_seen: int
    invalid_seen: int
    missing_counts: Mapping[str, int]
    signals: tuple[SignalResult, ...]
    alarms: tuple[DriftAlarm, ...]
    last_alarm_at: float | None
    episode: Mapping[str, Any] | None = None

    def signal(self, name: str) -> SignalResult:
        for result in self.signals:
            if result.name == name:
                return result
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated_at": self.evaluated_at,
            "status": self.status,
            "reference_source": self.reference_source,
            "baseline_progress": (None if self.baseline_progress is None
                                  else list(self.baseline_progress)),
            "records_seen": self.records_seen,
            "invalid_seen": self.invalid_seen,
            "missing_counts": dict(self.missing_counts),
            "signals": [s.to_dict() for s in self.signals],
            "alarms": [a.to_dict() for a in self.alarms],
            "last_alarm_at": self.last_alarm_at,
            "episode": None if self.episode is None else dict(self.episode),
        }


__all__ = ["DriftAlarm", "DriftReport", "SignalResult"]
