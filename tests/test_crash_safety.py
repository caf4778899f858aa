"""SIGKILL at each step of an import and of a deployment, then restart: nothing is lost.

The crash points are test-only: `MODELD_TEST_CRASH_AT=<step>` makes the daemon SIGKILL itself
when it reaches that step (modeld.daemon.process.crashpoints, injected by the composition
root); production never sets it.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, artifact_files, stamp, write_renamed

pytestmark = pytest.mark.e2e

IMPORT_STEPS = ["stage_file_copied", "staged", "validated", "store_renamed", "registered"]
DEPLOY_STEPS = ["loaded", "deployment_recorded"]


def registry_rows(root: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(root / "state" / "registry.sqlite3") as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.parametrize("step", IMPORT_STEPS + DEPLOY_STEPS)
def test_sigkill_at_each_step_then_restart(tmp_path: Path, step: str) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    write_renamed(daemon.models_dir, "first", artifact_files("v1", created_at=stamp(1)))
    daemon.wait_deployed("v1")
    daemon.stop()

    daemon.env["MODELD_TEST_CRASH_AT"] = step
    daemon.start()
    write_renamed(daemon.models_dir, "second", artifact_files("v2", seed=2,
                                                               created_at=stamp(0)))
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == -signal.SIGKILL
    daemon.log.close()
    daemon.proc = None

    del daemon.env["MODELD_TEST_CRASH_AT"]
    daemon.start()
    # the interrupted import completes and, newer, is deployed; nothing is doubled
    daemon.wait_deployed("v2", timeout=20)
    time.sleep(0.5)
    versions = registry_rows(tmp_path, "SELECT version, status FROM versions ORDER BY version")
    assert versions == [("v1", "available"), ("v2", "available")]
    completed = registry_rows(tmp_path, "SELECT version FROM transfers WHERE status = "
                                        "'completed' ORDER BY version")
    assert completed == [("v1",), ("v2",)]
    deployments = registry_rows(tmp_path, "SELECT from_version, to_version FROM deployments "
                                          "ORDER BY id")
    assert deployments == [(None, "v1"), ("v1", "v2")]
    store = tmp_path / "state" / "store"
    assert sorted(p.name for p in (store / "versions").iterdir()) == ["v1", "v2"]
    assert not any((store / "staging").iterdir())
    assert daemon.status()["fallback_version"] == "v1"
    assert daemon.stop() == 0


def test_sigterm_during_a_load_stops_cleanly(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    for i in range(5):
        write_renamed(daemon.models_dir, f"m{i}", artifact_files(f"m{i}", seed=i,
                                                                  created_at=stamp(1 - i / 10)))
    time.sleep(0.15)  # imports are under way
    assert daemon.stop(timeout=10) == 0
    daemon.start()
    daemon.wait_deployed("m4", timeout=20)
    ok = registry_rows(tmp_path, "SELECT COUNT(*) FROM versions WHERE status = 'available'")
    assert ok == [(5,)]
    assert daemon.stop() == 0


def test_a_burst_of_sighups_keeps_serving(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    write_renamed(daemon.models_dir, "a", artifact_files("a", created_at=stamp(1)))
    daemon.wait_deployed("a")
    for _ in range(50):
        daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.status()["config_generation"] >= 2, what="reloads")
    assert daemon.post("/api/v1/score", {"records": [{"features": dict.fromkeys(
        ("x0", "x1", "x2", "x3"), 0.0)}]}).status_code == 200
    assert daemon.status()["deployed_version"] == "a"
    assert daemon.stop() == 0


def test_training_folder_deleted_and_recreated_and_10000_files(tmp_path: Path) -> None:
    import shutil

    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    write_renamed(daemon.models_dir, "a", artifact_files("a", created_at=stamp(1)))
    daemon.wait_deployed("a")
    shutil.rmtree(daemon.models_dir.parent)
    time.sleep(0.5)
    daemon.models_dir.mkdir(parents=True)
    junk = daemon.models_dir / "junk"
    junk.mkdir()
    for i in range(10_000):
        (junk / f"f{i}.bin").write_bytes(b"x")
    write_renamed(daemon.models_dir, "b", artifact_files("b", seed=1, created_at=stamp(0)))
    daemon.wait_deployed("b", timeout=30)
    assert daemon.get("/healthz").status_code == 200
    assert daemon.status()["health"].get("watcher", True)
    assert daemon.stop() == 0
