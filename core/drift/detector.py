"""``DriftDetector``: one model version's streaming CUSUMs and windowed tests, and their state.

The detector owns the signal states (last crossing, cooldown, alarm count), the CUSUM values,
the evaluation window and the baseline still being collected; the engine (engine.py) holds
what is compiled from the reference, the windowed tests (windowed.py) are pure functions of
the window. See the package's docstring and docs/drift.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from modeld.core.drift.arrays import BoolArray, FloatArray
from modeld.core.drift.config import DriftConfig
from modeld.core.drift.engine import Engine
from modeld.core.drift.reference import BaselineCollector, Reference
from modeld.core.drift.results import DriftAlarm, DriftReport, SignalResult
from modeld.core.drift.windowed import (
    TestOutcome,
    correlation_test,
    distribution_test,
    holm,
    latency_test,
    rate_test,
)
from modeld.core.ring import Ring

STATE_FORMAT: Final = "modeld.drift/1"


@dataclass(slots=True)
class _SignalState:
    """One signal's alarm state: its last crossing (which starts the cooldown), its alarms."""

    kind: str
    last_crossing_record: int | None = None
    last_crossing_at: float | None = None
    last_alarm_at: float | None = None
    alarms: int = 0


class DriftDetector:
    """Watches one model version's scored records for drift against its reference.

    Called by the scoring path (``observe``, under the daemon's small monitoring lock, for every
    scored batch) and by the scheduler (``evaluate``, same lock). Not thread-safe by itself.
    ``observe`` returns the streaming alarms the batch raised so they can be logged at once;
    ``evaluate`` runs the windowed tests and returns a ``DriftReport``. Errors: ``ValueError`` for
    arrays of the wrong shape (a caller bug); nothing else is raised on the scoring path.

    If the reference lacks parts (no reference at all, no scores, no anomaly rate...), the first
    ``config.baseline_records`` records are collected and fill exactly those parts; each
    ``SignalResult`` says where its reference came from.
    """

    def __init__(self, feature_names: Sequence[str], config: DriftConfig | None = None,
                 reference: Reference | None = None) -> None:
        self.config = config or DriftConfig()
        self.feature_names = tuple(feature_names)
        d = len(self.feature_names)
        reference = reference or Reference.empty(self.feature_names)
        if reference.feature_names != self.feature_names:
            raise ValueError("the reference was built for other feature names")
        self._reference = reference
        self._baseline: BaselineCollector | None = None
        if reference.missing_parts():
            self._baseline = BaselineCollector(d, self.config.baseline_records)
        self._engine: Engine | None = None
        self._cusum = np.zeros(0)
        self._signals: dict[str, _SignalState] = {}
        for name in self.feature_names:
            self._signals[f"feature:{name}"] = _SignalState("feature")
        for name, kind in (("score", "score"), ("anomaly_rate", "anomaly_rate"),
                           ("invalid_rate", "invalid_rate"), ("correlation", "correlation")):
            self._signals[name] = _SignalState(kind)
        self._position = 0  # records offered: scored plus rejected
        self.records_seen = 0
        self.invalid_seen = 0
        self._missing_counts = np.zeros(d + 1, dtype=np.int64)
        self._pending: deque[DriftAlarm] = deque(maxlen=100)
        w = self.config.window_records
        # The evaluation window: values (features, then the score) and flags of the scored
        # records; the missing flags also of the rejected ones; the requests' latencies.
        self._window = Ring(w, (d + 1,), fill=np.nan)
        self._window_flags = Ring(w, dtype=bool, fill=False)
        self._window_missing = Ring(w, dtype=bool, fill=False)
        self._window_latency = Ring(w)
        self._one = np.empty(d + 1)
        self._rebuild()

    # ---- public API

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def collecting_baseline(self) -> bool:
        return self._baseline is not None

    def observe(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_], *,
                now: float, invalid_count: int = 0,
                latency_s: float | None = None) -> tuple[DriftAlarm, ...]:
        """Feed one scored batch (rows in arrival order); returns the alarms it raised."""
        features = np.asarray(features, dtype=np.float64)
        n = features.shape[0]
        d = len(self.feature_names)
        if features.ndim != 2 or features.shape[1] != d:
            raise ValueError(f"features must have shape (n, {d}), got {features.shape}")
        scores = np.asarray(scores, dtype=np.float64)
        flags = np.asarray(flags, dtype=bool)
        if scores.shape != (n,) or flags.shape != (n,):
            raise ValueError("scores and flags must have one entry per row")
        alarms: list[DriftAlarm] = []
        if invalid_count:
            self._observe_invalid(int(invalid_count), now, alarms)
        if n == 1:
            self._observe_one(features, scores, flags, now, alarms)
        elif n:
            self._observe_rows(features, scores, flags, now, alarms)
        if latency_s is not None:
            self._window_latency.append(latency_s)
        if self._baseline is not None:
            self._baseline.add(features, scores, flags, invalid_count, latency_s)
            if self._baseline.complete:
                built = self._baseline.build(self.feature_names, self.config.reference_levels)
                self._reference = self._reference.completed_by(built)
                self._baseline = None
                self._rebuild()
                # The baseline's records are the reference now: judging them against
                # themselves would hide drift, so the evaluation windows start afresh.
                for ring in (self._window, self._window_flags, self._window_missing,
                             self._window_latency):
                    ring.clear()
        if alarms:
            self._pending.extend(alarms)
        return tuple(alarms)

    def observe_invalid(self, count: int, now: float) -> tuple[DriftAlarm, ...]:
        """Count records rejected before scoring (they feed the invalid-input rate)."""
        alarms: list[DriftAlarm] = []
        if count > 0:
            self._observe_invalid(int(count), now, alarms)
            if self._baseline is not None:
                self._baseline.invalid += int(count)
            self._pending.extend(alarms)
        return tuple(alarms)

    def evaluate(self, now: float) -> DriftReport:
        """Run the windowed tests over the last ``window_records`` records and report."""
        window = self._window.held_rows()
        flags = self._window_flags.held_rows()
        ref = self._reference
        cfg = self.config
        no_reference = self._no_reference_detail()
        results: list[TestOutcome] = []
        for c, dist in enumerate(ref.features):
            name = self.feature_names[c]
            results.append(distribution_test(name, "feature", f"feature:{name}", dist,
                                             window[:, c], cfg, no_reference))
        results.append(distribution_test("score", "score", "score", ref.scores,
                                         window[:, -1], cfg, no_reference))
        results.append(rate_test("anomaly_rate", ref.anomaly_rate,
                                 int(np.count_nonzero(flags)), flags.size, cfg, no_reference))
        miss = self._window_missing.held_rows()
        results.append(rate_test("invalid_rate", ref.invalid_rate,
                                 int(np.count_nonzero(miss)), miss.size, cfg, no_reference))
        if len(self.feature_names) >= 2:
            drifting = np.asarray([self._feature_drifting(c, now, self._position)
                                   for c in range(len(self.feature_names))], dtype=bool)
            results.append(correlation_test(window, self._engine, ref.correlation,
                                            self.feature_names, drifting, cfg, no_reference))
        # Holm across the data signals that produced a p-value.
        tested = [r for r in results if r["p_value"] is not None]
        adjusted = holm(np.asarray([r["p_value"] for r in tested]))
        for r, p_adj in zip(tested, adjusted, strict=True):
            r["p_adjusted"] = float(p_adj)
        signals: list[SignalResult] = []
        for r in results:
            signals.append(self._judge(r, now))
        signals.append(latency_test(ref.latency, self._window_latency.held_rows(), cfg,
                                    no_reference))
        data = [s.status for s in signals if s.kind != "latency"]
        if "drift" in data:
            status = "drift"
        elif "warning" in data or signals[-1].status == "warning":
            status = "warning"
        elif "ok" in data:
            status = "ok"
        else:
            status = "insufficient_data"
        alarms = tuple(self._pending)
        self._pending.clear()
        last = [s.last_alarm_at for s in self._signals.values() if s.last_alarm_at is not None]
        progress = None
        if self._baseline is not None:
            progress = (self._baseline.filled, self._baseline.size)
        source = ref.source
        if source == "none" and self._baseline is not None:
            source = "collecting_baseline"
        return DriftReport(
            evaluated_at=now, status=status, reference_source=source,
            baseline_progress=progress, records_seen=self.records_seen,
            invalid_seen=self.invalid_seen,
            missing_counts=dict(zip([*self.feature_names, "score"],
                                    map(int, self._missing_counts), strict=True)),
            signals=tuple(signals), alarms=alarms,
            last_alarm_at=max(last) if last else None)

    def thresholds(self) -> dict[str, float]:
        """The calibrated CUSUM threshold of every stream (for the docs and the benchmark)."""
        if self._engine is None:
            return {}
        return dict(zip(self._engine.keys, map(float, self._engine.thresholds), strict=True))

    def to_state(self) -> dict[str, Any]:
        """JSON-ready state: reference, baseline in progress, CUSUM statistics, alarm states.

        The evaluation windows are not kept: after a restart the windowed tests report
        ``insufficient_data`` until ``min_window_records`` new records arrived.
        """
        keys = self._engine.keys if self._engine is not None else ()
        return {
            "format": STATE_FORMAT,
            "feature_names": list(self.feature_names),
            "reference": self._reference.to_dict(),
            "baseline": None if self._baseline is None else self._baseline.to_state(),
            "position": self._position,
            "records_seen": self.records_seen,
            "invalid_seen": self.invalid_seen,
            "missing_counts": [int(v) for v in self._missing_counts],
            "cusum": {k: float(v) for k, v in zip(keys, self._cusum, strict=True)},
            "signals": {
                name: {"last_crossing_record": s.last_crossing_record,
                       "last_crossing_at": s.last_crossing_at,
                       "last_alarm_at": s.last_alarm_at, "alarms": s.alarms}
                for name, s in self._signals.items()
            },
            "pending_alarms": [a.to_dict() for a in self._pending],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any],
                   config: DriftConfig | None = None) -> DriftDetector:
        """Inverse of ``to_state``; raises ``ValueError`` for another format."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state: {state.get('format')!r}")
        names = tuple(state["feature_names"])
        reference = Reference.from_dict(state["reference"])
        detector = cls(names, config, reference)
        if state.get("baseline") is not None:
            detector._baseline = BaselineCollector.from_state(state["baseline"], len(names))
        elif detector._baseline is not None:
            detector._baseline = None  # the baseline finished before; parts stay missing
        detector._position = int(state["position"])
        detector.records_seen = int(state["records_seen"])
        detector.invalid_seen = int(state["invalid_seen"])
        detector._missing_counts = np.asarray(state["missing_counts"], dtype=np.int64)
        if detector._engine is not None:
            saved = state.get("cusum", {})
            detector._cusum = np.asarray([float(saved.get(k, 0.0))
                                          for k in detector._engine.keys])
        for name, saved_signal in state.get("signals", {}).items():
            if name in detector._signals:
                s = detector._signals[name]
                s.last_crossing_record = saved_signal["last_crossing_record"]
                s.last_crossing_at = saved_signal["last_crossing_at"]
                s.last_alarm_at = saved_signal["last_alarm_at"]
                s.alarms = int(saved_signal["alarms"])
        detector._pending.extend(DriftAlarm.from_dict(a) for a in state.get("pending_alarms", []))
        return detector

    # ---- streaming internals

    def _observe_one(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                     now: float, alarms: list[DriftAlarm]) -> None:
        """One record: the common case on the scoring path, kept to a few numpy calls."""
        values = self._one
        values[:-1] = features[0]
        values[-1] = scores[0]
        if not math.isfinite(float(np.add.reduce(values))):
            self._observe_rows(features, scores, flags, now, alarms)
            return
        flag = bool(flags[0])
        engine = self._engine
        if engine is not None and engine.keys:
            cusum = self._cusum
            cusum += engine.increments_one(values, flag)
            np.maximum(cusum, 0.0, out=cusum)
            if cusum.max() > 1.0:
                for k in np.flatnonzero(cusum > 1.0):
                    self._crossing(int(k), self._position, now, float(cusum[k]), alarms)
                    cusum[k] = 0.0
        self._window.append(values)
        self._window_flags.append(flag)
        self._window_missing.append(False)
        self._position += 1
        self.records_seen += 1

    def _observe_rows(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                      now: float, alarms: list[DriftAlarm]) -> None:
        n, d = features.shape
        values = np.empty((n, d + 1))
        values[:, :d] = features
        values[:, d] = scores
        finite = np.isfinite(values)
        missing: BoolArray | None = None
        finite_or_none: BoolArray | None = None
        if not finite.all():
            missing = np.logical_not(np.all(finite, axis=1))
            finite_or_none = finite
            self._missing_counts += n - np.count_nonzero(finite, axis=0)
            values = np.where(finite, values, self._fill)
        engine = self._engine
        if engine is not None and engine.keys:
            self._advance(engine.increments(values, flags, missing, finite_or_none), now, alarms)
        if finite_or_none is not None:
            values = np.where(finite_or_none, values, np.nan)
        self._window.extend(values)
        self._window_flags.extend(flags)
        self._window_missing.extend(np.zeros(n, dtype=bool) if missing is None else missing)
        self._position += n
        self.records_seen += n

    def _rebuild(self) -> None:
        old = dict(zip(self._engine.keys, self._cusum, strict=True)) if self._engine else {}
        ref = self._reference
        has_any = any(d is not None for d in ref.features) or ref.scores is not None or (
            ref.anomaly_rate is not None or ref.invalid_rate is not None)
        self._engine = Engine(ref, self.config) if has_any else None
        if self._engine is None:
            self._cusum = np.zeros(0)
            self._fill = np.zeros(len(self.feature_names) + 1)
            return
        self._cusum = np.asarray([old.get(k, 0.0) for k in self._engine.keys], dtype=np.float64)
        self._fill = self._engine.transform.fill

    def _observe_invalid(self, count: int, now: float, alarms: list[DriftAlarm]) -> None:
        self.invalid_seen += count
        missing = self._window_missing
        missing.extend(np.ones(min(count, missing.capacity), dtype=bool))
        engine = self._engine
        if engine is not None and engine.invalid_stream >= 0:
            k = engine.invalid_stream
            # Consecutive positive increments: the CUSUM is their running sum, so count the
            # crossings in closed form.
            total = self._cusum[k] + count * engine.invalid_increment
            if total > 1.0:
                self._crossing(k, self._position, now, float(total), alarms)
                total = 0.0
            self._cusum[k] = total
        self._position += count

    def _advance(self, inc: FloatArray, now: float, alarms: list[DriftAlarm]) -> None:
        """Lindley's recursion S = max(0, S + x), row by row (a row is a vector op over all
        streams; numpy's accumulate along the batch is slower here), then replays the few
        streams whose peak crossed 1 to place each crossing on its record."""
        cusum = self._cusum
        start = cusum.copy()
        peak = np.zeros_like(cusum)
        for row in inc:
            cusum += row
            np.maximum(cusum, 0.0, out=cusum)
            np.maximum(peak, cusum, out=peak)
        if peak.max() > 1.0:
            for k in np.flatnonzero(peak > 1.0):
                cusum[k] = self._replay(int(k), inc[:, k], float(start[k]), now, alarms)

    def _replay(self, k: int, inc: FloatArray, level: float, now: float,
                alarms: list[DriftAlarm]) -> float:
        """Walk one stream through a batch, restarting at 0 after each crossing."""
        begin = 0
        n = inc.shape[0]
        while begin < n:
            total = np.cumsum(inc[begin:])
            path = total - np.minimum(np.minimum.accumulate(total), -level)
            over = np.flatnonzero(path > 1.0)
            if over.size == 0:
                return float(path[-1])
            t = int(over[0])
            self._crossing(k, self._position + begin + t, now, float(path[t]), alarms)
            level = 0.0
            begin += t + 1
        return 0.0

    def _crossing(self, k: int, record: int, now: float, level: float,
                  alarms: list[DriftAlarm]) -> None:
        engine = self._engine
        assert engine is not None
        signal = engine.signal_of[k]
        if signal == "correlation" and (self._feature_drifting(int(engine.col1[k]), now, record)
                                        or self._feature_drifting(int(engine.col2[k]), now,
                                                                  record)):
            return  # a drifting marginal moves every pair it is in; it alarmed already
        self._signal_crossed(signal, record, now, "cusum", level,
                             f"stream {engine.keys[k]}", alarms)

    def _feature_drifting(self, column: int, now: float, record: int) -> bool:
        """Whether feature ``column`` crossed and has not cooled down by ``record``."""
        state = self._signals[f"feature:{self.feature_names[column]}"]
        return state.last_crossing_record is not None and not self._cooled_down(state, record,
                                                                                 now)

    def _signal_crossed(self, signal: str, record: int, now: float, detector: str,
                        statistic: float, detail: str, alarms: list[DriftAlarm]) -> None:
        state = self._signals[signal]
        if self._cooled_down(state, record, now):
            alarm = DriftAlarm(signal, state.kind, detector, now, record, statistic, detail)
            alarms.append(alarm)
            state.last_alarm_at = now
            state.alarms += 1
        state.last_crossing_record = record
        state.last_crossing_at = now

    def _cooled_down(self, state: _SignalState, record: int, now: float) -> bool:
        if state.last_crossing_record is None or state.last_crossing_at is None:
            return True
        return (record - state.last_crossing_record >= self.config.cooldown_records
                and now - state.last_crossing_at >= self.config.cooldown_seconds)

    # ---- verdicts

    def _cusum_level(self, signal: str) -> float | None:
        engine = self._engine
        if engine is None or signal not in engine.signal_streams:
            return None
        return float(np.max(self._cusum[engine.signal_streams[signal]]))

    def _no_reference_detail(self) -> str:
        if self._baseline is not None:
            return f"collecting baseline ({self._baseline.filled}/{self._baseline.size})"
        return "no reference"

    def _judge(self, r: TestOutcome, now: float) -> SignalResult:
        signal = r.pop("signal")
        state = self._signals[signal]
        cfg = self.config
        status = "insufficient_data"
        p_adj = r["p_adjusted"]
        if p_adj is not None:
            significant = p_adj < cfg.alpha
            if significant and r["effect_size"] >= cfg.drift_threshold:
                status = "drift"
                alarms: list[DriftAlarm] = []
                self._signal_crossed(signal, self._position, now, "window", r["effect_size"],
                                     f"{r['method']} p_adj={p_adj:.3g} "
                                     f"effect={r['effect_size']:.3g}", alarms)
                self._pending.extend(alarms)
            else:
                status = "warning" if significant else "ok"
        if status != "drift" and state.last_crossing_record is not None and not (
                self._cooled_down(state, self._position, now)):
            status = "drift"
            r["detail"] = (r["detail"] + "; " if r["detail"] else "") + (
                f"streaming alarm, last crossing at record {state.last_crossing_record}")
        return SignalResult(status=status, cusum_level=self._cusum_level(signal), **r)


__all__ = ["STATE_FORMAT", "DriftDetector"]
