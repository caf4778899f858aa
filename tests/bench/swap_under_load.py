"""Hot swaps under load: 50 new versions arrive while clients score continuously.

Run from the repository root: ``python tests/bench/swap_under_load.py [--versions 50]``.

A real daemon serves one IsolationForest; client processes score single records in closed
loops over keep-alive connections. After a steady phase, new versions are renamed into the
models folder one after another (each newer than the last), each waited for until it serves.
Printed: requests served and failed, p99 latency during the swap phase against the steady
phase (same run, same clients), the time from an artifact becoming complete (its rename) to
it serving (p50 and max), and the daemon's resident memory: with no version, with one, with
two (deployed and fallback: what it holds from then on), and after every swap, against the
size of a version's servable arrays (the bundle's size). A swapped-out version's memory is
returned when the resident size after 50 swaps is that of two versions.

Targets (issue 14): p99 during swaps <= 1.5x steady, rename to serving p50 <= 150 ms, a
loaded version's resident cost <= 2x its bundle's size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)

import http.client  # noqa: E402
import json  # noqa: E402

from modeld.core.forest import compile_isolation_forest  # noqa: E402
from tests.helpers import (  # noqa: E402
    DaemonProcess,
    artifact_files,
    stamp,
    train_forest,
    write_renamed,
)

FEATURES = ("x0", "x1", "x2", "x3")
BODY = json.dumps({"records": [{"features": dict.fromkeys(FEATURES, 0.1)}]}).encode()


def client(port: int, stop: Any, out: Any, ready: Any, body: bytes = BODY) -> None:
    """Score one body (one record) at a time until told to stop; report (start, latency, ok)
    samples. Says ``ready`` once its connection has been answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", "/api/v1/score", body, {"Content-Type": "application/json"})
    conn.getresponse().read()
    ready.put(True)
    samples = []
    while not stop.is_set():
        start = time.time()
        try:
            conn.request("POST", "/api/v1/score", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
            conn = http.client.HTTPConnection("127.0.0.1", port)
        samples.append((start, time.time() - start, ok))
    out.put(samples)


def p99(samples: list[tuple[float, float, bool]], start: float, end: float) -> float:
    window = [lat for t, lat, _ in samples if start <= t < end]
    return float(np.percentile(window, 99)) if window else float("nan")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def servable_bytes(seed: int) -> int:
    """The bytes of one version's compiled forest as its bundle holds them (to_arrays): the
    compiled walk's packed copy (16 bytes a node) is part of the resident cost measured."""
    arrays = compile_isolation_forest(train_forest(seed=seed)).to_arrays()
    return sum(array.nbytes for array in arrays.values())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steady", type=float, default=5.0)
    args = parser.parse_args()
    artifacts = [artifact_files(f"v{i:03d}", seed=i, created_at=stamp(seconds=i - 1000))
                 for i in range(args.versions + 1)]
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonProcess(Path(tmp), overrides={"logging": {"level": "WARNING"}})
        daemon.models_dir.mkdir(parents=True)
        daemon.start(wait_ready=False)
        daemon.wait_for(lambda: daemon.get("/healthz").status_code == 200, 180,
                        "the daemon to answer /healthz")
        assert daemon.proc is not None
        pid = daemon.proc.pid
        rss = {"none": rss_bytes(pid)}
        stop, out, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=client, args=(daemon.port, stop, out, ready))
                 for _ in range(args.clients)]
        try:
            write_renamed(daemon.models_dir, "v000", artifacts[0])
            daemon.wait_deployed("v000", timeout=120)
            rss["one"] = rss_bytes(pid)
            for proc in procs:
                proc.start()
            for _ in procs:  # spawned clients import numpy: on a loaded machine, seconds
                ready.get(timeout=300)
            time.sleep(1.0)  # warm-up, not measured
            steady_from = time.time()
            time.sleep(args.steady)
            swaps_from = time.time()
            to_serve = []
            for i in range(1, args.versions + 1):
                version = f"v{i:03d}"
                write_renamed(daemon.models_dir, version, artifacts[i])
                complete = time.time()  # the rename made it complete
                while daemon.status()["deployed_version"] != version:
                    time.sleep(0.01)
                to_serve.append(time.time() - complete)
                if i == 1:
                    rss["two"] = rss_bytes(pid)
            swaps_to = time.time()
            rss["after"] = rss_bytes(pid)
        finally:
            stop.set()
            samples = [s for _ in procs for s in out.get(timeout=60)]
            for proc in procs:
                proc.join(10)
            daemon.stop()
    failed = sum(not ok for _, _, ok in samples)
    steady = p99(samples, steady_from, swaps_from)
    during = p99(samples, swaps_from, swaps_to)
    print(f"requests served={len(samples) - failed} failed={failed} "
          f"clients={args.clients} versions swapped={args.versions}")
    print(f"p99 latency steady={steady * 1e3:.2f}ms during swaps={during * 1e3:.2f}ms "
          f"ratio={during / steady:.2f}x")
    print(f"complete-to-serving p50={np.median(to_serve) * 1e3:.0f}ms "
          f"max={max(to_serve) * 1e3:.0f}ms (rename into place)")
    size = servable_bytes(0)
    mib = 1 << 20
    print(f"resident memory: no version {rss['none'] / mib:.1f} MiB, one {rss['one'] / mib:.1f}"
          f" MiB, two {rss['two'] / mib:.1f} MiB, after {args.versions} swaps "
          f"{rss['after'] / mib:.1f} MiB")
    print(f"a version's servable arrays {size / mib:.2f} MiB; second version's resident cost "
          f"{(rss['two'] - rss['one']) / mib:.2f} MiB = {(rss['two'] - rss['one']) / size:.1f}x;"
          f" growth over {args.versions - 1} swaps {(rss['after'] - rss['two']) / mib:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
