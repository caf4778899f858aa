"""End-to-end: a real `modeld run` process plays against a simulated training service."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import (
    DaemonProcess,
    artifact_files,
    records,
    stamp,
    with_manifest,
    write_in_place,
    write_renamed,
)

pytestmark = pytest.mark.e2e


def transfers(daemon: DaemonProcess) -> list[dict]:
    return daemon.get("/api/v1/transfer-history").json()


def test_producers_of_every_kind_are_imported_once_and_newest_serves(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    assert daemon.get("/readyz").status_code == 503
    assert daemon.status()["deployed_version"] is None

    # 1. the existing service: model, then metadata, in place, slowly (metadata last)
    write_in_place(daemon.models_dir / "first", artifact_files("v1", created_at=stamp(1)),
                   order=["model.joblib", "metadata.json"], pause=0.3)
    daemon.wait_deployed("v1")
    assert daemon.get("/readyz").status_code == 200

    # 2. metadata first, then a model written in two halves with a pause longer than settle:
    # a failed load on a folder that changes again is retried, and it is imported once.
    write_in_place(daemon.models_dir / "second", artifact_files("v2", seed=2,
                                                                created_at=stamp(0.9)),
                   order=["metadata.json", "model.joblib"], chunk_pause=1.2)
    daemon.wait_deployed("v2")

    # 3. renamed into place, 4. _SUCCESS marker, 5. manifest
    write_renamed(daemon.models_dir, "third", artifact_files("v3", seed=3,
                                                              created_at=stamp(0.8)))
    daemon.wait_deployed("v3")
    marker = artifact_files("v4", seed=4, created_at=stamp(0.7))
    marker["_SUCCESS"] = b""
    write_in_place(daemon.models_dir / "fourth", marker, pause=0.05)
    daemon.wait_deployed("v4")
    write_in_place(daemon.models_dir / "fifth",
                   with_manifest(artifact_files("v5", seed=5, created_at=stamp(0.6))),
                   order=["metadata.json", "model.joblib"], pause=0.3)
    daemon.wait_deployed("v5")

    # an older artifact is imported but not deployed
    write_renamed(daemon.models_dir, "older", artifact_files("v0", seed=6,
                                                              created_at=stamp(2)))
    daemon.wait_for(lambda: any(m["version"] == "v0" for m in daemon.get(
        "/api/v1/models").json()), what="v0 imported")
    time.sleep(0.5)
    assert daemon.status()["deployed_version"] == "v5"
    assert daemon.status()["fallback_version"] == "v4"

    # work in progress is never touched
    write_in_place(daemon.models_dir / "_tmp_sixth", artifact_files("v6", seed=6))
    write_in_place(daemon.models_dir / ".hidden", artifact_files("v7", seed=7))
    time.sleep(2.5)
    versions = {m["version"]: m for m in daemon.get("/api/v1/models").json()}
    assert set(versions) == {"v0", "v1", "v2", "v3", "v4", "v5"}
    for row in versions.values():
        assert {"version", "status", "quality_score", "created_at", "imported_at"} <= set(row)
    assert versions["v5"]["status"] == "deployed"
    assert versions["v0"]["status"] == "available"

    # exactly once: one completed transfer per version, even after several scans
    completed = [t["version"] for t in transfers(daemon) if t["status"] == "completed"]
    assert sorted(completed) == ["v0", "v1", "v2", "v3", "v4", "v5"]
    history = daemon.get("/api/v1/deployments").json()
    assert [d["to_version"] for d in history] == ["v5", "v4", "v3", "v2", "v1"]
    assert all(d["actor"] == "auto" for d in history)

    # scoring answers from the deployed model
    answer = daemon.post("/api/v1/score", {"records": records(3)}).json()
    assert answer["model_version"] == "v5" and len(answer["results"]) == 3


def test_bad_artifacts_never_displace_the_deployed_model(daemon: DaemonProcess) -> None:
    daemon.start()
    write_renamed(daemon.models_dir, "good", artifact_files("good", created_at=stamp(1)))
    daemon.wait_deployed("good")

    bad = {
        # seeded: some random bytes unpickle into a request for gigabytes, refused as
        # "ran out of memory" (also a rejection, but not the one this case checks)
        "random-bytes": {**artifact_files("rb", created_at=stamp(0)),
                         "model.joblib": random.Random(0).randbytes(2000)},
        "low-quality": artifact_files("lq", metrics={"f1_score": 0.3, "roc_auc": 0.5,
                                                     "precision": 0.2, "recall": 0.3},
                                      created_at=stamp(0)),
        "width-mismatch": artifact_files("wm", feature_names=["a", "b"], created_at=stamp(0)),
        "broken-json": {**artifact_files("bj"), "metadata.json": b"{not json"},
    }
    for name, files in bad.items():
        write_renamed(daemon.models_dir, name, files)
    daemon.wait_for(lambda: len([t for t in transfers(daemon) if t["status"] == "rejected"])
                    == 4, what="four rejections")
    time.sleep(2.5)  # more scans happen; a stable invalid folder is not re-tried
    rejected = [t for t in transfers(daemon) if t["status"] == "rejected"]
    assert len(rejected) == 4
    reasons = {Path(t["source_path"]).name: t["detail"] for t in rejected}
    assert "load failed: model.joblib" in reasons["random-bytes"]  # from the canary child
    assert "quality score" in reasons["low-quality"]
    assert "2 feature names" in reasons["width-mismatch"]
    assert "not valid JSON" in reasons["broken-json"]
    assert daemon.status()["deployed_version"] == "good"
    assert daemon.get("/api/v1/models/lq").json()["status"] == "rejected"

    # the rejected folder is re-considered when its content changes
    write_in_place(daemon.models_dir / "low-quality",
                   artifact_files("lq", seed=9, created_at=stamp(0)), pause=0.05)
    daemon.wait_deployed("lq")


def test_restart_serves_the_same_state_and_recovers_from_corrupt_files(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    daemon.models_dir.mkdir(parents=True)
    daemon.start()
    write_renamed(daemon.models_dir, "a", artifact_files("va", created_at=stamp(2)))
    daemon.wait_deployed("va")
    write_renamed(daemon.models_dir, "b", artifact_files("vb", seed=1, created_at=stamp(1)))
    daemon.wait_deployed("vb")
    assert daemon.stop() == 0

    daemon.start()
    daemon.wait_deployed("vb", timeout=5)
    assert daemon.status()["fallback_version"] == "va"
    assert len(daemon.get("/api/v1/deployments").json()) == 2
    assert daemon.stop() == 0

    # corrupt the deployed version's stored model while stopped
    stored = tmp_path / "state" / "store" / "versions" / "vb" / "model.joblib"
    stored.write_bytes(b"garbage")
    daemon.start()
    daemon.wait_deployed("va", timeout=5)
    newest = daemon.get("/api/v1/deployments").json()[0]
    assert newest["actor"] == "fallback" and newest["from_version"] == "vb"
    assert "checksum" in newest["reason"]
    assert daemon.stop() == 0


def test_sighup_reloads_and_refuses_bad_config_sigterm_stops(daemon: DaemonProcess) -> None:
    daemon.start()
    assert daemon.status()["config_generation"] == 1
    config = daemon.config()
    config["integration"]["auto_deploy"] = False
    daemon.write_config(config)
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.status()["config_generation"] == 2, what="reload")
    assert daemon.status()["auto_deploy"] is False

    write_renamed(daemon.models_dir, "x", artifact_files("vx"))
    daemon.wait_for(lambda: daemon.get("/api/v1/models").json(), what="import")
    assert daemon.status()["deployed_version"] is None  # auto_deploy off now

    daemon.config_path.write_text("integration:\n  settle_seconds: -5\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda: daemon.status()["last_reload"]["generation"] == 3, what="refusal")
    status = daemon.status()
    assert status["last_reload"]["ok"] is False
    assert "integration.settle_seconds" in status["last_reload"]["error"]
    assert status["config_generation"] == 2
    assert status["auto_deploy"] is False

    # a stream of scoring requests keeps flowing through SIGTERM until the process stops
    started = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert daemon.events("stopped")


def test_wrong_config_stops_startup_with_one_line_and_status_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("api:\n  port: not-a-port\n")
    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "api.port" in lines[0] and "Traceback" not in done.stderr

    cfg.write_text("api:\n  colour: blue\n")
    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "api.colour: unknown key" in done.stderr

    env = {**os.environ, "MODELD_API__PORT": "99999"}
    done = subprocess.run([sys.executable, "-m", "modeld.daemon.cli", "run"], capture_output=True,
                          text=True, timeout=30, env=env, cwd=tmp_path)
    assert done.returncode == 2 and "api.port" in done.stderr


def test_missing_models_folder_is_waited_for(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)  # the folder does not exist yet
    daemon.start()
    time.sleep(0.5)
    assert daemon.events("models_folder_missing")
    daemon.models_dir.mkdir(parents=True)
    write_renamed(daemon.models_dir, "late", artifact_files("late"))
    daemon.wait_deployed("late", timeout=15)
    assert daemon.stop() == 0


def test_requests_in_flight_survive_a_swap(daemon: DaemonProcess) -> None:
    daemon.start()
    write_renamed(daemon.models_dir, "a", artifact_files("sa", created_at=stamp(1)))
    daemon.wait_deployed("sa")
    seen: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        import httpx

        with httpx.Client(base_url=daemon.base, timeout=10) as http:
            while not stop.is_set():
                r = http.post("/api/v1/score", json={"records": records(5)})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.append(r.json()["model_version"])

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(0.3)
        write_renamed(daemon.models_dir, "b", artifact_files("sb", seed=1, created_at=stamp(0)))
        daemon.wait_deployed("sb")
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert set(seen) == {"sa", "sb"}
    assert seen.index("sb") > 0 and "sa" not in seen[seen.index("sb"):]


def test_folders_renamed_in_from_inside_and_outside_the_models_folder_need_no_settle(
    tmp_path: Path,
) -> None:
    """A rename proves a folder complete, whether its temporary folder was inside `models/`
    (both halves of the rename are watched) or elsewhere on the filesystem (only the second
    half is). With a settle period far longer than the test waits, only that proof imports."""
    daemon = DaemonProcess(tmp_path, {"integration": {"settle_seconds": 60}})
    daemon.models_dir.mkdir(parents=True)
    try:
        daemon.start()
        write_renamed(daemon.models_dir, "inside", artifact_files("v1", created_at=stamp(1)))
        daemon.wait_deployed("v1", timeout=40)
        outside = tmp_path / "producer-scratch" / "outside"
        write_in_place(outside, artifact_files("v2", seed=2, created_at=stamp(0)))
        os.rename(outside, daemon.models_dir / "outside")
        daemon.wait_deployed("v2", timeout=40)
    finally:
        daemon.stop()
