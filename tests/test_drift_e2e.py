"""Drift and alerting on a real daemon: a baseline forms, shifted traffic raises one alarm,
reported over HTTP and the CLI, logged, and sent to a webhook the test runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    FEATURES,
    DaemonProcess,
    Receiver,
    artifact_files,
    stamp,
    write_renamed,
)

pytestmark = pytest.mark.e2e


def batch(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[dict]:
    rows = rng.normal(size=(n, len(FEATURES)))
    rows[:, 0] += shift
    return [{"features": dict(zip(FEATURES, map(float, row), strict=True))} for row in rows]


def test_shifted_traffic_raises_one_alarm_reported_everywhere(tmp_path: Path,
                                                              receiver: Receiver) -> None:
    url = receiver.url
    daemon = DaemonProcess(tmp_path, overrides={
        "monitoring": {"baseline_records": 400, "drift_interval": 1, "min_window_records": 100,
                       "window_records": 1000,
                       "alerting": {"webhook_url": url,
                                    "backoff_initial_seconds": 0.05}},
    })
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        write_renamed(daemon.models_dir, "a", artifact_files("a", created_at=stamp(1)))
        daemon.wait_deployed("a")
        rng = np.random.default_rng(7)
        report = daemon.get("/api/v1/drift").json()["reports"]["a"]
        assert report["reference_source"] == "collecting_baseline"

        for _ in range(8):  # the baseline (400) and a stationary stretch
            assert daemon.post("/api/v1/score", {"records": batch(rng, 100)}).status_code == 200
        # readers see the scheduled evaluations (every drift_interval), never their own
        daemon.wait_for(lambda: daemon.get("/api/v1/drift").json()["reports"]["a"].get(
            "baseline_progress", "not evaluated") is None, what="the baseline to complete")
        assert not daemon.events("drift_alarm")

        for _ in range(10):  # feature x0 moves by 1.5 sd
            daemon.post("/api/v1/score", {"records": batch(rng, 100, shift=1.5)})
        daemon.wait_for(lambda: daemon.events("drift_alarm"), what="a drift alarm")
        alarms = daemon.events("drift_alarm")
        signals = {a["signal"] for a in alarms}
        assert "feature:x0" in signals
        # one alarm per change, not one per record
        assert sum(a["signal"] == "feature:x0" for a in alarms) <= 2

        daemon.wait_for(lambda: daemon.get("/api/v1/drift").json()["reports"]["a"][
            "last_alarm_at"] is not None, what="the report to show the alarm")
        report = daemon.get("/api/v1/drift").json()["reports"]["a"]
        x0 = next(s for s in report["signals"] if s["name"] == "x0")
        assert {"statistic", "p_value", "effect_size", "status", "window_size",
                "reference_size"} <= set(x0)
        history = daemon.get("/api/v1/drift/history").json()
        assert any(a["signal"] == "feature:x0" for a in history["alarms"])
        assert history["evaluations"]

        metrics = daemon.get("/metrics").text
        assert 'modeld_drift_alarms_total{signal="feature:x0"}' in metrics

        daemon.wait_for(lambda: any(b.get("kind") == "drift_alarm" for b in receiver.bodies),
                        what="the webhook alert")
        alert = next(b for b in receiver.bodies if b["kind"] == "drift_alarm")
        assert alert["version"] == "a" and "drift" in alert["title"]

        cli = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "drift", "--config",
                              str(daemon.config_path)], capture_output=True, text=True,
                             timeout=60, check=False)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.startswith("a: drift (reference: baseline; last alarm: 20")
        assert any(line.split()[:2] == ["x0", "drift"] for line in cli.stdout.splitlines())

        # a rejected import is alerted too
        write_renamed(daemon.models_dir, "bad", {**artifact_files("bad"),
                                                 "model.joblib": b"junk"})
        daemon.wait_for(lambda: any(b.get("kind") == "import_rejected"
                                    for b in receiver.bodies), what="the rejection alert")
    finally:
        daemon.stop()

    # reference and detector state persist across a restart
    daemon.start()
    try:
        report = daemon.get("/api/v1/drift").json()["reports"]["a"]
        assert report["reference_source"] == "baseline"
        assert report["baseline_progress"] is None
        assert report["last_alarm_at"] is not None
    finally:
        daemon.stop()
