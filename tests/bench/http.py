"""Scoring throughput over HTTP against a real daemon, as a ratio of the HTTP stack's floor.

Run from the repository root: ``python tests/bench/http.py [--seconds 10]``.

It starts `modeld run` on temporary folders with one deployed IsolationForest (100 trees), then
drives it from a separate client process on loopback over one keep-alive connection: for
requests of 1 and of 100 records, the same body is sent to ``POST /api/v1/noop`` (reads and
parses the body, answers ``{}``: the floor of the HTTP stack) and to ``POST /api/v1/score``.
Printed: requests/s, records/s, p50/p99 latency, and scoring as a ratio of the floor.
"""

# ruff: noqa: I001  (the path must be set before the imports below)
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This file is named http.py: its own folder must not shadow the standard library's http.
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from sklearn.ensemble import IsolationForest  # noqa: E402

from tests.helpers import DaemonProcess, artifact_files, write_renamed  # noqa: E402

FEATURES = [f"f{i}" for i in range(20)]


def body_for(n: int) -> bytes:
    rng = np.random.default_rng(n)
    records = [
        {"timestamp": "2026-11-28T10:15:02Z", "host": "ap-3f-12", "process": "hostapd",
         "message": "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: associated",
         "features": {name: float(v) for name, v in zip(FEATURES, row, strict=True)}}
        for row in rng.normal(size=(n, len(FEATURES)))
    ]
    return json.dumps({"records": records}).encode()


def drive(port: int, path: str, body: bytes, seconds: float, out: multiprocessing.Queue) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    latencies = []
    for _ in range(50):  # warm up the connection and both ends
        conn.request("POST", path, body, headers)
        conn.getresponse().read()
    deadline = time.perf_counter() + seconds
    failures = 0
    while (start := time.perf_counter()) < deadline:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        failures += response.status != 200
    out.put((latencies, failures))


def measure(port: int, path: str, body: bytes, seconds: float) -> tuple[np.ndarray, int]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    client = ctx.Process(target=drive, args=(port, path, body, seconds, out))
    client.start()
    latencies, failures = out.get(timeout=seconds + 60)
    client.join()
    return np.array(latencies), failures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonProcess(Path(tmp), overrides={"logging": {"level": "WARNING"}})
        daemon.models_dir.mkdir(parents=True)
        rng = np.random.default_rng(0)
        model = IsolationForest(n_estimators=100, random_state=0).fit(
            rng.normal(size=(10_000, len(FEATURES))))
        daemon.start()
        try:
            write_renamed(daemon.models_dir, "bench", artifact_files(
                "bench", model=model, feature_names=FEATURES))
            daemon.wait_deployed("bench", timeout=30)
            for n in (1, 100):
                body = body_for(n)
                floor, floor_failed = measure(daemon.port, "/api/v1/noop", body, args.seconds)
                score, failed = measure(daemon.port, "/api/v1/score", body, args.seconds)
                for label, lat, bad in (("noop ", floor, floor_failed), ("score", score, failed)):
                    rate = len(lat) / lat.sum()
                    print(f"records={n:<3} {label} requests/s={rate:8.0f} "
                          f"records/s={rate * n:9.0f} p50={np.percentile(lat, 50) * 1e3:6.2f}ms "
                          f"p99={np.percentile(lat, 99) * 1e3:6.2f}ms failed={bad}")
                ratio = (len(score) / score.sum()) / (len(floor) / floor.sum())
                print(f"records={n:<3} scoring at {ratio:.0%} of the no-op request rate")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
