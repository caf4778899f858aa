"""Workers on one host (``api.workers``, ``modeld run --workers N``): real processes.

A control process and two serving workers on one port (SO_REUSEPORT): both serve, a deploy
through either reaches both, drift and /metrics count what both scored, a killed worker is
restarted while the other keeps the port, a reload reaches every worker, SIGTERM stops all;
a worker's explanations carry the control process's reference words, and its fallback is
alerted by the control process.
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

from modeld.core.explain import ReferenceWords
from modeld.daemon.jobs.handoff import pack, pack_words, unpack, unpack_words
from modeld.daemon.process.metrics import DaemonMetrics
from tests.helpers import (
    FEATURES,
    DaemonProcess,
    Receiver,
    artifact_files,
    records,
    stamp,
    train_forest,
    write_renamed,
)

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


def _start(daemon: DaemonProcess) -> None:
    """Start the control process with WORKERS workers and wait until each answers."""
    daemon.start(args=["--workers", str(WORKERS)])
    daemon.wait_for(lambda: len(_healthz_pids(daemon)) == WORKERS, START,
                    "both workers to answer")


def _serve(daemon: DaemonProcess, name: str, files: dict[str, bytes], version: str,
           what: str = "") -> None:
    """Rename an artifact into the models folder and wait until every worker serves it."""
    write_renamed(daemon.models_dir, name, files)
    daemon.wait_for(lambda: _serving(daemon, version), 60,
                    f"every worker to serve {version}{what}")


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


def test_handed_reference_words_say_what_the_control_process_would() -> None:
    rng = np.random.default_rng(3)
    words = ReferenceWords(FEATURES, [np.quantile(rng.normal(size=500), np.linspace(0, 1, 50)),
                                      None, np.array([0.0, 0.0, 1.0]), None])
    meta, arrays = pack_words({"v1": words})
    _kind, meta, arrays = unpack(pack("follow", meta, arrays))  # as the link carries them
    handed = unpack_words(meta, arrays)["v1"]
    assert handed.feature_names == words.feature_names
    for index, value in [(0, -3.0), (0, 0.1), (1, 2.0), (2, 1.0), (3, float("nan"))]:
        assert handed.text(index, value) == words.text(index, value)
    assert "below the reference's 1st percentile" in handed.text(0, -9.0)


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
    _start(pool)
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

    _serve(pool, "first", artifact_files("v1", created_at=stamp(1)), "v1", " (imported once)")
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
    _start(pool)
    _serve(pool, "first", artifact_files("v1", created_at=stamp(1)), "v1")

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


def _explained_anomaly(daemon: DaemonProcess) -> dict[str, Any]:
    record = {"host": "ap-odd", "features": dict.fromkeys(FEATURES, 6.0)}
    answer = daemon.post("/api/v1/score", {"records": [record], "explain": True, "top": 4})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["results"][0]
    assert result["is_anomaly"]
    return result


@pytest.mark.e2e
def test_a_workers_explanation_has_the_control_processs_reference_words(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, {"monitoring": {"drift_interval": 3600,
                                                     "baseline_records": 200}})
    daemon.models_dir.mkdir(parents=True)
    _start(daemon)
    try:
        _serve(daemon, "first", artifact_files("v1", created_at=stamp(1)), "v1")
        # no artifact reference: none while the baseline collects, in a worker as in one process
        before = _explained_anomaly(daemon)["explanation"]["contributions"]
        assert not any("reference" in c["text"] for c in before)
        for _ in range(3):  # the baseline (200), collected by the control from both workers
            _score(daemon, 100)
        daemon.wait_for(lambda: all("reference" in c["text"] for c in
                                    _explained_anomaly(daemon)["explanation"]["contributions"]),
                        10, "the collected baseline's words to reach the workers")
        for _ in range(10):  # fresh connections: whichever worker answers says the same
            answered = _explained_anomaly(daemon)
            texts = [c["text"] for c in answered["explanation"]["contributions"]]
            assert all("reference's" in t and "percentile" in t for t in texts), texts
        # the control process explains the same records it was handed with its own words
        daemon.wait_for(lambda: any(a["host"] == "ap-odd" and "reference" in
                                    a["explanation"]["summary"]
                                    for a in daemon.get("/api/v1/anomalies").json()), 10,
                        "the control process's recent anomalies")
        kept = next(a for a in daemon.get("/api/v1/anomalies").json() if a["host"] == "ap-odd")
        ours = answered["explanation"]
        theirs = kept["explanation"]
        shown = len(theirs["contributions"])
        assert shown > 0
        assert ([(c["feature"], c["text"]) for c in ours["contributions"][:shown]]
                == [(c["feature"], c["text"]) for c in theirs["contributions"]])
        assert ours["summary"] == theirs["summary"]
    finally:
        daemon.stop()


class SentinelRaisingForest:
    """A fault we cannot cause with a real estimator: a model that raises on one input (x0
    above 100), after its import checks passed. Unpickled by the daemon's processes from this
    module (``security.allow_unbundled_estimators``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.n_features_in_ = inner.n_features_in_
        self.offset_ = inner.offset_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.inner.predict(self._checked(x))

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        return self.inner.score_samples(self._checked(x))

    @staticmethod
    def _checked(x: np.ndarray) -> np.ndarray:
        if (np.asarray(x)[:, 0] > 100).any():
            raise FloatingPointError("boom")
        return x


@pytest.mark.e2e
def test_a_workers_fallback_is_alerted_once_by_the_control_process(
        tmp_path: Path, receiver: Receiver) -> None:
    daemon = DaemonProcess(tmp_path, {
        "monitoring": {"drift_interval": 3600,
                       "alerting": {"webhook_url": receiver.url,
                                    "backoff_initial_seconds": 0.05}},
        "security": {"isolate_first_load": False, "allow_unbundled_estimators": True}})
    daemon.models_dir.mkdir(parents=True)
    _start(daemon)
    try:
        _serve(daemon, "first", artifact_files("v1", created_at=stamp(2)), "v1")
        _serve(daemon, "second", artifact_files(
            "v2", model=SentinelRaisingForest(train_forest(seed=3)), created_at=stamp(1)), "v2")

        poisoned = {"features": {**dict.fromkeys(FEATURES, 0.0), "x0": 1000.0}}
        answer = daemon.post("/api/v1/score", {"records": [poisoned]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "v1"  # the worker's fallback answered

        daemon.wait_for(lambda: _metric(daemon.get("/metrics").text,
                                        "modeld_fallback_uses_total") == 1, 10,
                        "the worker's shipment with its fallback")
        daemon.wait_for(lambda: any(b.get("kind") == "fallback_used" for b in receiver.bodies),
                        10, "the control process to alert the worker's fallback")
        alerts = [b for b in receiver.bodies if b.get("kind") == "fallback_used"]
        assert len(alerts) == 1
        assert alerts[0]["version"] == "v2" and "boom" in alerts[0]["detail"]
        logged = daemon.events("fallback_used")  # by the worker that fell back, once
        assert len(logged) == 1 and logged[0].get("worker") in range(WORKERS)
    finally:
        daemon.stop()
