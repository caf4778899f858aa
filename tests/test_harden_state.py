"""Issue 19, findings 1 to 4: the daemon's own state is never lost. Real daemon processes on
real files: a second daemon on the same state directory, an empty, truncated, garbage-filled
or internally damaged registry next to a non-empty store, store folders deleted under a running
daemon, and backups that neither block requests nor leave partial files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modeld.core.registry import REGISTRY_FILE, Registry, registry_problem
from tests.helpers import DaemonProcess, artifact_files, stamp, write_renamed
from tests.test_alerting import (
    WebhookReceiver,
    receiver,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.e2e


def test_a_second_daemon_on_the_same_state_directory_is_refused(
        daemon: DaemonProcess) -> None:
    # Before: both ran, imported the same folders and served different versions.
    daemon.start()
    write_renamed(daemon.models_dir, "v1", artifact_files("v1", created_at=stamp(1)))
    daemon.wait_deployed("v1")
    second = DaemonProcess(daemon.root)  # the same folders, another port
    second.config_path = daemon.root / "second.yaml"
    second.log_path = daemon.root / "second.log"
    second.write_config({**daemon.config(), "api": {"host": "127.0.0.1", "port": second.port}})
    second.start(wait_ready=False)
    assert second.proc is not None
    second.proc.wait(30)
    assert second.stop() == 1
    refused = second.events("startup_failed")
    assert len(refused) == 1 and "another modeld (pid" in refused[0]["reason"]
    assert str(daemon.proc.pid if daemon.proc else "") in refused[0]["reason"]
    assert daemon.status()["deployed_version"] == "v1"  # the first one is untouched


STATE = {"backup_enabled": True, "backup_interval": 1, "integrity_check_interval": 1}


def _two_versions_operator_choice(daemon: DaemonProcess) -> Path:
    """v1 and v2 imported, the operator's deployed choice v1, and a backup holding it."""
    daemon.start()
    write_renamed(daemon.models_dir, "v1", artifact_files("v1", created_at=stamp(2)))
    daemon.wait_deployed("v1")
    write_renamed(daemon.models_dir, "v2", artifact_files("v2", seed=1, created_at=stamp(1)))
    daemon.wait_deployed("v2")
    assert daemon.post("/api/v1/models/v1/deploy").status_code == 200
    backups = daemon.root / "state" / "backups"
    daemon.wait_for(lambda: len(daemon.events("registry_backed_up")) >= 2 and any(
        "operator" in _actors(b) for b in backups.glob("registry-*.sqlite3")),
        20, "a backup holding the operator's deployment")
    assert daemon.stop() == 0
    return backups


def _actors(path: Path) -> set[str]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {r[0] for r in conn.execute("SELECT actor FROM deployments")}
        finally:
            conn.close()
    except sqlite3.Error:  # rotated away meanwhile
        return set()


def _damage(registry: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        registry.with_name(registry.name + suffix).unlink(missing_ok=True)
    size = registry.stat().st_size
    if how == "empty":
        registry.write_bytes(b"")
    elif how == "half-truncated":
        with registry.open("r+b") as fh:
            fh.truncate(size // 2)
    else:
        registry.write_bytes(os.urandom(size))


def test_an_empty_registry_next_to_the_store_stops_startup_and_a_backup_restores_it(
        tmp_path: Path) -> None:
    # Before: orphan_version_removed for every version, the store emptied, the training
    # folder re-imported: the operator's choice (v1) and the history gone.
    daemon = DaemonProcess(tmp_path, {"storage": STATE})
    daemon.models_dir.mkdir(parents=True)
    backups = _two_versions_operator_choice(daemon)
    registry = tmp_path / "state" / REGISTRY_FILE
    _damage(registry, "empty")
    (backups / "registry-20261201T000000000000Z.partial").write_bytes(b"half a backup")

    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    daemon.proc.wait(30)
    assert daemon.stop() == 3
    failed = daemon.events("startup_failed")[-1]["reason"]
    assert "the file is empty" in failed and "modeld registry restore" in failed
    assert not daemon.events("orphan_version_removed")
    assert sorted(p.name for p in (tmp_path / "state" / "store" / "versions").iterdir()) == [
        "v1", "v2"]
    assert not list(backups.glob("*.partial"))  # finding 4: a killed backup's partial file
    backup = failed.split("modeld registry restore ")[1].split("`")[0]

    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "registry", "restore",
                           backup, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert list(registry.parent.glob(f"{REGISTRY_FILE}.damaged-*"))  # kept, not deleted
    daemon.start()
    try:
        assert daemon.status()["deployed_version"] == "v1"
        assert [d["actor"] for d in daemon.get("/api/v1/deployments").json()][:1] == [
            "operator"]
    finally:
        daemon.stop()


@pytest.mark.parametrize("how", ["half-truncated", "garbage"])
def test_a_damaged_registry_is_restored_from_the_newest_good_backup_when_configured(
        tmp_path: Path, how: str) -> None:
    # Before: a raw sqlite3.DatabaseError traceback at startup, and a crash loop.
    daemon = DaemonProcess(tmp_path, {"storage": STATE})
    daemon.models_dir.mkdir(parents=True)
    _two_versions_operator_choice(daemon)
    _damage(tmp_path / "state" / REGISTRY_FILE, how)
    config = daemon.config()
    config["storage"]["restore_from_backup"] = True
    daemon.write_config(config)
    daemon.start()
    try:
        assert daemon.status()["deployed_version"] == "v1"
        assert len(daemon.events("registry_restored")) == 1
        assert daemon.get("/readyz").status_code == 200
    finally:
        daemon.stop()


def test_damage_inside_the_registry_is_found_on_schedule_alerted_and_readyz_says_so(
        tmp_path: Path, receiver: WebhookReceiver) -> None:  # noqa: F811
    # Before: serving went on, /readyz 200, and every scan failed silently.
    daemon = DaemonProcess(tmp_path, {
        "storage": {"integrity_check_interval": 1},
        "monitoring": {"alerting": {"webhook_url": receiver.url, "dedupe_seconds": 0}}})
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    try:
        write_renamed(daemon.models_dir, "v1", artifact_files("v1", created_at=stamp(1)))
        daemon.wait_deployed("v1")
        registry = tmp_path / "state" / REGISTRY_FILE
        conn = sqlite3.connect(registry)  # move what the WAL holds into the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        with registry.open("r+b") as fh:  # every page but the first: the tables' pages
            fh.seek(4096)
            fh.write(os.urandom(max(registry.stat().st_size - 4096, 8192)))
        daemon.wait_for(lambda: daemon.get("/readyz").status_code == 503, 20,
                        "/readyz to report the damage")
        assert "registry is damaged" in daemon.get("/readyz").json()["detail"]
        assert daemon.events("registry_damaged")
        assert receiver.wait_for_bodies(1, timeout=20)
        assert "registry_damaged" in {b["kind"] for b in receiver.bodies}
    finally:
        daemon.kill()


def test_store_folders_deleted_under_a_running_daemon_are_noticed_and_refetched_at_restart(
        daemon: DaemonProcess) -> None:
    # Before: nothing noticed; at restart v1 was rejected ("missing") and /readyz said 503.
    config = daemon.config()
    config["storage"] = {**config["storage"], "integrity_check_interval": 1}
    daemon.write_config(config)
    daemon.start()
    write_renamed(daemon.models_dir, "v1", artifact_files("v1", created_at=stamp(1)))
    daemon.wait_deployed("v1")
    shutil.rmtree(daemon.root / "state" / "store" / "versions" / "v1")
    daemon.wait_for(lambda: daemon.status()["state_problems"].get("store") == "v1", 20,
                    "the state check to notice v1's files are gone")
    assert [e["version"] for e in daemon.events("version_files_missing")] == ["v1"]
    assert daemon.stop() == 0
    daemon.start()
    daemon.wait_deployed("v1")
    assert daemon.get("/readyz").status_code == 200
    assert [e["version"] for e in daemon.events("version_files_reimported")] == ["v1"]
    assert daemon.get("/api/v1/models/v1").json()["status"] != "rejected"
    assert daemon.status()["state_problems"] == {}


def test_a_backup_never_holds_the_lock_the_api_waits_on(tmp_path: Path) -> None:
    # Before: Registry.backup held the registry's one lock for the whole copy (a 2 GB
    # registry's backup pushed p99 to 7 s). Here a 64 MB registry: a read while the copy
    # runs answers before the copy ends.
    registry = Registry(tmp_path / REGISTRY_FILE)
    with registry.transaction() as conn:
        conn.executemany("INSERT INTO events (kind, version, at, detail) VALUES (?, ?, ?, ?)",
                         [("bulk", None, "2026-12-01", os.urandom(32768).hex())
                          for _ in range(1000)])
    copying = threading.Thread(target=registry.backup, args=(tmp_path / "copy.sqlite3",),
                               name="test-backup")
    copying.start()
    while not (tmp_path / "copy.sqlite3").exists():
        time.sleep(0.001)
    registry.deployed_version()
    answered_during_copy = copying.is_alive()
    copying.join()
    registry.close()
    assert answered_during_copy
    assert registry_problem(tmp_path / "copy.sqlite3") is None
