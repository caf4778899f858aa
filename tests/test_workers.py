"""Workers on one host (``api.workers``, ``modeld run --workers N``): real processes.

A control process and two serving workers on one port (SO_REUSEPORT): both serve, a deploy
through either reaches both, drift and /metrics count what both scored, a killed worker is
restarted while the other keeps the port, a reload reaches every worker, SIGTERM stops all.
Each new HTTP connection is one the kernel hands to either worker (by its source port), so
asking often enough over fresh connections reaches both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import generate_latest

from modeld.daemon.jobs.handoff import pack, unpack
from modeld.daemon.process.metrics import DaemonMetrics
from tests.helpers import DaemonProcess, artifact_files, records, stamp, write_renamed

WORKERS = 2
START = 180  # seconds: three processes import the daemon on a loaded machine


def _healthz_pids(daemon: DaemonProcess, tries: int = 60) -> dict[int, dict[str, Any]]:
    """/healthz of each worker that answered one of ``tries`` fresh connections."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        answer = daemon.get("/healthz").json()
        seen[answer["pid"]] = answer
        if len(seen) == WORKERS:
            break
    return seen


def _workers(daemon: DaemonProcess) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = daemon.status()["workers"]
    return workers


def _serving(daemon: DaemonProcess, version: str) -> bool:
    workers = _workers(daemon)
    return len(workers) == WORKERS and all(
        w["ready"] and w["alive"] and w.get("deployed_version") == version for w in workers)


def _metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def _score(daemon: DaemonProcess, n: int) -> dict[str, Any]:
    answer = daemon.post("/api/v1/score", {"records": records(n)})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
def pool(tmp_path: Path) -> Any:
    daemon = DaemonProcess(tmp_path, {"monitoring": {"drift_interval": 3600}})
    daemon.models_dir.mkdir(parents=True)
    yield daemon
    if daemon.proc is not None:
        daemon.stop()


def test_a_handed_message_keeps_its_arrays_and_refuses_other_dtypes() -> None:
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    flags = np.array([True, False, True])
    kind, meta, arrays = unpack(pack("batch", {"n": 3}, [features, flags]))
    assert (kind, meta) == ("batch", {"n": 3})
    assert np.array_equal(arrays[0], features) and np.array_equal(arrays[1], flags)
    with pytest.raises(ValueError, match="dtype object"):
        unpack(pack("batch", {}, [np.array(["x"], dtype=object)]))
    with pytest.raises(ValueError, match="cut short"):
        unpack(pack("batch", {}, [features])[:-8])
    with pytest.raises(ValueError, match="holds"):
        unpack(pack("batch", {}, [features]) + b"\0")


def test_metrics_of_workers_sum_counters_and_keep_gauges_per_worker() -> None:
    control, worker = DaemonMetrics(), DaemonMetrics()
    control.requests.labels("ok").inc(2)
    worker.requests.labels("ok").inc(5)
    worker.latency.observe(0.001)
    control.set_deployed("v2", "v1")
    worker.set_deployed("v2", "v1")
    text = control.exposition([("0", generate_latest(worker.registry).decode())]).decode()
    lines = text.splitlines()
    assert 'modeld_score_requests_total{outcome="ok"} 7.0' in lines
    assert "modeld_score_request_seconds_count 1.0" in lines
    assert 'modeld_deployed_model_info{fallback="v1",version="v2"} 1.0' in lines
    assert 'modeld_deployed_model_info{fallback="v1",version="v2",worker="0"} 1.0' in lines
    assert not [line for line in lines if "_created" in line]
    assert sum(line.startswith("# TYPE modeld_score_requests_total ") for line in lines) == 1


@pytest.mark.e2e
def test_workers_share_the_port_follow_deploys_and_are_counted_together(
        pool: DaemonProcess) -> None:
    pool.start(args=["--workers", str(WORKERS)])
    pool.wait_for(lambda: len(_healthz_pids(pool)) == WORKERS, START, "both workers to answer")
    control = pool.proc
    assert control is not None
    pids = {w["pid"] for w in _workers(pool)}
    assert len(pids) == WORKERS and control.pid not in pids
    assert set(_healthz_pids(pool)) == pids  # they, not the control process, hold the port
    # READY (and the "ready" line beside it) once every worker serves, not before
    lines = [json.loads(line) for line in pool.logs().splitlines() if line.startswith("{")]
    order = [e["event"] for e in lines if e["event"] == "worker_serving"
             or (e["event"] == "ready" and e["logger"] == "modeld.main")]
    assert order == ["worker_serving"] * WORKERS + ["ready"]

    write_renamed(pool.models_dir, "first", artifact_files("v1", created_at=stamp(1)))
    pool.wait_for(lambda: _serving(pool, "v1"), 60, "every worker to serve v1 (imported once)")
    write_renamed(pool.models_dir, "second", artifact_files("v2", seed=2, created_at=stamp(2)))
    pool.wait_for(lambda: any(m["version"] == "v2" for m in pool.get("/api/v1/models").json()),
                  60, "v2 imported (older: not deployed)")

    # a deploy through whichever worker answers acts once, on the control process
    answer = pool.post("/api/v1/models/v2/deploy")
    assert answer.status_code == 200, answer.text
    pool.wait_for(lambda: _serving(pool, "v2"), 10, "every worker to follow the deploy")
    operator = [d for d in pool.get("/api/v1/deployments").json() if d["actor"] == "operator"]
    assert [(d["from_version"], d["to_version"]) for d in operator] == [("v1", "v2")]
    assert all(w["fallback_version"] == "v1" for w in _workers(pool))
    # one swap in the control process, one in each worker, each line saying which
    assert sorted(str(e.get("worker")) for e in pool.events("model_swapped")
                  if e["new"] == "v2") == ["0", "1", "None"]
    for _ in range(20):
        assert pool.get("/readyz").json()["deployed_version"] == "v2"
    assert len(pool.events("model_imported")) == 2  # the control process imports, once each

    # scored by both workers (fresh connections), seen by the control's monitors and metrics
    requests, per_request = 40, 3
    for _ in range(requests):
        assert _score(pool, per_request)["model_version"] == "v2"

    def counted() -> bool:
        text = pool.get("/metrics").text
        return (_metric(text, 'modeld_score_requests_total{outcome="ok"}') == requests
                and _metric(text, 'modeld_records_scored_total{version="v2"}')
                == requests * per_request)

    pool.wait_for(counted, 10, "/metrics to count every worker's requests")
    text = pool.get("/metrics").text
    for index in range(WORKERS):  # each process's own gauges, by worker
        assert f'process_start_time_seconds{{worker="{index}"}}' in text
    pool.wait_for(lambda: pool.get("/api/v1/drift").json()["reports"]["v2"]["records_seen"]
                  == requests * per_request, 10, "drift to see every worker's records")

    answer = pool.post("/api/v1/models/rollback")  # acted once too, followed by both
    assert answer.status_code == 200, answer.text
    pool.wait_for(lambda: _serving(pool, "v1"), 10, "every worker to follow the rollback")
    assert [d["to_version"] for d in pool.get("/api/v1/deployments").json()
            if d["actor"] == "rollback"] == ["v1"]

    shown = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "status", "--config",
                            str(pool.config_path)], capture_output=True, text=True, check=True)
    table = shown.stdout.partition("workers:\n")[2].splitlines()
    assert table[0].split()[:3] == ["INDEX", "PID", "ALIVE"]
    assert {int(row.split()[1]) for row in table[1:]} == pids


@pytest.mark.e2e
def test_a_killed_worker_comes_back_a_reload_reaches_all_and_sigterm_stops_all(
        pool: DaemonProcess) -> None:
    pool.start(args=["--workers", str(WORKERS)])
    pool.wait_for(lambda: len(_healthz_pids(pool)) == WORKERS, START, "both workers to answer")
    write_renamed(pool.models_dir, "first", artifact_files("v1", created_at=stamp(1)))
    pool.wait_for(lambda: _serving(pool, "v1"), 60, "every worker to serve v1")

    victim = _workers(pool)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    pool.wait_for(lambda: pool.events("worker_exited"), 10, "the control to see it gone")
    for _ in range(30):  # the other worker holds the port meanwhile
        assert _score(pool, 2)["model_version"] == "v1"
    pool.wait_for(lambda: _serving(pool, "v1") and _workers(pool)[0]["restarts"] == 1, START,
                  "the killed worker to be restarted and serve v1")
    assert _workers(pool)[0]["pid"] != victim["pid"]
    exited = pool.events("worker_exited")
    assert [(e["worker"], e["pid"], e["reason"]) for e in exited] == [
        (0, victim["pid"], "killed by SIGKILL")]

    # SIGHUP to the control process: it reloads, then every worker does
    config = pool.config()
    config["model"] = {"anomaly_threshold": 0.9}
    pool.write_config(config)
    pool.signal(signal.SIGHUP)
    pool.wait_for(lambda: all(w.get("config_generation") == 2 for w in _workers(pool)), 20,
                  "every worker to reload")
    answers = _healthz_pids(pool)
    assert len(answers) == WORKERS
    assert {a["config_generation"] for a in answers.values()} == {2}

    pids = [w["pid"] for w in _workers(pool)]
    assert pool.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert pool.events("workers_stopped")[0]["count"] == WORKERS
    assert not pool.events("worker_stop_timed_out")
    with pytest.raises(httpx.ConnectError):
        httpx.get(pool.base + "/healthz", timeout=5)


@pytest.mark.e2e
def test_a_port_something_else_holds_is_refused_not_shared(pool: DaemonProcess) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", pool.port))
        other.listen()
        pool.start(wait_ready=False, args=["--workers", str(WORKERS)])
        assert pool.proc is not None
        pool.proc.wait(120)
    assert pool.stop() == 1
    failed = pool.events("startup_failed")
    assert len(failed) == 1 and "in use" in failed[0]["reason"]
    assert not pool.events("worker_started")
