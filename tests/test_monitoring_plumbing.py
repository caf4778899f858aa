"""Issue 13, items 4 (alert storms), 5 and 6: reads have no side effects, scoring does no
monitoring work, detectors are built on deploy, events are bounded by retention, alerts are
rate limited per channel, and the plan's three indicators are reported (inference time never
as drift)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from modeld.core.manager import iso, utc_now
from modeld.core.registry import Registry
from modeld.daemon.http.app import create_app
from modeld.daemon.http.mcp_tools import drift_report
from modeld.daemon.jobs.alerting import Alert, Alerter
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import MonitoringSettings
from tests.helpers import Receiver, records
from tests.test_api import IN_PROCESS, add_versions, build_runtime

NAMES = ("rssi", "retries")


def _monitors(tmp_path: Path, **settings: object) -> Monitors:
    monitoring = MonitoringSettings(**{"baseline_records": 200, "window_records": 400,
                                       "min_window_records": 50, **settings})
    return Monitors(monitoring, Registry(tmp_path / "registry.sqlite3"), tmp_path / "store",
                    DaemonMetrics(False), Alerter(monitoring.alerting))


def _metric(text: str, name: str) -> float:
    for row in text.splitlines():
        if row.startswith(name + " "):
            return float(row.rsplit(" ", 1)[1])
    return 0.0


def test_reading_drift_evaluates_and_writes_nothing(tmp_path: Path) -> None:
    # Before: every GET /api/v1/drift (the dashboard's, every 3 s) older than 5 s since the
    # last evaluated and wrote a drift_evaluation row; the first always did.
    runtime = build_runtime(tmp_path)
    try:
        add_versions(runtime, "v1")
        registry = runtime.manager.registry
        with TestClient(create_app(runtime), **IN_PROCESS) as http:
            assert http.post("/api/v1/score", json={"records": records(50)}).status_code == 200
            runtime.monitors.drain()

            def read_everything() -> dict[str, object]:
                answer = http.get("/api/v1/drift").json()["reports"]["v1"]
                plan = http.get("/api/v1/model-management/v1/drift").json()
                drift_report(runtime)  # MCP's get_drift_report
                return {"api": answer, "plan": plan}

            first, second = read_everything(), read_everything()
            assert registry.events("drift_evaluation") == []
            assert first == second
            assert first["api"]["status"] == "not_evaluated"  # type: ignore[index]
            assert first["api"]["reference_source"] == "collecting_baseline"  # type: ignore[index]

            report = runtime.monitors.evaluate("v1")  # the scheduled job
            assert report is not None
            read_everything()
            answer = read_everything()["api"]
            assert len(registry.events("drift_evaluation")) == 1
            assert answer["evaluated_at"] == report.evaluated_at  # type: ignore[index]
            assert answer["records_seen"] == 50  # type: ignore[index]
    finally:
        runtime.close()


def test_detectors_are_built_on_deploy_before_any_scoring(tmp_path: Path) -> None:
    # Before: a version's window and detector were built by its first scoring request.
    runtime = build_runtime(tmp_path)
    try:
        add_versions(runtime, "v1", "v2")  # v2 deployed, v1 its fallback
        state = runtime.slot.state
        assert state.deployed is not None and state.deployed.version == "v2"
        assert state.fallback is not None and state.fallback.version == "v1"
        assert set(runtime.monitors.detectors) == {"v1", "v2"}
        assert set(runtime.monitors.windows) == {"v1", "v2"}
        assert runtime.monitors.detectors["v2"].records_seen == 0
        assert runtime.metrics.records.collect()[0].samples == []  # nothing scored
    finally:
        runtime.close()
    # and after a restart, before any request, from the state saved at shutdown
    again = build_runtime(tmp_path)
    try:
        assert set(again.monitors.detectors) == {"v1", "v2"}
    finally:
        again.close()


def test_scoring_only_hands_over_and_a_full_queue_drops_counted(tmp_path: Path) -> None:
    # Before: observe updated the window and the detector (and wrote alarms) on the request
    # thread.
    monitors = _monitors(tmp_path, queue_records=10)
    monitors.prepare("v1", NAMES)
    rng = np.random.default_rng(1)
    monitors.observe("v1", rng.normal(size=(8, 2)), rng.normal(size=8), np.zeros(8, bool), 0.01)
    monitors.observe("v1", rng.normal(size=(5, 2)), rng.normal(size=5), np.zeros(5, bool), 0.01)
    monitors.observe_invalid("v1")
    assert monitors.windows["v1"].records == 0 and monitors.detectors["v1"].records_seen == 0
    dropped = monitors.metrics.registry.get_sample_value("modeld_monitoring_dropped_total")
    assert dropped == 5  # the batch that did not fit
    monitors.drain()
    assert monitors.windows["v1"].records == 8 and monitors.windows["v1"].invalid == 1
    assert monitors.detectors["v1"].records_seen == 8
    # a version released meanwhile: its late batches are left unobserved, not resurrected
    monitors.observe("v9", rng.normal(size=(2, 2)), rng.normal(size=2), np.zeros(2, bool), 0.01)
    monitors.drain()
    assert "v9" not in monitors.windows and "v9" not in monitors.detectors
    monitors.registry.close()


def test_the_monitoring_thread_does_the_work_and_drain_waits_for_it(tmp_path: Path) -> None:
    monitors = _monitors(tmp_path)
    monitors.prepare("v1", NAMES)
    monitors.start()
    try:
        rng = np.random.default_rng(2)
        for _ in range(20):
            monitors.observe("v1", rng.normal(size=(10, 2)), rng.normal(size=10),
                             np.zeros(10, bool), 0.001)
        monitors.drain()
        assert monitors.windows["v1"].records == 200
    finally:
        monitors.close()
        monitors.registry.close()


def test_queued_batches_of_a_version_are_fed_to_its_detector_as_one(tmp_path: Path) -> None:
    # Before: the monitoring thread fed the detector one request at a time, so single-record
    # traffic cost a detector call (and a hand-over of the interpreter lock) per request.
    monitors = _monitors(tmp_path)
    monitors.prepare("v1", NAMES)
    detector = monitors.detectors["v1"]
    fed: list[int] = []
    observe = detector.observe

    def counted(features: np.ndarray, *args: object, **kwargs: object) -> object:
        fed.append(len(features))
        return observe(features, *args, **kwargs)  # type: ignore[arg-type]

    detector.observe = counted  # type: ignore[method-assign]
    rng = np.random.default_rng(4)
    for i in range(30):
        monitors.observe("v1", rng.normal(size=(1, 2)), rng.normal(size=1), np.zeros(1, bool),
                         0.001 * (i + 1))
    monitors.observe_invalid("v1")
    monitors.observe("v1", rng.normal(size=(3, 2)), rng.normal(size=3), np.zeros(3, bool), 0.5)
    monitors.drain()
    assert fed == [30, 3]  # the refused record ends a run: the rows stay in arrival order
    window = monitors.windows["v1"]
    assert (window.records, window.requests, window.invalid) == (33, 31, 1)
    assert detector.records_seen == 33 and detector.invalid_seen == 1
    assert detector._baseline is not None  # every request's latency, in order
    assert detector._baseline._latencies == [0.001 * (i + 1) for i in range(30)] + [0.5]
    monitors.registry.close()


def test_drift_events_are_bounded_by_retention(tmp_path: Path) -> None:
    # Before: drift_evaluation and drift_alarm rows were kept for ever.
    runtime = build_runtime(tmp_path)  # storage.retention_days: 30
    try:
        registry = runtime.manager.registry
        old = iso(utc_now() - timedelta(days=31))
        recent = iso(utc_now() - timedelta(days=29))
        for at in (old, recent):
            registry.add_event("drift_evaluation", "v1", at, {"status": "ok"})
            registry.add_event("drift_alarm", "v1", at, {"signal": "score"})
        runtime.retention()  # the scheduled retention job
        assert [e["at"] for e in registry.events("drift_evaluation")] == [recent]
        assert [e["at"] for e in registry.events("drift_alarm")] == [recent]
    finally:
        runtime.close()


def test_an_alarm_flood_reaches_each_channel_at_most_its_rate_limit(
        tmp_path: Path, receiver: Receiver) -> None:
    # Before: every distinct alert went out; a storm of 40 alarms was 40 messages.
    runtime = build_runtime(tmp_path, monitoring={"alerting": {
        "webhook_url": receiver.url, "rate_limit_count": 3, "rate_limit_seconds": 3600,
        "dedupe_seconds": 0}})
    try:
        for i in range(40):
            assert runtime.alerter.send(Alert(kind="drift_alarm", title=f"drift in x{i} of v1",
                                              detail="moved", version="v1"))
        runtime.alerter.stop(10)  # delivers what it took
        assert len(receiver.bodies) == 3
        with TestClient(create_app(runtime), **IN_PROCESS) as http:
            exported = http.get("/metrics").text
        assert _metric(exported, 'modeld_alerts_held_back_total{channel="webhook"}') == 37
    finally:
        runtime.close()


def test_the_rate_limit_is_a_sliding_window_per_channel(tmp_path: Path,
                                                        receiver: Receiver) -> None:
    now = [0.0]
    held: list[str] = []
    alerter = Alerter(MonitoringSettings(alerting={
        "webhook_url": receiver.url, "rate_limit_count": 2, "rate_limit_seconds": 60,
        "dedupe_seconds": 0}).alerting, clock=lambda: now[0], held_back=held.append)
    alerter.start()
    for i in range(3):
        alerter.send(Alert(kind="drift_alarm", title=f"a{i}", detail="d"))
    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:  # the worker took all three
        time.sleep(0.01)
    assert held == ["webhook"]
    now[0] = 61.0  # the window has slid past the first two
    alerter.send(Alert(kind="drift_alarm", title="a3", detail="d"))
    alerter.stop(5)
    assert [b["title"] for b in receiver.bodies] == ["a0", "a1", "a3"]
    assert held == ["webhook"]


def test_indicators_are_reported_and_inference_time_is_never_drift(tmp_path: Path) -> None:
    # Before: /api/v1/drift had no indicators, and the plan's drift_score averaged the
    # inference-time change in with the data's.
    monitors = _monitors(tmp_path)
    monitors.prepare("v1", NAMES)
    rng = np.random.default_rng(3)
    for i in range(40):  # the same data throughout; requests ten times slower from the 25th
        monitors.observe("v1", rng.normal(size=(15, 2)), rng.normal(0.5, 0.05, size=15),
                         rng.random(15) < 0.05, 0.001 if i < 24 else 0.01)
    report = monitors.evaluate("v1")
    assert report is not None and report.status != "drift"
    answer = monitors.report("v1")
    indicators = answer["indicators"]
    assert set(indicators) == {"anomaly_rate_change", "score_distribution_change",
                               "inference_time_change"}
    assert indicators["inference_time_change"] > 1.0
    assert monitors.registry.events("drift_alarm") == []
    plan = monitors.plan_drift("v1")
    assert plan["drift_detected"] is False
    assert plan["drift_score"] == round((indicators["anomaly_rate_change"]
                                         + indicators["score_distribution_change"]) / 2, 6)
    assert plan["indicators"] == indicators
    monitors.registry.close()
