"""Issue 19, findings 9 and 10: drift monitoring survives a degenerate reference, and a retired
version's monitors and metric series are released."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from modeld.core.registry import Registry
from modeld.daemon.http.app import create_app
from modeld.daemon.jobs.alerting import Alerter
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.runtime import FreedMemory, Runtime
from modeld.daemon.process.settings import MonitoringSettings
from tests.helpers import artifact_files, records, stamp, write_renamed
from tests.test_api import IN_PROCESS, build_runtime

NAMES = ("rssi", "retries")


def _monitors(tmp_path: Path) -> Monitors:
    settings = MonitoringSettings(baseline_records=200, window_records=200,
                                  min_window_records=50)
    registry = Registry(tmp_path / "registry.sqlite3")
    return Monitors(settings, registry, tmp_path / "store", DaemonMetrics(False),
                    Alerter(settings.alerting))


def test_a_baseline_whose_records_are_all_flagged_is_evaluated(tmp_path: Path) -> None:
    # Before: ZeroDivisionError in the anomaly-rate test (the reference rate 1.0 has no
    # variance), so /api/v1/drift answered 500 and no evaluation was ever recorded.
    monitors = _monitors(tmp_path)
    monitors.prepare("v1", NAMES)
    rng = np.random.default_rng(0)
    for _ in range(5):
        monitors.observe("v1", rng.normal(size=(100, 2)), rng.normal(size=100),
                         np.ones(100, dtype=bool), 0.001)
    report = monitors.evaluate("v1")
    assert report is not None
    rate = next(s for s in report.signals if s.name == "anomaly_rate")
    assert rate.effect_size == 0.0  # the window's rate equals the reference's
    assert [e["status"] for e in monitors.registry.events("drift_evaluation")] == [report.status]
    monitors.registry.close()


def test_a_retired_versions_monitors_and_metric_series_are_released(tmp_path: Path) -> None:
    # Before: every version that ever scored kept its window, detector and report in memory
    # and 31 lines in /metrics, for ever (about 0.85 MB RSS per version).
    runtime = build_runtime(tmp_path)
    names = [f"v{i}" for i in range(6)]
    try:
        with TestClient(create_app(runtime), **IN_PROCESS) as http:
            for i, name in enumerate(names):
                add_versions_from(runtime, name, i)
                assert http.post("/api/v1/score", json={"records": records(20)}).status_code \
                    == 200
                assert http.get("/api/v1/drift").status_code == 200
            exported = http.get("/metrics").text
        live = {"v5", "v4"}  # deployed and fallback
        monitors = runtime.monitors
        assert set(monitors.windows) <= live and set(monitors.detectors) <= live
        assert set(runtime._counters) <= live
        for name in names:
            lines = [ln for ln in exported.splitlines() if f'version="{name}"' in ln]
            assert bool(lines) == (name in live), (name, len(lines))
        # released, not lost: the retired windows were saved and come back on use
        assert runtime.manager.registry.load_state("window", "v0") is not None
    finally:
        runtime.close()  # the composition root's whole runtime: registry, canary zygote, ...


def test_the_retired_versions_of_a_burst_of_swaps_share_one_trim(tmp_path: Path) -> None:
    # A trim per swap held the allocator's lock under every request of a swap storm: one
    # trim, a delay after the first release, serves all the releases meanwhile.
    runtime = build_runtime(tmp_path)
    try:
        for i, name in enumerate(["v0", "v1", "v2"]):
            add_versions_from(runtime, name, i)  # each swap retires the version before last
        asked = runtime.freed_memory._timer
        assert asked is not None and asked.is_alive()
    finally:
        runtime.close()
    assert runtime.freed_memory._timer is None and not asked.is_alive()  # closing cancels it

    freed = FreedMemory(delay=0.05)
    freed.release()
    first = freed._timer
    freed.release()
    assert first is not None and freed._timer is first  # the same trim, not a second one
    first.join(5)
    assert freed._timer is None  # trimmed: the next release asks for another
    freed.release()
    assert freed._timer is not None and freed._timer is not first
    freed.close()
    assert freed._timer is None


def add_versions_from(runtime: Runtime, name: str, seed: int) -> None:
    write_renamed(runtime.manager.models_dir, name,
                  artifact_files(name, seed=seed, created_at=stamp(10 - seed)))
    runtime.manager.note_moved_in(name)
    runtime.manager.poll_once()
