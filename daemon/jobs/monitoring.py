"""What scoring saw, per model version: scoring windows, drift detectors, their reports.

Called from the scoring path (``observe``, under ``lock``, which is held for microseconds),
and from scheduler jobs (``evaluate``, ``roll``, ``flush``). State is persisted to the registry
on a schedule and at shutdown, and restored on first use after a restart. A drift alarm is
logged as one ``drift_alarm`` event, counted, recorded in the registry and alerted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.drift import DriftAlarm, DriftConfig, DriftDetector, DriftReport, Reference
from modeld.core.errors import ArtifactInvalid
from modeld.core.explain import ReferenceWords
from modeld.core.loader import REFERENCE_FILE
from modeld.core.manager import iso, utc_now
from modeld.core.monitor import ScoringWindow, plan_drift_check
from modeld.core.registry import Registry
from modeld.daemon.jobs.alerting import Alert, Alerter
from modeld.daemon.jobs.anomalies import RecentAnomalies
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import MonitoringSettings

T = TypeVar("T")

log = structlog.get_logger("modeld.monitoring")

REPORT_MAX_AGE = 5.0


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
            return Reference.from_arrays(feature_names, features, scores=scores,
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


class Monitors:
    """Scoring windows and drift detectors of every version that scored, in one place."""

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
        self.reports: dict[str, DriftReport] = {}
        self._words: dict[str, tuple[Reference, ReferenceWords]] = {}
        self.anomalies = RecentAnomalies(
            registry, lambda: (self.settings.keep_anomalies,
                               self.settings.anomaly_retention_days),
            self.reference_words)

    # the scoring path ---------------------------------------------------------------------

    def window(self, version: str, width: int) -> ScoringWindow:
        window = self.windows.get(version)
        if window is None:
            state = self._saved("window", version)
            window = (ScoringWindow.from_state(state) if state else
                      ScoringWindow(version, n_features=width, started_at=time.time()))
            self.windows[version] = window
        return window

    def detector(self, version: str, feature_names: Sequence[str]) -> DriftDetector:
        detector = self.detectors.get(version)
        if detector is None:
            state = self._saved("drift", version)
            if state is not None:
                detector = DriftDetector.from_state(state, self.config)
            else:
                row = self._guarded(lambda: self.registry.get_version(version), version)
                reference = None if row is None else artifact_reference(
                    self.store_dir / version, dict(row.metadata), feature_names,
                    self.config.reference_levels)
                detector = DriftDetector(feature_names, self.config, reference)
                log.info("drift_reference", version=version,
                         source=detector.reference.source,
                         baseline_records=self.config.baseline_records
                         if detector.collecting_baseline else 0)
            self.detectors[version] = detector
        return detector

    def reference_words(self, version: str, feature_names: Sequence[str]) -> ReferenceWords:
        """Words for a version's feature values, from its drift reference (the artifact's, or
        the baseline collected so far: none while it collects)."""
        with self.lock:
            reference = self.detector(version, feature_names).reference
            cached = self._words.get(version)
            if cached is None or cached[0] is not reference:
                cached = (reference, ReferenceWords.from_reference(reference))
                self._words[version] = cached
        return cached[1]

    def observe(self, version: str, feature_names: Sequence[str], features: np.ndarray,
                scores: np.ndarray, flags: np.ndarray, latency_s: float) -> None:
        now = time.time()
        with self.lock:
            if self.settings.performance_tracking:
                self.window(version, len(feature_names)).observe(features, scores, flags,
                                                                 latency_s, now)
            if not self.settings.drift_detection:
                return
            alarms = self.detector(version, feature_names).observe(
                features, scores, flags, now=now, latency_s=latency_s)
        for alarm in alarms:
            self._alarm(version, alarm)

    def observe_invalid(self, version: str, feature_names: Sequence[str]) -> None:
        now = time.time()
        with self.lock:
            if self.settings.performance_tracking:
                self.window(version, len(feature_names)).observe_invalid(1, now)
            if not self.settings.drift_detection:
                return
            alarms = self.detector(version, feature_names).observe_invalid(1, now)
        for alarm in alarms:
            self._alarm(version, alarm)

    def _saved(self, kind: str, version: str) -> dict[str, Any] | None:
        return self._guarded(lambda: self.registry.load_state(kind, version), version)

    def _guarded(self, read: Callable[[], T], version: str) -> T | None:
        """A registry call on the scoring path: when the database is away (a fleet's
        registry restarting), the request is answered all the same and the monitor starts
        from what it has."""
        try:
            return read()
        except DATABASE_ERRORS as exc:
            log.warning("monitor_registry_unreachable", version=version,
                        reason=str(exc).strip() or type(exc).__name__)
            return None

    def _alarm(self, version: str, alarm: DriftAlarm) -> None:
        log.warning("drift_alarm", version=version, signal=alarm.signal, kind=alarm.kind,
                    detector=alarm.detector, statistic=alarm.statistic, record=alarm.record,
                    reason=alarm.detail)
        self.metrics.drift_alarms.labels(alarm.signal).inc()
        self._guarded(lambda: self.registry.add_event(
            "drift_alarm", version, iso(utc_now()), alarm.to_dict()), version)
        self.alerter.send(Alert(
            kind="drift_alarm", title=f"drift in {alarm.signal} of {version}",
            detail=alarm.detail, version=version,
            fields={"signal": alarm.signal, "detector": alarm.detector,
                    "statistic": alarm.statistic},
        ))

    # scheduled ----------------------------------------------------------------------------

    def evaluate(self, version: str | None) -> DriftReport | None:
        """The windowed tests for the deployed version: a report, gauges, a history row."""
        if version is None or not self.settings.drift_detection:
            return None
        with self.lock:
            detector = self.detectors.get(version)
            if detector is None:
                return None
            report = detector.evaluate(time.time())
            self.reports[version] = report
        for signal in report.signals:
            labels = (version, signal.name)
            self.metrics.drift_statistic.labels(*labels).set(_gauge(signal.statistic))
            self.metrics.drift_p_value.labels(*labels).set(_gauge(signal.p_value))
            self.metrics.drift_alarm.labels(*labels).set(1.0 if signal.status == "drift"
                                                          else 0.0)
        for alarm in report.alarms:
            if alarm.detector == "window":
                self._alarm(version, alarm)
        self.registry.add_event("drift_evaluation", version, iso(utc_now()), {
            "status": report.status,
            "reference_source": report.reference_source,
            "records_seen": report.records_seen,
            "signals": [{"name": s.name, "status": s.status, "statistic": s.statistic,
                         "p_value": s.p_value, "effect_size": s.effect_size}
                        for s in report.signals],
            "alarms": [a.to_dict() for a in report.alarms],
        })
        log.info("drift_evaluated", version=version, status=report.status,
                 reference=report.reference_source, records=report.records_seen)
        return report

    def retire(self, keep: set[str]) -> list[str]:
        """Release every version but ``keep`` (the loaded ones: deployed, fallback, candidate):
        its state is saved to the registry first, so a rollback to it later picks up where it
        stopped, and its metric series are removed. Called by the runtime after each
        deployment change."""
        with self.lock:
            gone = sorted((set(self.windows) | set(self.detectors) | set(self.reports)) - keep)
            if not gone:
                return []
            windows = {v: self.windows.pop(v).to_state() for v in gone if v in self.windows}
            detectors = {v: self.detectors.pop(v).to_state() for v in gone
                         if v in self.detectors}
            for version in gone:
                self.reports.pop(version, None)
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
        now = time.time()
        with self.lock:
            for window in self.windows.values():
                window.roll(now)

    def flush(self) -> None:
        """Persist windows and detectors (scheduled, and at shutdown)."""
        with self.lock:
            windows = {v: w.to_state() for v, w in self.windows.items()}
            detectors = {v: d.to_state() for v, d in self.detectors.items()}
        now = iso(utc_now())
        for version, state in windows.items():
            self.registry.save_state("window", version, state, now)
        for version, state in detectors.items():
            self.registry.save_state("drift", version, state, now)
        self.anomalies.flush()

    def report(self, version: str, feature_names: Sequence[str]) -> dict[str, Any]:
        """The current report of a version: re-evaluated when the last is older than 5 s, so
        an API reader sees streaming alarms without waiting for the scheduled evaluation."""
        with self.lock:
            self.detector(version, feature_names)
            cached = self.reports.get(version)
        if cached is None or time.time() - cached.evaluated_at > REPORT_MAX_AGE:
            cached = self.evaluate(version)
        if cached is None:  # drift detection is off: what the detector holds, unrecorded
            with self.lock:
                cached = self.detectors[version].evaluate(time.time())
        return {**cached.to_dict(), "drift_detection": self.settings.drift_detection}


    def plan_drift(self, version: str, feature_names: Sequence[str]) -> dict[str, Any]:
        """The seed plan's drift check of ``version`` (``check_model_drift``), from its scoring
        window and drift report; ``status`` says ``no_data`` when it never scored."""
        threshold = self.settings.drift_threshold
        with self.lock:
            window = self.windows.get(version)
        if window is None:
            state = self._saved("window", version)
            window = ScoringWindow.from_state(state) if state else None
        if window is None or not feature_names:
            empty = np.empty(0)
            return {**plan_drift_check(drift_detected=False, score_effect=None,
                                       flags=empty.astype(bool), reference_rate=None,
                                       latencies=empty, threshold=threshold),
                    "version": version, "status": "no_data"}
        report = self.report(version, feature_names)
        with self.lock:
            reference = self.detectors[version].reference.anomaly_rate
        score: dict[str, Any] = next(
            (s for s in report["signals"] if s["name"] == "score"), {})
        answer = plan_drift_check(
            drift_detected=report["status"] == "drift", score_effect=score.get("effect_size"),
            flags=window.recent_flags(self.config.window_records),
            reference_rate=None if reference is None else reference.rate,
            latencies=window.recent_latencies(), threshold=threshold)
        return {**answer, "version": version, "status": report["status"], "report": report}


def _gauge(value: float | None) -> float:
    return float("nan") if value is None else float(value)
