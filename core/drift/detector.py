"""``DriftDetector``: one model version's streaming CUSUMs and windowed tests, and their state.

The detector owns the signal states (last crossing, cooldown, alarm count), the episodes of
change, the CUSUM values, the evaluation window and the baseline still being collected; the
engines (engine.py, one per part of the reference: the whole, and each season of
seasonal.py) hold what is compiled from the reference, the windowed tests (windowed.py) are
pure functions of the window, the alarm's words come from wording.py. See the package's
docstring and docs/drift.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from modeld.core._forest import lindley
from modeld.core.drift.arrays import BoolArray, FloatArray, IntArray
from modeld.core.drift.config import DriftConfig
from modeld.core.drift.engine import Engine
from modeld.core.drift.reference import BaselineCollector, Rate, Reference
from modeld.core.drift.results import DriftAlarm, DriftReport, SignalResult
from modeld.core.drift.seasonal import SeasonKey, clock_columns, season_key
from modeld.core.drift.windowed import (
    TestOutcome,
    correlation_test,
    distribution_test,
    holm,
    latency_test,
    rate_test,
    seasonal_key_result,
)
from modeld.core.drift.wording import distribution_change, flags_of, rate_change, span
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


@dataclass(frozen=True, slots=True)
class _Crossing:
    """A signal that left its reference while armed: the raw facts of an alarm to be worded
    (once the window holds the records it is about). ``stream`` is the CUSUM stream that
    crossed (-1 for a windowed test)."""

    signal: str
    kind: str
    detector: str
    at: float
    record: int
    statistic: float
    part: int  # the engine (part of the reference) that judged it
    stream: int
    test: str
    episode: int
    opens: bool  # the first crossing of its episode


@dataclass(slots=True)
class _Episode:
    """One change: opened by the first signal that alarmed, joined by those that move with it;
    open while any of its signals has not settled (``cooldown_records`` without a crossing)."""

    number: int
    opened_at: float
    opened_record: int
    members: list[str] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)


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
        self._key: SeasonKey | None = season_key(self.feature_names)
        self._clock = clock_columns(self.feature_names)
        self._engines: list[Engine] = []
        self._part_names: list[str] = []
        self._parts: list[Reference] = []
        self._slot_engine: IntArray = np.zeros(1, dtype=np.intp)
        # One CUSUM per stream key, whichever part judges a record: a change that spans
        # hours accumulates across them (each part adds increments in its own threshold's
        # units, so all cross at 1). ``_global[e]`` places part e's streams in it.
        self._keys: list[str] = []
        self._cusum = np.zeros(0)
        self._global: list[IntArray] = []
        self._identity: list[bool] = []  # part e's streams are all of them, in order
        self._episode: _Episode | None = None
        self._episodes = 0
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
        self._window_time = Ring(w, fill=np.nan)
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
                latency_s: float | Sequence[float] | None = None) -> tuple[DriftAlarm, ...]:
        """Feed one scored batch (rows in arrival order); returns the alarms it raised.

        ``latency_s`` is the batch's request latency, or the latency of each request when the
        batch joins several (the monitoring thread feeds what queued up in one call).
        """
        features = np.asarray(features, dtype=np.float64)
        n = features.shape[0]
        d = len(self.feature_names)
        if features.ndim != 2 or features.shape[1] != d:
            raise ValueError(f"features must have shape (n, {d}), got {features.shape}")
        scores = np.asarray(scores, dtype=np.float64)
        flags = np.asarray(flags, dtype=bool)
        if scores.shape != (n,) or flags.shape != (n,):
            raise ValueError("scores and flags must have one entry per row")
        baseline = self._baseline
        if baseline is not None and 0 < baseline.size - baseline.filled < n:
            # the rows past the baseline's end are judged against it, as in a batch of their
            # own: however requests are joined into batches, the same rows are watched
            head = baseline.size - baseline.filled
            return (self.observe(features[:head], scores[:head], flags[:head], now=now,
                                 invalid_count=invalid_count, latency_s=latency_s)
                    + self.observe(features[head:], scores[head:], flags[head:], now=now))
        crossings: list[_Crossing] = []
        if invalid_count:
            self._observe_invalid(int(invalid_count), now, crossings)
        if n == 1:
            self._observe_one(features, scores, flags, now, crossings)
        elif n:
            self._observe_rows(features, scores, flags, now, crossings)
        alarms = self._alarms(crossings) if crossings else []
        latencies = (() if latency_s is None else (latency_s,)
                     if isinstance(latency_s, float | int) else tuple(latency_s))
        if latencies:
            self._window_latency.extend(np.asarray(latencies, dtype=np.float64))
        if self._baseline is not None:
            self._baseline.add(features, scores, flags, invalid_count, latencies)
            if self._baseline.complete:
                built = self._baseline.build(self.feature_names, self.config.reference_levels)
                self._reference = self._reference.completed_by(built)
                self._baseline = None
                self._rebuild()
                # The baseline's records are the reference now: judging them against
                # themselves would hide drift, so the evaluation windows start afresh.
                for ring in (self._window, self._window_flags, self._window_missing,
                             self._window_latency, self._window_time):
                    ring.clear()
        if alarms:
            self._pending.extend(alarms)
        return tuple(alarms)

    def observe_invalid(self, count: int, now: float) -> tuple[DriftAlarm, ...]:
        """Count records rejected before scoring (they feed the invalid-input rate)."""
        alarms: list[DriftAlarm] = []
        if count > 0:
            crossings: list[_Crossing] = []
            self._observe_invalid(int(count), now, crossings)
            if self._baseline is not None:
                self._baseline.invalid += int(count)
            alarms = self._alarms(crossings)
            self._pending.extend(alarms)
        return tuple(alarms)

    def evaluate(self, now: float) -> DriftReport:
        """Run the windowed tests over the last ``window_records`` records and report.

        With seasons, the window's records of the latest record's part of the day are tested
        against that part's reference (like hour to like hour)."""
        held = self._window.held_rows()
        held_flags = self._window_flags.held_rows()
        part, rows = self._current_part(held)
        ref = self._parts[part] if self._engines else self._reference
        engine = self._engines[part] if self._engines else None

        def window_of(mine: object, whole: object) -> tuple[FloatArray, NDArray[np.bool_]]:
            # a signal without a daily cycle is judged on the whole window, like hour to like
            # hour otherwise
            return (held, held_flags) if mine is whole else (held[rows], held_flags[rows])

        cfg = self.config
        no_reference = self._no_reference_detail()
        results: list[TestOutcome] = []
        for c, dist in enumerate(ref.features):
            name = self.feature_names[c]
            signal = f"feature:{name}"
            events = None if engine is None else engine.binary_events[c]
            column = window_of(dist, self._reference.features[c])[0][:, c]
            if self._clock[c]:
                results.append(seasonal_key_result(name, signal, dist, column.size,
                                                   self._season_detail()))
            elif events is not None and dist is not None:
                column = column[np.isfinite(column)]
                results.append(rate_test(name, Rate(events, dist.n, dist.source),
                                         int(np.count_nonzero(column > 0.5)), column.size, cfg,
                                         no_reference, kind="feature", signal=signal))
            else:
                results.append(distribution_test(name, "feature", signal, dist, column, cfg,
                                                 no_reference))
        results.append(distribution_test("score", "score", "score", ref.scores,
                                         window_of(ref.scores, self._reference.scores)[0][:, -1],
                                         cfg, no_reference))
        flags = window_of(ref.anomaly_rate, self._reference.anomaly_rate)[1]
        window = held[rows]
        results.append(rate_test("anomaly_rate", ref.anomaly_rate,
                                 int(np.count_nonzero(flags)), flags.size, cfg, no_reference))
        miss = self._window_missing.held_rows()
        results.append(rate_test("invalid_rate", self._reference.invalid_rate,
                                 int(np.count_nonzero(miss)), miss.size, cfg, no_reference))
        if len(self.feature_names) >= 2:
            drifting = np.asarray([self._feature_drifting(c, now, self._position)
                                   for c in range(len(self.feature_names))], dtype=bool)
            results.append(correlation_test(window, engine, ref.correlation,
                                            self.feature_names, drifting, cfg, no_reference))
        # Holm across the data signals that produced a p-value.
        tested = [r for r in results if r["p_value"] is not None]
        adjusted = holm(np.asarray([r["p_value"] for r in tested]))
        for r, p_adj in zip(tested, adjusted, strict=True):
            r["p_adjusted"] = float(p_adj)
        signals: list[SignalResult] = []
        crossings: list[_Crossing] = []
        for r in results:
            signals.append(self._judge(r, now, part, crossings))
        self._pending.extend(self._alarms(crossings))
        signals.append(latency_test(ref.latency or self._reference.latency,
                                    self._window_latency.held_rows(), cfg, no_reference))
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
        source = self._reference.source
        if source == "none" and self._baseline is not None:
            source = "collecting_baseline"
        return DriftReport(
            evaluated_at=now, status=status, reference_source=source,
            baseline_progress=progress, records_seen=self.records_seen,
            invalid_seen=self.invalid_seen,
            missing_counts=dict(zip([*self.feature_names, "score"],
                                    map(int, self._missing_counts), strict=True)),
            signals=tuple(signals), alarms=alarms,
            last_alarm_at=max(last) if last else None, episode=self._episode_summary(now))

    def thresholds(self) -> dict[str, float]:
        """The calibrated CUSUM threshold of every stream (for the docs and the benchmark);
        a season's streams are prefixed with its name and ``|``."""
        out: dict[str, float] = {}
        for e, engine in enumerate(self._engines):
            prefix = "" if e == 0 else f"{self._part_names[e]}|"
            out.update((prefix + k, float(h)) for k, h in zip(engine.keys, engine.thresholds,
                                                               strict=True))
        return out

    def to_state(self) -> dict[str, Any]:
        """JSON-ready state: reference, baseline in progress, CUSUM statistics, alarm states.

        The evaluation windows are not kept: after a restart the windowed tests report
        ``insufficient_data`` until ``min_window_records`` new records arrived.
        """
        cusum = {k: float(v) for k, v in zip(self._keys, self._cusum, strict=True)}
        return {
            "format": STATE_FORMAT,
            "feature_names": list(self.feature_names),
            "reference": self._reference.to_dict(),
            "baseline": None if self._baseline is None else self._baseline.to_state(),
            "position": self._position,
            "records_seen": self.records_seen,
            "invalid_seen": self.invalid_seen,
            "missing_counts": [int(v) for v in self._missing_counts],
            "cusum": cusum,
            "signals": {
                name: {"last_crossing_record": s.last_crossing_record,
                       "last_crossing_at": s.last_crossing_at,
                       "last_alarm_at": s.last_alarm_at, "alarms": s.alarms}
                for name, s in self._signals.items()
            },
            "episodes": self._episodes,
            "episode": None if self._episode is None else dataclasses.asdict(self._episode),
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
        saved = state.get("cusum", {})
        detector._cusum = np.asarray([float(saved.get(k, 0.0)) for k in detector._keys])
        for name, saved_signal in state.get("signals", {}).items():
            if name in detector._signals:
                s = detector._signals[name]
                s.last_crossing_record = saved_signal["last_crossing_record"]
                s.last_crossing_at = saved_signal["last_crossing_at"]
                s.last_alarm_at = saved_signal["last_alarm_at"]
                s.alarms = int(saved_signal["alarms"])
        detector._episodes = int(state.get("episodes", 0))
        if state.get("episode") is not None:
            detector._episode = _Episode(**state["episode"])
        detector._pending.extend(DriftAlarm.from_dict(a) for a in state.get("pending_alarms", []))
        return detector

    # ---- streaming internals

    def _observe_one(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                     now: float, crossings: list[_Crossing]) -> None:
        """One record: the common case on the scoring path, kept to a few numpy calls."""
        values = self._one
        values[:-1] = features[0]
        values[-1] = scores[0]
        if not math.isfinite(float(np.add.reduce(values))):
            self._observe_rows(features, scores, flags, now, crossings)
            return
        flag = bool(flags[0])
        if self._engines:
            part = 0 if self._key is None else int(self._slot_engine[self._key.of_one(values)])
            engine = self._engines[part]
            if engine.keys:
                cusum = self._cusum
                where = self._global[part]
                inc = engine.increments(values[None, :], flags, None, None)[0]
                if self._identity[part]:
                    cusum += inc
                else:
                    cusum[where] += inc
                np.maximum(cusum, 0.0, out=cusum)
                if cusum.max() > 1.0:
                    for k in np.flatnonzero(cusum[where] > 1.0):
                        self._crossing(part, int(k), self._position, now,
                                       float(cusum[where[k]]), crossings)
                        cusum[where[k]] = 0.0
        self._window.append(values)
        self._window_flags.append(flag)
        self._window_missing.append(False)
        self._window_time.append(now)
        self._position += 1
        self.records_seen += 1

    def _observe_rows(self, features: FloatArray, scores: FloatArray, flags: NDArray[np.bool_],
                      now: float, crossings: list[_Crossing]) -> None:
        n, d = features.shape
        values = np.empty((n, d + 1))
        values[:, :d] = features
        values[:, d] = scores
        parts = self._parts_of(values)
        finite = np.isfinite(values)
        missing: BoolArray | None = None
        finite_or_none: BoolArray | None = None
        if not finite.all():
            missing = np.logical_not(np.all(finite, axis=1))
            finite_or_none = finite
            self._missing_counts += n - np.count_nonzero(finite, axis=0)
            values = np.where(finite, values, self._fill)
        positions = self._position + np.arange(n)
        for part in np.unique(parts).tolist() if self._engines else ():
            engine = self._engines[part]
            if not engine.keys:
                continue
            if parts.size and parts[0] == parts[-1] and np.all(parts == part):
                inc = engine.increments(values, flags, missing, finite_or_none)
                self._advance(part, inc, positions, now, crossings)
                continue
            rows = np.flatnonzero(parts == part)
            inc = engine.increments(values[rows], flags[rows],
                                    None if missing is None else missing[rows],
                                    None if finite_or_none is None else finite_or_none[rows])
            self._advance(part, inc, positions[rows], now, crossings)
        if finite_or_none is not None:
            values = np.where(finite_or_none, values, np.nan)
        self._window.extend(values)
        self._window_flags.extend(flags)
        self._window_missing.extend(np.zeros(n, dtype=bool) if missing is None else missing)
        self._window_time.extend(np.full(n, now))
        self._position += n
        self.records_seen += n

    def _parts_of(self, values: FloatArray) -> IntArray:
        """The engine (part of the reference) that judges each row."""
        if self._key is None or len(self._engines) <= 1:
            return np.zeros(values.shape[0], dtype=np.intp)
        return self._slot_engine[self._key.of_rows(values)]

    def _current_part(self, window: FloatArray) -> tuple[int, BoolArray | slice]:
        """The part of the latest record and the window's rows of that part."""
        if window.shape[0] == 0 or len(self._engines) <= 1:
            return 0, slice(None)
        parts = self._parts_of(window)
        part = int(parts[-1])
        return part, parts == part

    def _season_detail(self) -> str:
        if len(self._engines) <= 1:
            return ("a clock feature: not watched as data (streamed in time order its "
                    "distribution is the clock's); no season has enough reference rows")
        return ("the seasonal key: each record is judged against the reference of its part "
                f"of the day ({', '.join(self._part_names[1:])})")

    def _rebuild(self) -> None:
        old = dict(zip(self._keys, self._cusum.tolist(), strict=True))
        ref = self._reference
        has_any = any(d is not None for d in ref.features) or ref.scores is not None or (
            ref.anomaly_rate is not None or ref.invalid_rate is not None)
        self._engines, self._part_names, self._parts = [], [], []
        key = self._key
        self._slot_engine = np.zeros(1 if key is None else key.slots + 1, dtype=np.intp)
        if has_any:
            self._part_names.append("whole")
            self._parts.append(ref)
            if key is not None:
                for slots, part in ref.seasons:
                    self._slot_engine[list(slots)] = len(self._parts)
                    self._part_names.append(key.name(slots))
                    self._parts.append(part)
            self._engines = [Engine(part, self.config) for part in self._parts]
        index: dict[str, int] = {}
        for engine in self._engines:
            for k in engine.keys:
                index.setdefault(k, len(index))
        self._keys = list(index)
        self._global = [np.asarray([index[k] for k in engine.keys], dtype=np.intp)
                        for engine in self._engines]
        self._identity = [where.size == len(index) and bool(np.all(where == np.arange(where.size)))
                          for where in self._global]
        self._cusum = np.asarray([old.get(k, 0.0) for k in self._keys], dtype=np.float64)
        self._fill = (self._engines[0].transform.fill if self._engines
                      else np.zeros(len(self.feature_names) + 1))

    def _observe_invalid(self, count: int, now: float, crossings: list[_Crossing]) -> None:
        self.invalid_seen += count
        missing = self._window_missing
        missing.extend(np.ones(min(count, missing.capacity), dtype=bool))
        engine = self._engines[0] if self._engines else None
        if engine is not None and engine.invalid_stream >= 0:
            k = engine.invalid_stream
            g = int(self._global[0][k])
            # Consecutive positive increments: the CUSUM is their running sum, so count the
            # crossings in closed form.
            total = self._cusum[g] + count * engine.invalid_increment
            if total > 1.0:
                self._crossing(0, k, self._position, now, float(total), crossings)
                total = 0.0
            self._cusum[g] = total
        self._position += count

    def _advance(self, part: int, inc: FloatArray, positions: NDArray[np.int64], now: float,
                 crossings: list[_Crossing]) -> None:
        """Lindley's recursion S = max(0, S + x) row by row (the compiled ``lindley``:
        numpy's accumulate along the batch was slower, a Python loop over rows slower still),
        then replays the few streams whose peak crossed 1 to place each crossing on its
        record."""
        where = self._global[part]
        cusum = self._cusum[where]
        start = cusum.copy()
        peak = np.zeros_like(cusum)
        lindley(cusum, np.ascontiguousarray(inc, dtype=np.float64), peak)
        if peak.max() > 1.0:
            for k in np.flatnonzero(peak > 1.0):
                cusum[k] = self._replay(part, int(k), inc[:, k], positions, float(start[k]),
                                        now, crossings)
        self._cusum[where] = cusum

    def _replay(self, part: int, k: int, inc: FloatArray, positions: NDArray[np.int64],
                level: float, now: float, crossings: list[_Crossing]) -> float:
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
            self._crossing(part, k, int(positions[begin + t]), now, float(path[t]), crossings)
            level = 0.0
            begin += t + 1
        return 0.0

    def _crossing(self, part: int, k: int, record: int, now: float, level: float,
                  crossings: list[_Crossing]) -> None:
        engine = self._engines[part]
        signal = engine.signal_of[k]
        if signal == "correlation" and (self._feature_drifting(int(engine.col1[k]), now, record)
                                        or self._feature_drifting(int(engine.col2[k]), now,
                                                                  record)):
            return  # a drifting marginal moves every pair it is in; it alarmed already
        self._signal_crossed(signal, record, now, "cusum", level, part, k,
                             self._cusum_test(engine, k), crossings)

    def _cusum_test(self, engine: Engine, k: int) -> str:
        cfg = self.config
        key = engine.keys[k]
        suffix = key.rsplit(":", 1)[-1]
        design = {
            "mean+": f"normal scores' mean up {cfg.mean_shift_design} sd",
            "mean-": f"normal scores' mean down {cfg.mean_shift_design} sd",
            "spread+": f"spread x{cfg.variance_ratio_design}",
            "spread-": f"spread /{cfg.variance_ratio_design}",
            "rate+": f"Bernoulli, rate x{cfg.rate_ratio_design}",
            "rate-": f"Bernoulli, rate /{cfg.rate_ratio_design}",
            "corr+": f"rank correlation +{cfg.correlation_shift_design}",
            "corr-": f"rank correlation -{cfg.correlation_shift_design}",
        }.get(suffix, suffix)
        return (f"CUSUM {key} ({design}), threshold {engine.thresholds[k]:.3g} for a "
                f"false-alarm budget of one alarm per {cfg.target_arl0_records:,.0f} ordinary "
                "records over all signals")

    def _feature_drifting(self, column: int, now: float, record: int) -> bool:
        """Whether feature ``column`` crossed and has not cooled down by ``record``."""
        state = self._signals[f"feature:{self.feature_names[column]}"]
        return state.last_crossing_record is not None and not self._cooled_down(state, record,
                                                                                 now)

    def _signal_crossed(self, signal: str, record: int, now: float, detector: str,
                        statistic: float, part: int, stream: int, test: str,
                        crossings: list[_Crossing]) -> None:
        """Note a crossing; an armed signal (settled since its last crossing) raises one."""
        state = self._signals[signal]
        if self._cooled_down(state, record, now):
            opens = not self._episode_open(record, now)
            if opens or self._episode is None:
                self._episodes += 1
                self._episode = _Episode(self._episodes, now, record)
            if signal not in self._episode.members:
                self._episode.members.append(signal)
            crossings.append(_Crossing(signal, state.kind, detector, now, record, statistic,
                                       part, stream, test, self._episodes, opens))
            state.last_alarm_at = now
            state.alarms += 1
        state.last_crossing_record = record
        state.last_crossing_at = now

    def _cooled_down(self, state: _SignalState, record: int, now: float) -> bool:
        if state.last_crossing_record is None or state.last_crossing_at is None:
            return True
        return (record - state.last_crossing_record >= self.config.cooldown_records
                and now - state.last_crossing_at >= self.config.cooldown_seconds)

    # ---- episodes and their words

    def _episode_open(self, record: int, now: float) -> bool:
        episode = self._episode
        return episode is not None and any(
            not self._cooled_down(self._signals[s], record, now) for s in episode.members)

    def _alarms(self, crossings: list[_Crossing]) -> list[DriftAlarm]:
        """One alarm per episode: a crossing while an episode is open joins it (named in the
        alarm when it came in the same batch, else in the report's ``episode``)."""
        alarms: list[DriftAlarm] = []
        for c in crossings:
            words = self._describe(c)
            episode = self._episode
            if episode is not None and episode.number == c.episode and len(episode.signals) < 50:
                episode.signals.append({"signal": c.signal, "at": c.at, "record": c.record,
                                        "detail": words})
            if c.opens:
                alarms.append(DriftAlarm(c.signal, c.kind, c.detector, c.at, c.record,
                                         c.statistic, words, (c.signal,), c.episode))
            elif alarms and alarms[-1].episode == c.episode:
                last = alarms[-1]
                alarms[-1] = dataclasses.replace(
                    last, signals=(*last.signals, c.signal),
                    detail=f"{last.detail}; together with {words}")
        return alarms

    def _episode_summary(self, now: float) -> dict[str, Any] | None:
        if self._episode is None:
            return None
        return {**dataclasses.asdict(self._episode),
                "open": self._episode_open(self._position, now)}

    def _describe(self, c: _Crossing) -> str:
        """What changed, in the signal's units, over which records, against which reference,
        by which test (wording.py)."""
        ref = self._parts[c.part] if self._engines else self._reference
        engine = self._engines[c.part] if self._engines else None
        names = self.feature_names
        col = (names.index(c.signal.removeprefix("feature:"))
               if c.signal.startswith("feature:") else len(names))
        # judged against the whole reference (no daily cycle in this signal): every record
        # counts, whichever part of the day it came in
        shared = c.signal in ("invalid_rate", "correlation") or (
            col < len(names) and ref.features[col] is self._reference.features[col]) or (
            c.signal == "score" and ref.scores is self._reference.scores) or (
            c.signal == "anomaly_rate" and ref.anomaly_rate is self._reference.anomaly_rate)
        held = self._window.held_rows()
        base = self._position - held.shape[0]
        last = min(max(c.record - base + 1, 0), held.shape[0])
        rows = np.arange(0, last)
        if len(self._engines) > 1 and rows.size and not shared:
            rows = rows[self._parts_of(held[rows]) == c.part]
        rows = rows[self._excursion(c, held[rows]):]
        since = base + int(rows[0]) if rows.size else c.record
        values = held[rows]
        what = c.signal
        size = 0
        if col < len(names) and engine is not None:
            dist = ref.features[col]
            events = engine.binary_events[col]
            if dist is not None:
                size = dist.n
                column = values[:, col]
                column = column[np.isfinite(column)]
                what = (rate_change(c.signal, events / max(dist.n, 1),
                                            int(np.count_nonzero(column > 0.5)), column.size)
                        if events is not None else
                        distribution_change(c.signal, dist, column))
        elif c.signal == "score" and ref.scores is not None:
            size = ref.scores.n
            what = distribution_change("score", ref.scores, values[:, -1])
        elif c.signal == "anomaly_rate" and ref.anomaly_rate is not None:
            size = ref.anomaly_rate.n
            events, n = flags_of(self._window_flags.held_rows()[rows])
            what = rate_change("anomaly rate", ref.anomaly_rate, events, n)
        elif c.signal == "invalid_rate" and self._reference.invalid_rate is not None:
            size = self._reference.invalid_rate.n
            missing = self._window_missing.held_rows()
            events, n = flags_of(missing[-min(missing.size,
                                                       self._position - since):])
            what = rate_change("invalid input rate", self._reference.invalid_rate,
                                       events, n)
        elif c.signal == "correlation" and ref.correlation is not None:
            size = ref.correlation.n
        times = self._window_time.held_rows()[rows]
        part = self._part_names[c.part] if self._engines else "whole"
        where = "whole reference" if part == "whole" else f"reference for {part}"
        if shared and part != "whole":
            where = "whole reference (no daily cycle in this signal)"
        return (f"{what}; {span(since, c.record, rows.size, times)}; against the "
                f"{where} ({ref.source}, {size:,} records); {c.test}")

    def _excursion(self, c: _Crossing, values: FloatArray) -> int:
        """Where the change began, as far as the crossing stream tells: replayed over the
        held ``values`` of its part (the window), the row after its statistic was last 0."""
        if c.stream < 0 or not self._engines or values.shape[0] == 0:
            return 0
        engine = self._engines[c.part]
        if engine.signal_of[c.stream] in ("anomaly_rate", "invalid_rate"):
            return 0  # the flags are not in ``values``: the whole held part
        finite = np.isfinite(values)
        filled = np.where(finite, values, self._fill)
        inc = engine.stream_increments(filled, finite, c.stream)
        level = 0.0
        start = 0
        for i, x in enumerate(inc.tolist()):
            level = max(0.0, level + x)
            if level == 0.0:
                start = i + 1
        return int(min(start, values.shape[0] - 1))

    # ---- verdicts

    def _cusum_level(self, signal: str) -> float | None:
        levels = [float(np.max(self._cusum[self._global[e][engine.signal_streams[signal]]]))
                  for e, engine in enumerate(self._engines) if signal in engine.signal_streams]
        return max(levels) if levels else None

    def _no_reference_detail(self) -> str:
        if self._baseline is not None:
            return f"collecting baseline ({self._baseline.filled}/{self._baseline.size})"
        return "no reference"

    def _judge(self, r: TestOutcome, now: float, part: int,
               crossings: list[_Crossing]) -> SignalResult:
        signal = r.pop("signal")
        state = self._signals[signal]
        cfg = self.config
        status = "insufficient_data"
        p_adj = r["p_adjusted"]
        if r["method"] == "seasonal":
            status = "ok" if r["reference_size"] else status
        elif p_adj is not None:
            significant = p_adj < cfg.alpha
            if significant and r["effect_size"] >= cfg.drift_threshold:
                status = "drift"
                test = (f"windowed {r['method']} test p_adj={p_adj:.3g} < alpha {cfg.alpha} "
                        f"(Holm across signals), effect {r['effect_size']:.3g} >= "
                        f"{cfg.drift_threshold}")
                self._signal_crossed(signal, self._position, now, "window", r["effect_size"],
                                     part, -1, test, crossings)
            else:
                status = "warning" if significant else "ok"
        if status != "drift" and state.last_crossing_record is not None and not (
                self._cooled_down(state, self._position, now)):
            status = "drift"
            r["detail"] = (r["detail"] + "; " if r["detail"] else "") + (
                f"streaming alarm, last crossing at record {state.last_crossing_record}")
        return SignalResult(status=status, cusum_level=self._cusum_level(signal), **r)


__all__ = ["STATE_FORMAT", "DriftDetector"]
