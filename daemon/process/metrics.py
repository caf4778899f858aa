"""Prometheus metrics of one daemon, on a registry of its own (so tests can build many apps).

Updated from request threads and the manager's listener; prometheus-client's metric objects are
thread-safe. Served at ``GET /metrics``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from modeld.core.events import (
    FallbackUsed,
    ImportConflict,
    ImportRejected,
    ManagerEvent,
    ModelImported,
    ModelSwapped,
    SwapFailed,
)

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class DaemonMetrics:
    """Every metric modeld exports. Built once by the daemon; never raises."""

    def __init__(self, resource_monitoring: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if resource_monitoring:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.requests = Counter("modeld_score_requests", "Scoring requests answered",
                                ["outcome"], registry=r)
        self.records = Counter("modeld_records_scored", "Records scored", ["version"],
                               registry=r)
        self.anomalies = Counter("modeld_anomalies_flagged", "Records flagged as anomalous",
                                 ["version"], registry=r)
        self.latency = Histogram("modeld_score_request_seconds", "Scoring request latency",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("modeld_score_errors", "Scoring requests refused or failed",
                              ["kind"], registry=r)
        self.deployed = Info("modeld_deployed_model", "The deployed and fallback versions",
                             registry=r)
        self.swaps = Counter("modeld_swaps", "Model swaps", ["actor"], registry=r)
        self.swap_failures = Counter("modeld_swap_failures", "Swaps refused because the new "
                                     "version failed to load or warm", registry=r)
        self.imports = Counter("modeld_imports", "Artifacts imported", registry=r)
        self.rejections = Counter("modeld_import_rejections", "Artifacts rejected", registry=r)
        self.fallbacks = Counter("modeld_fallback_uses", "Batches answered by the fallback "
                                 "because the deployed model failed", registry=r)
        self.drift_statistic = Gauge("modeld_drift_statistic", "Latest drift test statistic",
                                     ["version", "signal"], registry=r)
        self.drift_p_value = Gauge("modeld_drift_p_value", "Latest drift test p-value",
                                   ["version", "signal"], registry=r)
        self.drift_alarm = Gauge("modeld_drift_alarm", "1 while a signal is in drift",
                                 ["version", "signal"], registry=r)
        self.drift_alarms = Counter("modeld_drift_alarms", "Drift alarms raised",
                                    ["signal"], registry=r)

    def forget(self, version: str) -> None:
        """Remove every series labelled with ``version`` (a retired version)."""
        for counter in (self.records, self.anomalies):
            with contextlib.suppress(KeyError):
                counter.remove(version)
        for gauge in (self.drift_statistic, self.drift_p_value, self.drift_alarm):
            signals = {s.labels["signal"] for family in gauge.collect() for s in family.samples
                       if s.labels.get("version") == version}
            for signal in signals:
                gauge.remove(version, signal)

    def set_deployed(self, deployed: str | None, fallback: str | None) -> None:
        self.deployed.info({"version": deployed or "", "fallback": fallback or ""})

    def on_event(self, event: ManagerEvent) -> None:
        """The manager's listener: count what happened."""
        match event:
            case ModelImported():
                self.imports.inc()
            case ImportRejected() | ImportConflict():
                self.rejections.inc()
            case ModelSwapped(actor=actor):
                self.swaps.labels(actor).inc()
            case SwapFailed():
                self.swap_failures.inc()
            case FallbackUsed():
                self.fallbacks.inc()
            case _:
                pass  # not counted
