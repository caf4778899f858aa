"""Explanations on the score API and the recent anomalies: kept in the registry off the
request path, bounded per version and by age, listed by the API, the dashboard and the CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modeld.core.manager import iso, utc_now
from modeld.core.registry import AnomalyRow, Registry
from modeld.daemon.http.app import create_app
from modeld.daemon.process.runtime import Runtime
from tests.helpers import DaemonProcess, artifact_files, records, stamp, write_renamed
from tests.test_api import IN_PROCESS, build_runtime

# far outside the training data (standard normal): every one of these is flagged
ODD = {"timestamp": "2026-11-28T03:12:09Z", "host": "ap-2f-07", "process": "hostapd",
       "message": "wlan0: STA 02:00:00:13:37:01 IEEE 802.11: deauthenticated",
       "features": {"x0": 9.0, "x1": -8.0, "x2": 0.1, "x3": 0.0}}


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(tmp_path)
    write_renamed(rt.manager.models_dir, "v1", artifact_files("v1", created_at=stamp(1)))
    rt.manager.note_moved_in("v1")
    rt.manager.poll_once()
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        yield http


def test_score_with_explain_returns_the_top_contributions(client: TestClient) -> None:
    plain = client.post("/api/v1/score", json={"records": [ODD]}).json()
    assert "explanation" not in plain["results"][0]
    answer = client.post("/api/v1/score", json={"records": [ODD, *records(2)], "explain": True,
                                                "top": 2})
    assert answer.status_code == 200
    first = answer.json()["results"][0]
    explanation = first["explanation"]
    assert first["is_anomaly"] is True and explanation["method"] == "tree_shap"
    assert {c["feature"] for c in explanation["contributions"]} == {"x0", "x1"}
    assert all(c["contribution"] > 0 for c in explanation["contributions"])
    assert explanation["expected_score"] < first["score"]
    assert "x0 = 9" in explanation["summary"] and "x1 = -8" in explanation["summary"]
    for bad, where in (({"explain": "yes"}, '"explain"'), ({"explain": True, "top": 0}, '"top"')):
        refused = client.post("/api/v1/score", json={"records": [ODD], **bad})
        assert refused.status_code == 422 and where in refused.json()["detail"]


def test_anomalies_are_listed_at_once_and_kept_by_the_flush(client: TestClient,
                                                          runtime: Runtime) -> None:
    other = {**ODD, "host": "ap-1f-01"}
    client.post("/api/v1/score", json={"records": [ODD, other, *records(5)]})
    waiting = client.get("/api/v1/anomalies").json()
    assert {a["host"] for a in waiting} == {"ap-2f-07", "ap-1f-01"}
    assert runtime.manager.registry.anomalies() == []  # nothing written on the request path
    runtime.monitors.flush()
    stored = runtime.manager.registry.anomalies()
    assert len(stored) == 2 and stored[0].explanation["contributions"]
    assert stored[0].version == "v1" and stored[0].message == ODD["message"]
    listed = client.get("/api/v1/anomalies", params={"host": "ap-2f-07"}).json()
    assert [a["host"] for a in listed] == ["ap-2f-07"]
    assert listed[0]["explanation"]["summary"]
    assert set(listed[0]) >= {"at", "host", "process", "message", "score", "version",
                              "explanation"}
    later = iso(utc_now() + timedelta(minutes=1))
    assert client.get("/api/v1/anomalies", params={"since": later}).json() == []
    assert len(client.get("/api/v1/anomalies", params={"limit": 1}).json()) == 1
    refused = client.get("/api/v1/anomalies", params={"since": "last tuesday"})
    assert refused.status_code == 422 and "since" in refused.json()["detail"]
    page = client.get("/").text
    assert "Recent anomalies" in page and "ap-2f-07" in page


def test_the_buffer_is_bounded_per_version(client: TestClient, runtime: Runtime) -> None:
    runtime.settings = runtime.settings.model_copy(update={
        "monitoring": runtime.settings.monitoring.model_copy(update={"keep_anomalies": 3})})
    runtime.monitors.settings = runtime.settings.monitoring
    client.post("/api/v1/score", json={"records": [{**ODD, "host": f"ap-{i}"}
                                                   for i in range(10)]})
    assert [a["host"] for a in client.get("/api/v1/anomalies").json()] == [
        "ap-9", "ap-8", "ap-7"]


def _row(version: str, at: str, host: str = "ap") -> AnomalyRow:
    return AnomalyRow(version=version, at=at, timestamp=None, host=host, process="hostapd",
                      message="m", score=0.7, explanation={"summary": "x"})


def test_registry_prunes_to_the_newest_per_version_and_by_age(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite3")
    now = utc_now()
    old = iso(now - timedelta(days=10))
    registry.add_anomalies([_row("v1", old)]
                           + [_row("v1", iso(now + timedelta(seconds=i))) for i in range(5)]
                           + [_row("v2", iso(now))])
    pruned = registry.prune_anomalies(3, iso(now - timedelta(days=7)))
    assert pruned == 3  # the old one, then the two oldest of v1 beyond three
    kept = registry.anomalies(limit=100)
    assert sorted(r.version for r in kept) == ["v1", "v1", "v1", "v2"]
    assert min(r.at for r in kept if r.version == "v1") == iso(now + timedelta(seconds=2))
    registry.close()


def test_an_older_registry_takes_the_mcp_actor_and_keeps_its_history(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE deployments (id INTEGER PRIMARY KEY AUTOINCREMENT, from_version TEXT,
            to_version TEXT, at TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL CHECK
            (actor IN ('auto', 'operator', 'rollback', 'fallback', 'startup')));
        INSERT INTO deployments (from_version, to_version, at, reason, actor)
            VALUES (NULL, 'v1', '2026-11-01', 'first valid version', 'auto');
    """)
    old.close()
    registry = Registry(path)
    registry.record_deployment("v1", "v2", "2026-11-02", "deployed by an agent", "mcp")
    assert [(d.id, d.actor) for d in registry.deployments()] == [(2, "mcp"), (1, "auto")]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        registry._conn.execute("DELETE FROM deployments")
    registry.close()


@pytest.mark.e2e
def test_modeld_anomalies_lists_what_a_real_daemon_kept_across_a_restart(tmp_path: Path
                                                                         ) -> None:
    daemon = DaemonProcess(tmp_path, {"monitoring": {"metrics_flush_interval": 60}})
    write_renamed(daemon.models_dir, "v1", artifact_files("v1", created_at=stamp(1)))
    daemon.start()
    daemon.wait_deployed("v1")
    assert daemon.post("/api/v1/score", {"records": [ODD, *records(3)]}).status_code == 200
    assert daemon.stop() == 0  # the shutdown flush writes what waited

    daemon.start()

    def cli(*args: str) -> Any:
        done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "anomalies", *args,
                               "--config", str(daemon.config_path)],
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    rows = json.loads(cli("--host", "ap-2f-07", "--json"))
    assert len(rows) == 1 and rows[0]["version"] == "v1"
    assert np.isclose(sum(c["contribution"] for c in rows[0]["explanation"]["contributions"]),
                      rows[0]["score"] - rows[0]["explanation"]["expected_score"], atol=1e-3)
    table = cli()
    assert "ap-2f-07" in table and "x0 = 9" in table
    assert json.loads(cli("--host", "nobody", "--json")) == []
    daemon.stop()
