"""Prometheus metrics of one daemon, on a registry of its own (so tests can build many apps).

Updated from request threads and the manager's listener; prometheus-client's metric objects are
thread-safe. Served at ``GET /metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from modeld.core.events import (
    FallbackUsed,
    ImportConflict,
    ImportRejected,
    ManagerEvent,
    ModelImported,
    ModelSwapped,
    SwapFailed,
)
from modeld.core.shadow import GateVerdict, ShadowReport

# families whose series add up across processes: a request served by any worker is one
SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})
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
        self.monitoring_dropped = Counter("modeld_monitoring_dropped", "Scored records the "
                                          "monitoring queue had no room for (scoring never "
                                          "waits for monitoring; they are not monitored)",
                                          registry=r)
        self.alerts_held_back = Counter("modeld_alerts_held_back", "Alerts a channel's rate "
                                        "limit (monitoring.alerting.rate_limit_count per "
                                        "rate_limit_seconds) held back", ["channel"],
                                        registry=r)

        self.shadow_dropped = Counter("modeld_shadow_dropped", "Shadow scorings dropped because "
                                      "the shadow queue was full (no response waited)",
                                      registry=r)
        self.shadow_errors = Counter("modeld_shadow_errors", "Shadow batches the other model "
                                     "of the pair failed to score", registry=r)
        self.shadow_queue = Gauge("modeld_shadow_queue_depth", "Batches waiting for shadow "
                                  "scoring", registry=r)
        self.shadow = Gauge("modeld_shadow_statistic", "The candidate's comparison with the "
                            "deployed version (records_compared, flag_agreement, kappa, "
                            "flag rates, spearman, latency p99 seconds)",
                            ["candidate", "statistic"], registry=r)
        self.shadow_gate = Gauge("modeld_shadow_gate_condition", "1 while a promotion gate "
                                 "condition holds for the candidate, 0 while it fails",
                                 ["candidate", "condition"], registry=r)

    def set_shadow(self, report: ShadowReport, verdict: GateVerdict, queue_depth: int) -> None:
        """The shadow worker's gauges, after each report it builds."""
        self.shadow_queue.set(queue_depth)
        statistics = {
            "records_compared": report.records_compared,
            "flag_agreement": report.flag_agreement,
            "kappa": report.kappa,
            "champion_flag_rate": report.champion_flag_rate,
            "candidate_flag_rate": report.candidate_flag_rate,
            "spearman": report.spearman,
            "champion_latency_p99_seconds": None if report.champion_latency_p99_ms is None
            else report.champion_latency_p99_ms / 1000,
            "candidate_latency_p99_seconds": None if report.candidate_latency_p99_ms is None
            else report.candidate_latency_p99_ms / 1000,
        }
        for name, value in statistics.items():
            if value is not None:
                self.shadow.labels(report.candidate, name).set(value)
        for condition in verdict.conditions:
            self.shadow_gate.labels(report.candidate, condition.name).set(int(condition.holds))

    def clear_shadow(self) -> None:
        """A new comparison: the last candidate's series go."""
        self.shadow.clear()
        self.shadow_gate.clear()

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


    def exposition(self, others: Sequence[tuple[str, str]] = ()) -> bytes:
        """This process's metrics in the text format, with ``others`` (a control process's
        workers: (worker, its metrics in the text format)) merged in: counters, histograms
        and summaries summed series by series (their ``_created`` left out: it has no sum);
        every other family's series (gauges: drift, resident memory, start time, the
        deployed model) kept per process, a worker's labelled ``worker``."""
        own = generate_latest(self.registry)
        if not others:
            return own
        return generate_latest(_Merged([(None, own.decode()), *others]))


class _Merged:
    """The families of several processes' expositions, as ``DaemonMetrics.exposition``
    merges them (an object with ``collect``, which is all ``generate_latest`` needs)."""

    def __init__(self, texts: Sequence[tuple[str | None, str]]) -> None:
        self.texts = texts

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for worker, text in self.texts:
            for family in text_string_to_metric_families(text):
                if family.name.endswith("_created"):  # a counter's start: no sum, no use
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type))
                if family.type in SUMMED_TYPES:
                    totals = sums.setdefault(family.name, {})
                    for sample in family.samples:
                        if not sample.name.endswith("_created"):
                            key = (sample.name, tuple(sorted(sample.labels.items())))
                            totals[key] = totals.get(key, 0.0) + sample.value
                    continue
                for sample in family.samples:
                    labels = (sample.labels if worker is None
                              else {**sample.labels, "worker": worker})
                    merged.add_sample(sample.name, labels, sample.value)
        for name, totals in sums.items():
            for (sample_name, pairs), value in totals.items():
                families[name].add_sample(sample_name, dict(pairs), value)
        return list(families.values())
