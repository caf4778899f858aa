"""What scoring saw, per model version: scoring windows, drift detectors, their evaluations.

Three kinds of caller, three kinds of work:

- the deploy path (the manager's events) calls ``prepare``: a version's window and detector
  (its reference, calibrated thresholds, restored state) are built when it is loaded;
- the scoring path calls ``observe``/``observe_invalid``, which only append the scored batch
  to a bounded queue (never blocking; what does not fit is dropped and counted). The
  monitoring thread (``start``) consumes it: windows, the streaming detector, and its alarms
  (logged as one ``drift_alarm`` event, counted, recorded in the registry and alerted);
- the scheduler calls ``evaluate`` (the windowed tests: the one evaluation that is recorded
  and alerted), ``roll``, ``flush`` and ``prune``; each first ``drain``s the queue, so it
  sees everything scored before it was called (tests call ``drain`` for the same reason).

Readers (``report``, ``plan_drift``: the drift API, the dashboard, MCP, ``modeld drift``) read
the last recorded evaluation and write nothing. State is persisted to the registry on a
schedule, when a version is released and at shutdown.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.drift import DriftAlarm, DriftConfig, DriftDetector, DriftReport, Reference
from modeld.core.errors import ArtifactInvalid
from modeld.core.explain import ReferenceWords
from modeld.core.indicators import NO_INDICATORS, drift_indicators, plan_drift_check
from modeld.core.loader import REFERENCE_FILE
from modeld.core.manager import iso, utc_now
from modeld.core.monitor import ScoringWindow
from modeld.core.registry import Registry
from modeld.daemon.jobs.alerting import Alert, Alerter
from modeld.daemon.jobs.anomalies import RecentAnomalies
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import MonitoringSettings

log = structlog.get_logger("modeld.monitoring")

# how long close() waits for the monitoring thread's current batch
STOP_TIMEOUT = 5.0
# The monitoring thread's pace: woken by a batch, it lets this long's batches queue up and
# feeds them to each version's detector as one (its work is vectorised across rows), at most
# SLICE_RECORDS rows a call. Fed one request at a time, single-record traffic woke it and
# took the interpreter lock from the HTTP thread once per request.
SLICE_SECONDS = 0.02
SLICE_RECORDS = 512


def artifact_reference(folder: Path, metadata: dict[str, Any],
                       feature_names: Sequence[str], levels: int) -> Reference | None:
    """The reference an artifact carries (reference.npz, else a ``reference`` summary)."""
    path = folder / REFERENCE_FILE
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                features = np.asarray(data["features"], dtype=np.float64)
                scores = (np.asarray(data["scores"], dtype=np.float64)
                          if "scores" in data.files else None)
                flags = (np.asarray(data["flags"], dtype=bool)
                         if "flags" in data.files else None)
            return Reference.from_arrays(feature_names, features, scores=scores, flags=flags,
                                         source="artifact", levels=levels)
        except (OSError, KeyError, ValueError) as exc:
            log.warning("reference_unusable", path=str(path), reason=str(exc))
    summary = metadata.get("reference")
    if isinstance(summary, dict):
        try:
            return Reference.from_summary(summary, feature_names, levels=levels)
        except ArtifactInvalid as exc:
            log.warning("reference_unusable", path=str(folder), reason=exc.reason)
    return None


@dataclass(frozen=True, slots=True)
class Observation:
    """One scored batch as the scoring path hands it over, or one refused record
    (``features`` None, no scores)."""

    version: str
    features: np.ndarray | None
    scores: np.ndarray
    flags: np.ndarray
    latency_s: float
    at: float

    @property
    def records(self) -> int:
        return max(len(self.scores), 1)


class Monitors:
    """Scoring windows and drift detectors of every loaded version, in one place.

    ``lock`` guards ``windows`` and ``detectors`` (the dashboard reads windows under it); it
    is held while one handed batch is observed, never on the scoring path. ``queue_records``
    (``monitoring.queue_records``) bounds what waits for the monitoring thread.
    ``reference_changed``, when set, is called (on the monitoring thread) with a version whose
    detector's reference changed (a baseline that finished collecting): a control process
    hands its workers the new words (``api.workers``).
    """

    def __init__(self, settings: MonitoringSettings, registry: Registry, store_dir: Path,
                 metrics: DaemonMetrics, alerter: Alerter) -> None:
        self.settings = settings
        self.config = DriftConfig.from_mapping(settings.model_dump())
        self.registry = registry
        self.store_dir = store_dir
        self.metrics = metrics
        self.alerter = alerter
        self.lock = threading.Lock()
        self.windows: dict[str, ScoringWindow] = {}
        self.detectors: dict[str, DriftDetector] = {}
        self._words: dict[str, tuple[Reference, ReferenceWords]] = {}
        self.anomalies = RecentAnomalies(
            registry, lambda: (self.settings.keep_anomalies,
                               self.settings.anomaly_retention_days),
            self.reference_words)
        # the queue between scoring and the monitoring work
        self._queue: deque[Observation] = deque()
        self._queued_records = 0
        self._handed = 0  # observations put on the queue so far
        self._taken = 0  # observations taken off it so far
        self._queue_changed = threading.Condition()
        self._work = threading.Lock()  # one worker at a time, in queue order
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle = False  # the monitoring thread waits for a batch (under _queue_changed)
        self.reference_changed: Callable[[str], None] | None = None

    # the deploy path ----------------------------------------------------------------------

    def prepare(self, version: str, feature_names: Sequence[str]) -> None:
        """Build ``version``'s scoring window and drift detector (reference, thresholds, or
        the state saved when it was last released) unless they exist. Called for every loaded
        version from the manager's listener, so none is built by a scoring request."""
        with self.lock:
            if version in self.detectors:
                return
        state = self.registry.load_state("window", version)
        window = (ScoringWindow.from_state(state) if state else
                  ScoringWindow(version, n_features=len(feature_names), started_at=time.time()))
        detector = self._detector(version, feature_names)
        with self.lock:
            self.windows.setdefault(version, window)
            self.detectors.setdefault(version, detector)

    def _detector(self, version: str, feature_names: Sequence[str]) -> DriftDetector:
        state = self.registry.load_state("drift", version)
        if state is not None:
            return DriftDetector.from_state(state, self.config)
        row = self.registry.get_version(version)
        reference = None if row is None else artifact_reference(
            self.store_dir / version, dict(row.metadata), feature_names,
            self.config.reference_levels)
        detector = DriftDetector(feature_names, self.config, reference)
        log.info("drift_reference", version=version, source=detector.reference.source,
                 baseline_records=self.config.baseline_records
                 if detector.collecting_baseline else 0)
        return detector

    def reference_words(self, version: str, feature_names: Sequence[str]) -> ReferenceWords:
        """Words for a version's feature values, from its drift reference (the artifact's, or
        the baseline collected so far: none while it collects, nor for a released version)."""
        with self.lock:
            detector = self.detectors.get(version)
            if detector is None:
                return ReferenceWords(feature_names, [None] * len(feature_names))
            reference = detector.reference
            cached = self._words.get(version)
            if cached is None or cached[0] is not reference:
                cached = (reference, ReferenceWords.from_reference(reference))
                self._words[version] = cached
        return cached[1]

    # the scoring path: hand over, never wait ---------------------------------------------

    def observe(self, version: str, features: np.ndarray, scores: np.ndarray,
                flags: np.ndarray, latency_s: float) -> None:
        """Hand one scored batch to the monitoring thread (any request thread)."""
        self.hand(Observation(version, features, scores, flags, latency_s, time.time()))

    def observe_invalid(self, version: str) -> None:
        """Hand one refused record of ``version`` to the monitoring thread."""
        empty = np.empty(0)
        self.hand(Observation(version, None, empty, empty.astype(bool), 0.0, time.time()))

    def hand(self, item: Observation) -> None:
        """Put ``item`` on the queue, or drop and count it when the queue is full (observe,
        and a worker's shipment arriving at the control process)."""
        with self._queue_changed:
            if self._queued_records + item.records > self.settings.queue_records:
                dropped = True
            else:
                dropped = False
                self._queue.append(item)
                self._queued_records += item.records
                self._handed += 1
                if self._idle:  # only an idle thread is woken: a slice is not cut short
                    self._idle = False
                    self._queue_changed.notify()
        if dropped:
            self.metrics.monitoring_dropped.inc(item.records)

    # the monitoring thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start the monitoring thread; called once by the composition root."""
        self._thread = threading.Thread(target=self._run, name="modeld-monitoring",
                                        daemon=True)
        self._thread.start()

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the monitoring thread after the batch it is on; what is still queued is
        drained by the final ``flush``."""
        with self._queue_changed:
            self._stopping = True
            self._queue_changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("monitoring_stop_timed_out", timeout_s=timeout)

    def _run(self) -> None:
        while True:
            with self._queue_changed:
                while not self._queue and not self._stopping:
                    self._idle = True
                    self._queue_changed.wait()
                self._idle = False
                if self._stopping:
                    return
                # let the slice's batches queue up: scoring does not wake it, close() does
                self._queue_changed.wait(SLICE_SECONDS)
                if self._stopping:
                    return
            self.drain()

    def drain(self) -> None:
        """Do the monitoring work of every batch handed before this call, on the caller's
        thread unless the monitoring thread is at it (then wait for it): afterwards the
        windows and detectors have seen all of them. Called by the scheduled jobs, at
        shutdown, and by tests that read right after scoring."""
        with self._queue_changed:
            target = self._handed
        with self._work:
            while True:
                with self._queue_changed:
                    if self._taken >= target or not self._queue:
                        return
                    run = [self._queue.popleft()]
                    # the scored batches of one version that follow it, up to a slice
                    rows = run[0].records
                    while (run[0].features is not None and self._taken + len(run) < target
                           and self._queue and self._queue[0].features is not None
                           and self._queue[0].version == run[0].version
                           and rows + self._queue[0].records <= SLICE_RECORDS):
                        rows += self._queue[0].records
                        run.append(self._queue.popleft())
                    self._queued_records -= sum(item.records for item in run)
                    self._taken += len(run)
                self._process(run)

    def _process(self, run: list[Observation]) -> None:
        """Batches handed in a row for one version (or one refused record): their window,
        their detector fed them as one batch, and the alarms they raise."""
        settings = self.settings
        last = run[-1]
        alarms: tuple[DriftAlarm, ...] = ()
        detector: DriftDetector | None = None
        reference = None
        try:
            with self.lock:
                window = self.windows.get(last.version)
                detector = self.detectors.get(last.version)
                reference = None if detector is None else detector.reference
                if settings.performance_tracking and window is not None:
                    for item in run:
                        if item.features is None:
                            window.observe_invalid(1, item.at)
                        else:
                            window.observe(item.features, item.scores, item.flags,
                                           item.latency_s, item.at)
                if settings.drift_detection and detector is not None:
                    if last.features is None:
                        alarms = detector.observe_invalid(1, last.at)
                    else:
                        alarms = detector.observe(
                            *_joined(run), now=last.at,
                            latency_s=[item.latency_s for item in run])
        except ValueError as exc:  # a batch of another shape than the version's: a bug
            log.error("monitoring_failed", version=last.version, reason=str(exc))
        for alarm in alarms:
            self._alarm(last.version, alarm)
        if (self.reference_changed is not None and detector is not None
                and detector.reference is not reference):
            self.reference_changed(last.version)

    def _alarm(self, version: str, alarm: DriftAlarm) -> None:
        signals = list(alarm.moved)
        log.warning("drift_alarm", version=version, signal=alarm.signal, signals=signals,
                    episode=alarm.episode, kind=alarm.kind, detector=alarm.detector,
                    statistic=alarm.statistic, record=alarm.record, reason=alarm.detail)
        self.metrics.drift_alarms.labels(alarm.signal).inc()
        try:
            self.registry.add_event("drift_alarm", version, iso(utc_now()), alarm.to_dict())
        except DATABASE_ERRORS as exc:  # a fleet's database away: the alert still goes out
            log.warning("drift_alarm_not_recorded", version=version,
                        reason=str(exc).strip() or type(exc).__name__)
        self.alerter.send(Alert(
            kind="drift_alarm", title=f"drift in {', '.join(signals)} of {version}",
            detail=alarm.detail, version=version,
            fields={"signal": alarm.signal, "signals": ", ".join(signals), "episode": alarm.episode,
                    "detector": alarm.detector, "statistic": alarm.statistic},
        ))

    # scheduled ----------------------------------------------------------------------------

    def evaluate(self, version: str | None) -> DriftReport | None:
        """The scheduled drift evaluation of the deployed version: the windowed tests and the
        plan's three indicators, recorded as a ``drift_evaluation`` event (what readers
        answer), published as gauges, its windowed alarms alerted."""
        if version is None or not self.settings.drift_detection:
            return None
        self.drain()
        with self.lock:
            detector = self.detectors.get(version)
            if detector is None:
                return None
            window = self.windows.get(version)
            report = detector.evaluate(time.time())
            reference_rate = detector.reference.anomaly_rate
            empty = np.empty(0)
            flags = (empty.astype(bool) if window is None
                     else window.recent_flags(self.config.window_records))
            latencies = empty if window is None else window.recent_latencies()
        score = next((s for s in report.signals if s.kind == "score"), None)
        indicators = drift_indicators(
            score_effect=None if score is None else score.effect_size, flags=flags,
            reference_rate=None if reference_rate is None else reference_rate.rate,
            latencies=latencies)
        for signal in report.signals:
            labels = (version, signal.name)
            self.metrics.drift_statistic.labels(*labels).set(_gauge(signal.statistic))
            self.metrics.drift_p_value.labels(*labels).set(_gauge(signal.p_value))
            self.metrics.drift_alarm.labels(*labels).set(1.0 if signal.status == "drift"
                                                          else 0.0)
        for alarm in report.alarms:
            if alarm.detector == "window":
                self._alarm(version, alarm)
        self.registry.add_event("drift_evaluation", version, iso(utc_now()),
                                {**report.to_dict(), "indicators": indicators})
        log.info("drift_evaluated", version=version, status=report.status,
                 reference=report.reference_source, records=report.records_seen)
        return report

    def retire(self, keep: set[str]) -> list[str]:
        """Release every version but ``keep`` (the loaded ones: deployed, fallback, candidate):
        its state is saved to the registry first, so a rollback to it later picks up where it
        stopped, and its metric series are removed. Called by the runtime after each
        deployment change; batches of it still queued are then left unobserved."""
        with self.lock:
            gone = sorted((set(self.windows) | set(self.detectors)) - keep)
            if not gone:
                return []
            windows = {v: self.windows.pop(v).to_state() for v in gone if v in self.windows}
            detectors = {v: self.detectors.pop(v).to_state() for v in gone
                         if v in self.detectors}
            for version in gone:
                self._words.pop(version, None)
        now = iso(utc_now())
        for version, state in windows.items():
            self.registry.save_state("window", version, state, now)
        for version, state in detectors.items():
            self.registry.save_state("drift", version, state, now)
        for version in gone:
            self.metrics.forget(version)
        log.info("monitors_released", versions=gone, reason="no longer loaded")
        return gone

    def roll(self) -> None:
        """Close the current time-series interval of every window (for the plots)."""
        self.drain()
        now = time.time()
        with self.lock:
            for window in self.windows.values():
                window.roll(now)

    def flush(self) -> None:
        """Persist windows and detectors (scheduled, and at shutdown)."""
        self.drain()
        with self.lock:
            windows = {v: w.to_state() for v, w in self.windows.items()}
            detectors = {v: d.to_state() for v, d in self.detectors.items()}
        now = iso(utc_now())
        for version, state in windows.items():
            self.registry.save_state("window", version, state, now)
        for version, state in detectors.items():
            self.registry.save_state("drift", version, state, now)
        self.anomalies.flush()

    def prune(self, older_than: datetime) -> int:
        """Delete drift evaluations, alarms and the other recorded events from before
        ``older_than`` (the scheduled retention job, ``storage.retention_days``); returns how
        many went."""
        cutoff = iso(older_than)
        removed = self.registry.prune_events(cutoff)
        if removed:
            log.info("events_pruned", count=removed, older_than=cutoff, reason="retention")
        return removed

    # readers: the last recorded evaluation, nothing written -------------------------------

    def report(self, version: str) -> dict[str, Any]:
        """The last scheduled evaluation of ``version`` (recorded, so it survives restarts);
        before the first one, what its detector holds so far (``status: not_evaluated``)."""
        evaluation = self.registry.last_event("drift_evaluation", version)
        if evaluation is None:
            with self.lock:
                detector = self.detectors.get(version)
                source = ("none" if detector is None else "collecting_baseline"
                          if detector.collecting_baseline else detector.reference.source)
                seen = 0 if detector is None else detector.records_seen
            evaluation = {
                "status": "not_evaluated", "evaluated_at": None, "reference_source": source,
                "records_seen": seen, "signals": [], "alarms": [],
                "last_alarm_at": None, "indicators": dict(NO_INDICATORS),
                "detail": (f"no scheduled drift evaluation yet (every "
                           f"{self.settings.drift_interval:g} s)"
                           if self.settings.drift_detection else
                           "drift detection is off (monitoring.drift_detection)")}
        return {**evaluation, "drift_detection": self.settings.drift_detection}

    def plan_drift(self, version: str) -> dict[str, Any]:
        """The seed plan's drift check of ``version`` (``check_model_drift``) from its last
        recorded evaluation; ``status`` says ``no_data`` before the first one."""
        threshold = self.settings.drift_threshold
        report = self.report(version)
        if report["status"] == "not_evaluated":
            return {**plan_drift_check(drift_detected=False, indicators=dict(NO_INDICATORS),
                                       threshold=threshold),
                    "version": version, "status": "no_data"}
        answer = plan_drift_check(drift_detected=report["status"] == "drift",
                                  indicators=report.get("indicators", NO_INDICATORS),
                                  threshold=threshold)
        return {**answer, "version": version, "status": report["status"], "report": report}


def _joined(run: list[Observation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The features, scores and flags of scored batches, one after the other."""
    if len(run) == 1:
        only = run[0]
        assert only.features is not None
        return only.features, only.scores, only.flags
    return (np.concatenate([item.features for item in run if item.features is not None]),
            np.concatenate([item.scores for item in run]),
            np.concatenate([item.flags for item in run]))


def _gauge(value: float | None) -> float:
    return float("nan") if value is None else float(value)
