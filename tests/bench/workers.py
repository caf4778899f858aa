"""Requests served per CPU-second: one process against a control process with N workers.

Run from the repository root: ``python tests/bench/workers.py [--seconds 5] [--workers 2]``.

It starts ``modeld run`` twice on temporary folders with the same IsolationForest (100 trees,
20 features) deployed: once as one process (``api.workers: 1``, the default), once with
``--workers N`` (a control process and N serving workers on one port). Each is driven by wrk
(Debian's package) with requests of 1 and of 100 records over 4 keep-alive connections per
serving process, after a warm-up. The CPU time counted is that of every process of the
daemon (the control process, its workers, the canary zygote): user + system from /proc, so
what the other helpers' load does to the wall clock moves it least. The figure the issue
holds (within 10% of one worker's) is the ratio of requests per CPU-second, printed last
with the machine's load (``uptime``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)  # as tests/bench/http.py: its folder must not shadow the stdlib

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402

from tests.bench.http import (  # noqa: E402
    Result,
    Target,
    cpu_seconds,
    modeld_body,
    run_wrk,
    served,
)
from tests.helpers import DaemonProcess, artifact_files, write_renamed  # noqa: E402

RECORD_COUNTS = (1, 100)
CONNECTIONS_PER_PROCESS = 4


def family(pid: int) -> list[int]:
    """``pid`` and every process descended from it (the daemon's children: its workers, the
    canary zygote)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def measure(root: Path, workers: int, model: IsolationForest, features: list[str],
            rows: dict[int, np.ndarray], seconds: float, wrk: str, tmp: Path
            ) -> dict[int, tuple[Result, float]]:
    """(wrk's result, requests per CPU-second) per record count, for one daemon."""
    root.mkdir()
    daemon = DaemonProcess(root, overrides={"logging": {"level": "WARNING"}})
    daemon.models_dir.mkdir(parents=True)
    daemon.start(wait_ready=False, args=["--workers", str(workers)])
    out = {}
    try:
        daemon.wait_for(lambda: daemon.get("/healthz").status_code == 200, 300,
                        "the daemon to answer /healthz")
        write_renamed(daemon.models_dir, "bench", artifact_files(
            "bench", model=model, feature_names=features))
        daemon.wait_for(lambda: daemon.get("/readyz").status_code == 200, 120,
                        "the model to be deployed")
        if workers > 1:
            daemon.wait_for(lambda: all(w.get("deployed_version") == "bench"
                                        for w in daemon.status()["workers"]), 60,
                            "every worker to serve it")
        assert daemon.proc is not None
        pids = family(daemon.proc.pid)
        connections = CONNECTIONS_PER_PROCESS * workers
        for n in RECORD_COUNTS:
            target = Target(f"workers{workers}", daemon.port, "/api/v1/score",
                            {n: modeld_body(rows[n], features)}, daemon.proc.pid)
            run_wrk(wrk, target, n, connections, 1.0, tmp)  # warm-up
            before = cpu_of(pids)
            result = run_wrk(wrk, target, n, connections, seconds, tmp)
            used = cpu_of(pids) - before
            per_cpu = result.requests_per_s * seconds / max(used, 1e-9)
            out[n] = (result, per_cpu)
            print(f"workers={workers} conns={connections:<2} records={n:<3} "
                  f"requests/s={result.requests_per_s:8.0f} p50={result.p50_ms:6.2f}ms "
                  f"p99={result.p99_ms:6.2f}ms cpu_s={used:6.2f} "
                  f"requests/cpu_s={per_cpu:8.0f} errors={result.errors}", flush=True)
    finally:
        daemon.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install wrk): nothing measured", flush=True)
        return 1
    model, features, rows = served("gaussian")
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout
          .strip(), flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = measure(tmp / "one", 1, model, features, rows, args.seconds, wrk, tmp)
        many = measure(tmp / "many", args.workers, model, features, rows, args.seconds, wrk, tmp)
    print("load after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout
          .strip(), flush=True)
    for n in RECORD_COUNTS:
        ratio = many[n][1] / one[n][1]
        print(f"records={n:<3} requests per CPU-second, workers={args.workers} / one process: "
              f"{ratio:.2f} (the issue's bound: >= 0.90) throughput ratio "
              f"{many[n][0].requests_per_s / one[n][0].requests_per_s:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
