"""A fleet: real daemons on one real PostgreSQL registry, and the faults it must survive.

Each test gets a database of its own on the session's cluster (tests/postgres.py) and starts
real ``modeld run`` processes that share one training folder, as hosts of a fleet share the
training service's.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.helpers import DaemonProcess, artifact_files, records, stamp, write_renamed
from tests.postgres import PostgresCluster

pytestmark = pytest.mark.e2e


class Fleet:
    """Daemons on one registry database and one training folder."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.models = root / "training" / "models"
        self.models.mkdir(parents=True)
        self.members: dict[str, DaemonProcess] = {}

    def daemon(self, name: str, env: dict[str, str] | None = None,
               **fleet: Any) -> DaemonProcess:
        (self.root / name).mkdir()
        proc = DaemonProcess(self.root / name, {
            "storage": {"registry_url": self.url},
            "integration": {"training_service_path": str(self.root / "training")},
            "fleet": {"heartbeat_interval": 1, "takeover_interval": 0.5, **fleet},
        }, env=env)
        self.members[name] = proc
        return proc

    def start(self, *names: str, **fleet: Any) -> list[DaemonProcess]:
        return [self.daemon(name, **fleet).start() for name in names]

    def drop(self, version: str, seed: int = 0, days_ago: float = 0.0) -> None:
        write_renamed(self.models, version, artifact_files(
            version, seed=seed, created_at=stamp(days_ago=days_ago)))

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, params or None)
            return list(cursor) if cursor.description else []

    def all_serve(self, version: str, timeout: float = 60) -> None:
        for proc in self.live():
            proc.wait_deployed(version, timeout)

    def live(self) -> list[DaemonProcess]:
        return [p for p in self.members.values() if p.proc is not None]


def importer(procs: list[DaemonProcess]) -> DaemonProcess:
    """The one elected importer among ``procs`` (waits for the election)."""
    found: list[DaemonProcess] = []

    def elected() -> bool:
        found[:] = [p for p in procs if p.status()["fleet"]["role"] == "importer"]
        return len(found) == 1

    procs[0].wait_for(elected, 60, "one importer to be elected")
    return found[0]


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    group = Fleet(tmp_path, pg_url)
    yield group
    for proc in group.live():
        proc.stop()


def test_one_importer_imports_once_and_every_daemon_follows(fleet: Fleet) -> None:
    a, b = fleet.start("a", "b", reconcile_interval=2)
    lead = importer([a, b])
    follower = b if lead is a else a
    fleet.drop("v1", seed=1, days_ago=2)
    fleet.all_serve("v1")
    fleet.drop("v2", seed=2, days_ago=1)
    fleet.all_serve("v2")
    # imported once, fleet-wide, by the importer; the follower loaded the registry's copy
    assert fleet.sql("SELECT version, COUNT(*) FROM transfers WHERE status = 'completed' "
                     "GROUP BY version ORDER BY version") == [("v1", 1), ("v2", 1)]
    assert {e["version"] for e in follower.events("version_fetched")} == {"v1", "v2"}
    assert not follower.events("model_imported")

    # a deploy or rollback through any daemon's API is followed by every other
    assert follower.post("/api/v1/models/v1/deploy").status_code == 200
    fleet.all_serve("v1")
    assert lead.post("/api/v1/models/rollback").status_code == 200
    fleet.all_serve("v2")
    refused = follower.post("/api/v1/models/import", {"path": "v1"})
    assert refused.status_code == 409 and "does not import" in refused.json()["detail"]

    # who serves what, from either daemon, the API and the CLI
    view = follower.get("/api/v1/fleet").json()
    assert sorted(view["versions"]["v2"]) == sorted(p.status()["fleet"]["id"] for p in (a, b))
    assert view["alarm"] is None and {m["role"] for m in view["members"]} == {"importer",
                                                                             "follower"}
    panel = lead.get("/api/v1/dashboard/sections").json()["sections"]["fleet"]
    assert all(m["id"] in panel for m in view["members"]) and "(this one)" in panel
    shown = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "fleet", "--config",
                            str(a.config_path)], capture_output=True, text=True, check=True)
    assert shown.stdout.count("v2") >= 2 and "importer" in shown.stdout

    # a lost notification: the deployment is recorded with the NOTIFY trigger off, so no
    # daemon is told; the one that deployed serves it, the other's reconcile catches it
    fleet.sql("ALTER TABLE deployments DISABLE TRIGGER deployments_notify")
    try:
        assert lead.post("/api/v1/models/v1/deploy").status_code == 200
        follower.wait_deployed("v1", 60)
    finally:
        fleet.sql("ALTER TABLE deployments ENABLE TRIGGER deployments_notify")
    assert any(e.get("reason", "").startswith("following the registry")
               for e in follower.events("model_swapped") if e.get("new") == "v1")


def test_the_importer_killed_mid_import_is_replaced_and_the_import_completes_once(
        fleet: Fleet) -> None:
    # a is the importer and is SIGKILLed inside its import's commit (the crash point sits
    # where the version is renamed into its store, inside the registry transaction)
    a = fleet.daemon("a", env={"MODELD_TEST_CRASH_AT": "validated"}).start()
    assert importer([a]) is a
    b = fleet.daemon("b").start()
    fleet.drop("v1")
    assert a.proc is not None
    a.proc.wait(120)
    a.kill()  # reap it
    b.wait_for(lambda: b.status()["fleet"]["role"] == "importer", 60, "b to take over")
    b.wait_deployed("v1", 60)
    assert fleet.sql("SELECT version, status FROM versions") == [("v1", "available")]
    assert fleet.sql("SELECT COUNT(*) FROM transfers WHERE status = 'completed'") == [(1,)]
    # its files, whole: model.joblib and metadata.json, and its bundle (one digest's folder)
    paths = [p for (p,) in fleet.sql("SELECT path FROM version_files WHERE version = 'v1'")]
    assert sorted(p for p in paths if p.startswith("versions/")) == [
        "versions/v1/metadata.json", "versions/v1/model.joblib"]
    bundle = {p.split("/")[1] for p in paths if p.startswith("bundles/")}
    [digest] = fleet.sql("SELECT digest FROM bundles WHERE version = 'v1'")[0]
    assert bundle == {digest}
    assert f"bundles/{digest}/bundle.json" in paths
    # the daemon that died comes back as a follower of what b imported
    a.env.pop("MODELD_TEST_CRASH_AT")
    a.start()
    a.wait_deployed("v1", 60)
    assert a.status()["fleet"]["role"] == "follower"


def test_postgresql_away_and_restarted_under_scoring_load(fleet: Fleet,
                                                          pg_cluster: PostgresCluster) -> None:
    a, b = fleet.start("a", "b")
    fleet.drop("v1", seed=1, days_ago=2)
    fleet.all_serve("v1")
    fleet.drop("v2", seed=2, days_ago=1)
    fleet.all_serve("v2")

    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        body = {"records": records(4)}
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                for proc in (a, b):
                    try:
                        answer = client.post(proc.base + "/api/v1/score", json=body,
                                             headers=proc.headers())
                        if answer.status_code != 200:
                            failures.append(f"{answer.status_code} {answer.text[:200]}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    served[0] += 1

    scoring = threading.Thread(target=load)
    scoring.start()
    try:
        pg_cluster.stop()
        try:
            for proc in (a, b):
                proc.wait_for(lambda p=proc: not p.status()["fleet"]["registry_reachable"],
                              60, "the daemon to notice the registry is away")
                ready = proc.get("/readyz")
                assert ready.status_code == 200 and "unreachable" in ready.json()["registry"]
            shown = subprocess.run(
                [sys.executable, "-m", "modeld.daemon.cli", "status", "--config",
                 str(a.config_path)], capture_output=True, text=True, check=True)
            assert '"registry_reachable": false' in shown.stdout
            assert a.get("/api/v1/models").status_code == 503  # what needs the database waits
        finally:
            pg_cluster.start()
        for proc in (a, b):
            proc.wait_for(lambda p=proc: p.status()["fleet"]["registry_reachable"], 60,
                          "the daemon to reach the registry again")
        assert b.post("/api/v1/models/v1/deploy").status_code == 200
        fleet.all_serve("v1")

        pg_cluster.restart()  # a quick restart, while scoring goes on
        lead = importer([a, b])
        assert lead.post("/api/v1/models/v2/deploy").status_code == 200
        fleet.all_serve("v2")
    finally:
        stop.set()
        scoring.join()
    assert served[0] > 0 and failures == []


def test_a_daemon_started_while_another_deploys_serves_what_was_deployed(fleet: Fleet) -> None:
    [a] = fleet.start("a")
    for i, version in enumerate(("v1", "v2", "v3")):
        fleet.drop(version, seed=i, days_ago=3 - i)
        a.wait_deployed(version, 60)
    c = fleet.daemon("c").start(wait_ready=False)
    for version in ("v1", "v2", "v1"):  # deployments while c opens the registry and loads
        assert a.post(f"/api/v1/models/{version}/deploy").status_code == 200
    c.wait_for(lambda: c.get("/healthz").status_code == 200, 60, "c to answer")
    c.wait_deployed("v1", 60)
    assert c.status()["fleet"]["role"] == "follower"
    view = a.get("/api/v1/fleet").json()
    a.wait_for(lambda: set(a.get("/api/v1/fleet").json()["versions"]) == {"v1"}, 30,
               "both heartbeats to show v1")
    assert len(view["members"]) == 2
