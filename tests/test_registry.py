"""The registry on both of its databases: a SQLite file and a real PostgreSQL cluster.

Every test here runs twice (the ``registry_url`` fixture): the one implementation must mean
the same on either.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from modeld.core.dialect import DATABASE_ERRORS, Connection
from modeld.core.errors import SchemaTooNew
from modeld.core.fleet import fleet_view
from modeld.core.manager import ModelManager, RegistrySnapshot, iso, utc_now
from modeld.core.registry import (
    ROLLBACK_REASON,
    SCHEMA_VERSION,
    AnomalyRow,
    DaemonRow,
    FolderRow,
    Registry,
    VersionRow,
)
from modeld.core.store import ModelStore
from modeld.daemon.jobs.alerting import Alerter, AlertingSettings
from modeld.daemon.jobs.fleet import FleetMember
from modeld.daemon.process.settings import FleetSettings
from tests.helpers import DaemonProcess, Receiver, artifact_files
from tests.test_core import NOW, Clock, created, drop, make_manager


def version_row(version: str, status: str = "available", reason: str = "") -> VersionRow:
    return VersionRow(
        version=version, status=status, model_type="IsolationForest", quality_score=0.91,
        report={"accepted": True}, metadata={"a": 1}, created_at=NOW.isoformat(),
        imported_at=NOW.isoformat(), source_path="/m/" + version, store_path=None,
        checksums={"model.joblib": {"sha256": "ab", "size": 1}}, content_digest="cd",
        reason=reason, considered=False, deployed_at=None)


def test_versions_folders_state_and_events_mean_the_same_on_both(registry_url: str) -> None:
    registry = Registry(registry_url)
    registry.put_version(version_row("v1", status="rejected", reason="bad"))
    registry.put_version(version_row("v1"))  # a rejected version is replaced
    registry.set_report("v1", {"accepted": True, "n": 2}, 0.5)
    registry.mark_considered("v1")
    row = registry.get_version("v1")
    assert row is not None and row.status == "available" and row.quality_score == 0.5
    assert row.considered and row.report["n"] == 2 and row.deployed_at is None
    registry.record_deployment(None, "v1", "2026-11-29T00:00:00+00:00", "first", "auto")
    assert registry.get_version("v1").deployed_at == "2026-11-29T00:00:00+00:00"  # type: ignore[union-attr]
    assert registry.deployed_version() == "v1"

    registry.record_folder(FolderRow("a", "f1", "imported", "v1", "", "t1"))
    registry.record_folder(FolderRow("a", "f2", "rejected", None, "changed", "t2"))
    assert registry.folders() == {"a": FolderRow("a", "f2", "rejected", None, "changed", "t2")}
    registry.record_folder(FolderRow("b", "f3", "imported", "v1", "", "t3"))
    assert registry.folders(["b", "never seen"]) == {
        "b": FolderRow("b", "f3", "imported", "v1", "", "t3")}
    assert registry.folders([]) == {} and set(registry.folders()) == {"a", "b"}
    registry.save_state("drift", "v1", {"n": 1}, "t1")
    registry.save_state("drift", "v1", {"n": 2}, "t2")
    assert registry.load_state("drift", "v1") == {"n": 2}
    # numpy's numbers and arrays are saved as JSON numbers; one that is not finite as null
    registry.save_state("window", "v1", {"n": np.int64(3), "sum": np.float64(0.5),
                                         "rows": np.array([[1.5, np.nan], [np.inf, 2.0]]),
                                         "last": float("nan")}, "t3")
    assert registry.load_state("window", "v1") == {"n": 3, "sum": 0.5,
                                                   "rows": [[1.5, None], [None, 2.0]],
                                                   "last": None}
    registry.add_event("swap_failed", "v1", "t3", {"reason": "100% broken?"})
    assert registry.events("swap_failed")[0]["reason"] == "100% broken?"

    registry.nominate("v1", None, "t1", "new")
    registry.nominate("v2", "v1", "t2", "newer")
    assert registry.candidate().version == "v2"  # type: ignore[union-attr]
    assert [c.state for c in registry.candidates()] == ["candidate", "superseded"]
    registry.close()


def test_the_deployment_history_is_append_only_on_both(registry_url: str) -> None:
    registry = Registry(registry_url)
    registry.record_deployment(None, "v1", "t", "first", "operator")
    for statement in ("DELETE FROM deployments", "UPDATE deployments SET to_version = 'x'"):
        with pytest.raises(DATABASE_ERRORS, match="append-only"), registry.transaction() as conn:
            conn.execute(statement)
    assert registry.deployed_version() == "v1"
    registry.close()


def test_anomalies_filter_and_prune_on_both(registry_url: str) -> None:
    registry = Registry(registry_url)
    rows = [AnomalyRow("v1", f"2026-11-28T00:00:0{i}", None, f"ap-{i % 2}", None, None,
                       0.9, {}) for i in range(6)]
    registry.add_anomalies(rows)
    assert len(registry.anomalies()) == 6
    assert {r.host for r in registry.anomalies(host="ap-1")} == {"ap-1"}
    assert len(registry.anomalies(since="2026-11-28T00:00:04")) == 2
    assert registry.prune_anomalies(keep_per_version=3, older_than="2026-11-28T00:00:01") == 3
    assert [r.at[-1] for r in registry.anomalies()] == ["5", "4", "3"]
    registry.close()


def test_files_are_content_addressed_and_shared_between_versions(registry_url: str) -> None:
    registry = Registry(registry_url)
    same = b"\x00\x01 model bytes"
    digest = hashlib.sha256(same).hexdigest()
    meta = hashlib.sha256(b"{}").hexdigest()
    registry.put_files("v1", {"versions/v1/model.joblib": (digest, same),
                              "versions/v1/metadata.json": (meta, b"{}")})
    registry.put_files("v2", {"versions/v2/sub/model.joblib": (digest, same)})
    assert registry.file_manifest("v1") == {"versions/v1/metadata.json": meta,
                                            "versions/v1/model.joblib": digest}
    assert registry.file_manifest("v2") == {"versions/v2/sub/model.joblib": digest}
    assert registry.file_manifest("v3") == {}
    assert registry.blob(digest) == same and registry.blob("0" * 64) is None
    [count] = registry._query("SELECT COUNT(*) AS n FROM blobs")
    assert count["n"] == 2  # the shared bytes are held once
    registry.close()


def test_heartbeats_and_the_fleet_view(registry_url: str) -> None:
    registry = Registry(registry_url)

    def beat(daemon: str, version: str | None, since: str, at: str) -> None:
        registry.heartbeat(DaemonRow(daemon, "h", 1, "http://h", "follower", version, since,
                                     None, "2026-11-28T00:00:00+00:00", at))

    beat("a", "v2", "2026-11-28T00:01:00+00:00", "2026-11-28T00:02:00+00:00")
    beat("b", "v1", "2026-11-28T00:00:00+00:00", "2026-11-28T00:02:00+00:00")
    beat("b", "v1", "2026-11-28T00:00:00+00:00", "2026-11-28T00:02:01+00:00")  # upsert
    beat("c", "v0", "2026-11-28T00:00:00+00:00", "2026-11-28T00:00:00+00:00")  # silent since
    rows = registry.daemons()
    assert [r.id for r in rows] == ["b", "a", "c"]
    view = fleet_view(rows, NOW.replace(hour=0, minute=2, second=2), 5, 30)
    assert view.versions == {"v1": ["b"], "v2": ["a"]}  # c is gone: not counted
    assert view.split_since == "2026-11-28T00:01:00+00:00"
    assert view.alarm is not None and "v1 by b; v2 by a" in view.alarm
    assert fleet_view(rows[:1], NOW, 5, 30).alarm is None
    registry.forget_daemon("c")
    assert {r.id for r in registry.daemons()} == {"a", "b"}
    registry.close()


def test_a_schema_newer_than_the_code_is_refused(registry_url: str) -> None:
    Registry(registry_url).close()
    registry = Registry(registry_url)  # a second start migrates nothing
    [row] = registry._query("SELECT COUNT(*) AS n, MAX(version) AS v FROM schema_version")
    assert (row["n"], row["v"]) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with registry.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                     (SCHEMA_VERSION + 1, "later"))
    registry.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Registry(registry_url)


def test_the_manager_imports_deploys_and_rolls_back_on_both(tmp_path: Path,
                                                             registry_url: str) -> None:
    manager = make_manager(tmp_path, Clock(), registry=registry_url)
    for i, name in enumerate(("v1", "v2")):
        drop(manager, name, artifact_files(name, seed=i, created_at=created(2 - i)))
        assert manager.poll_once().outcomes[0].status == "imported"
    assert manager.poll_once().outcomes == ()
    assert manager.slot.state.deployed.version == "v2"  # type: ignore[union-attr]
    assert manager.rollback() == "v1"
    assert [d.actor for d in manager.registry.deployments()] == ["rollback", "auto", "auto"]
    # the files travel with the version exactly when other daemons share the registry
    assert bool(manager.registry.file_manifest("v1")) == manager.registry.shared
    manager.registry.close()


def test_a_follower_fetches_a_version_from_the_registry_and_checks_it(tmp_path: Path,
                                                                      pg_url: str) -> None:
    importer = make_manager(tmp_path / "a", Clock(), registry=pg_url)
    drop(importer, "v1", artifact_files("v1", created_at=created(1)))
    importer.poll_once()
    follower = ModelManager(registry=Registry(pg_url), store=ModelStore(tmp_path / "b"),
                            slot=importer.slot.__class__(), models_dir=tmp_path / "none",
                            leads=False)
    follower.start()  # serves the registry's version, fetched into its own store
    assert follower.slot.state.deployed.version == "v1"  # type: ignore[union-attr]
    assert follower.store.verify("v1", importer.registry.get_version("v1").checksums) is None  # type: ignore[union-attr]
    assert follower.poll_once().outcomes == ()  # a follower never imports

    drop(importer, "v2", artifact_files("v2", seed=2, created_at=created(0.5)))
    importer.poll_once()
    # a blob damaged in the database is caught by its digest, and the old version serves on
    digest = importer.registry.file_manifest("v2")["versions/v2/model.joblib"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE blobs SET bytes = %s WHERE sha256 = %s", (b"junk", digest))
    assert follower.follow() == "v1"
    assert not follower.store.path_of("v2").exists()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        data = importer.store.files_of(importer.store.path_of("v2"))[
            "versions/v2/model.joblib"][1]
        conn.execute("UPDATE blobs SET bytes = %s WHERE sha256 = %s", (data, digest))
    assert follower.follow() == "v2"
    importer.registry.close()
    follower.registry.close()


def test_two_importers_racing_import_a_version_once(tmp_path: Path, pg_url: str) -> None:
    """The fleet's guard behind the election: even two daemons importing the same folder at
    the same moment (a takeover while the old importer finishes) record it once."""
    models = tmp_path / "models"
    managers = [make_manager(tmp_path / name, Clock(), registry=pg_url) for name in "ab"]
    for manager in managers:
        manager.models_dir = models
    drop(managers[0], "v1", artifact_files("v1", created_at=created(1)))
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def run(manager: ModelManager) -> None:
        barrier.wait()
        outcomes.append(manager.import_path("v1").status)

    threads = [threading.Thread(target=run, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["duplicate", "imported"]
    assert [v.version for v in managers[0].registry.list_versions()] == ["v1"]
    assert len([t for t in managers[0].registry.transfers() if t.status == "completed"]) == 1
    for manager in managers:
        manager.registry.close()


def test_a_registry_url_names_one_of_the_two_databases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither sqlite"):
        Registry("mysql://db/x")
    registry = Registry(f"sqlite://{tmp_path / 'r.sqlite3'}")
    assert registry.path == tmp_path / "r.sqlite3" and not registry.shared
    assert isinstance(registry._conn, Connection)
    registry.close()


@pytest.mark.e2e
def test_a_daemon_refuses_a_registry_of_a_newer_schema_in_one_line(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    registry = Registry(tmp_path / "state" / "registry.sqlite3")
    with registry.transaction() as conn:
        conn.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                     (SCHEMA_VERSION + 1, "later"))
    registry.close()
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(120) == 3  # starting again would fail the same way
    [failed] = daemon.events("startup_failed")
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this modeld knows" in failed["reason"]
    daemon.stop()


def test_two_versions_served_longer_than_a_swap_is_alerted_once(tmp_path: Path,
                                                                receiver: Receiver) -> None:
    manager = make_manager(tmp_path)
    drop(manager, "v1", artifact_files("v1", created_at=created(1)))
    manager.poll_once()
    alerter = Alerter(AlertingSettings(enabled=True, webhook_url=receiver.url,
                                       dedupe_seconds=0))
    alerter.start()
    member = FleetMember(manager, FleetSettings(split_alarm_seconds=0.01), "a", "http://a",
                         on_lead=lambda _leads: None, alerter=lambda: alerter)
    # another daemon, alive, still on v0
    manager.registry.heartbeat(DaemonRow("b", "h", 2, "http://b", "follower", "v0",
                                         created(1), None, created(1), iso(utc_now())))
    member._heartbeat()  # the split begins now
    time.sleep(0.05)  # it lasts longer than split_alarm_seconds
    member._heartbeat()
    member._heartbeat()  # still split: no second alert
    alerter.stop(5)
    [alert] = [b for b in receiver.bodies if b["kind"] == "fleet_split"]
    assert "v0 by b; v1 by a" in alert["detail"]
    manager.registry.close()


def test_the_rollbacks_are_the_deployments_a_decision_reads(registry_url: str) -> None:
    registry = Registry(registry_url)
    try:
        registry.record_deployment(None, "v1", "2026-11-29T00:00:00+00:00", "first", "auto")
        registry.record_deployment("v1", "v2", "2026-11-29T01:00:00+00:00", "newer", "auto")
        registry.record_deployment("v2", "v1", "2026-11-29T02:00:00+00:00", "operator",
                                   "rollback")
        registry.record_deployment("v1", "v3", "2026-11-29T03:00:00+00:00", "newer", "auto")
        registry.record_deployment("v3", "v1", "2026-11-29T04:00:00+00:00",
                                   f"{ROLLBACK_REASON}v3", "mcp")  # an agent's rollback
        registry.record_deployment("v1", "v4", "2026-11-29T05:00:00+00:00",
                                   "not a rollback from v1", "operator")
        rollbacks = registry.rollbacks()
        assert [(d.from_version, d.actor) for d in rollbacks] == [("v3", "mcp"),
                                                                 ("v2", "rollback")]
        whole = RegistrySnapshot(None, tuple(registry.deployments()))
        assert RegistrySnapshot(None, tuple(rollbacks)).rolled_back_from == \
            whole.rolled_back_from == {"v2", "v3"}
    finally:
        registry.close()
