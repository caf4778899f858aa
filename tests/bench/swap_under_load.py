"""Hot swaps under load: 50 new versions arrive while clients score continuously.

Run from the repository root: ``python tests/bench/swap_under_load.py [--versions 50]``.

A real daemon serves one IsolationForest; client processes score single records in closed
loops over keep-alive connections. New versions are renamed into the models folder one after
another (each newer than the last), each waited for until it serves, in ``--rounds`` rounds
(default 10): each round is a steady stretch (``--steady`` seconds over the rounds), then its
share of the swaps, then a pause that belongs to neither phase (the last swap's work after it
serves, released monitors and the like, is not counted as steady). The phases alternate so
that both see the same host: on a shared machine the steady p99 of one 5 s stretch varied
7-32 ms from run to run, more than the swaps change it. ``--rounds 1`` is one steady stretch
and then all the swaps.
Printed: requests served and failed, p99 latency during the swap phase against the steady
phase (same run, same clients, and the same poller in both phases: one keep-alive connection
scoring a record every 10 ms, whose answer's ``model_version`` is how the swap phase sees a
version serve), the time from an artifact becoming complete (its rename) to it serving (p50
and max), and the resident memory of the process that serves: with no version, with one, with
two (deployed and fallback: what it holds from then on), and after every swap, against the
size of a version's bundle as the daemon stored it. A swapped-out version's memory is returned
when the resident size stops growing with the swaps: the growth per swap is the slope over the
swaps after the first ten (the first ones also pay for code paths run for the first time).

``--workers N`` runs the daemon with ``api.workers: N``: the control process imports, the
workers serve. The poller's connection then reaches one worker (the kernel picks it), so
"serving" is that worker's answer; the memory is the first worker's.

Targets (issue 14): p99 during swaps <= 1.5x steady, rename to serving p50 <= 150 ms, a
loaded version's resident cost <= 2x its bundle's size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)

import http.client  # noqa: E402
import json  # noqa: E402

from tests.helpers import (  # noqa: E402
    DaemonProcess,
    artifact_files,
    stamp,
    write_renamed,
)

FEATURES = ("x0", "x1", "x2", "x3")
BODY = json.dumps({"records": [{"features": dict.fromkeys(FEATURES, 0.1)}]}).encode()


def post_score(conn: http.client.HTTPConnection, body: bytes = BODY
               ) -> http.client.HTTPResponse:
    """One scoring request on ``conn``, its response not yet read."""
    conn.request("POST", "/api/v1/score", body, {"Content-Type": "application/json"})
    return conn.getresponse()


def client(port: int, stop: Any, out: Any, ready: Any, body: bytes = BODY) -> None:
    """Score one body (one record) at a time until told to stop; report (start, latency, ok)
    samples. Says ``ready`` once its connection has been answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    post_score(conn, body).read()
    ready.put(True)
    samples = []
    while not stop.is_set():
        start = time.time()
        try:
            response = post_score(conn, body)
            response.read()
            ok = response.status == 200
        except OSError:
            ok = False
            conn = http.client.HTTPConnection("127.0.0.1", port)
        samples.append((start, time.time() - start, ok))
    out.put(samples)


def p99(samples: list[tuple[float, float, bool]],
        stretches: list[tuple[float, float]]) -> float:
    """The p99 latency of the requests started within any of ``stretches``."""
    window = [lat for t, lat, _ in samples
              if any(start <= t < end for start, end in stretches)]
    return float(np.percentile(window, 99)) if window else float("nan")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def bundle_bytes(store: Path) -> int:
    """The bytes of the one bundle the daemon's store holds (``bundles/<digest>/``)."""
    (bundle,) = (store / "bundles").iterdir()
    return sum(f.stat().st_size for f in bundle.iterdir())


def registry_bytes(state: Path) -> int:
    """The SQLite registry's size with its write-ahead log (its page cache, up to SQLite's
    2 MiB default, grows with it)."""
    return sum(p.stat().st_size for p in state.glob("registry.sqlite3*"))


class VersionPoller:
    """Scores one record every ``interval`` seconds over one keep-alive connection, in a
    thread of this process, and keeps the version that answered; runs through both phases,
    so that the steady phase carries the same extra request the swap phase does."""

    def __init__(self, port: int, interval: float = 0.01) -> None:
        self.port, self.interval = port, interval
        self.answered: str | None = None  # the version of the last answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        while not self._stop.is_set():
            self.answered = json.loads(post_score(conn).read())["model_version"]
            self._stop.wait(self.interval)

    def start(self) -> VersionPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steady", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds after a round's last swap counted in neither phase")
    args = parser.parse_args()
    rounds = np.array_split(np.arange(1, args.versions + 1), max(1, min(args.rounds,
                                                                        args.versions)))
    artifacts = [artifact_files(f"v{i:03d}", seed=i, created_at=stamp(seconds=i - 1000))
                 for i in range(args.versions + 1)]
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonProcess(Path(tmp), overrides={"logging": {"level": "WARNING"},
                                                     "api": {"workers": args.workers}})
        daemon.models_dir.mkdir(parents=True)
        daemon.start(wait_ready=False)
        daemon.wait_for(lambda: daemon.get("/healthz").status_code == 200, 180,
                        "the daemon to answer /healthz")
        assert daemon.proc is not None
        pid = (daemon.proc.pid if args.workers == 1  # else the first worker (listed by index)
               else daemon.get("/api/v1/status").json()["workers"][0]["pid"])
        rss = {"none": rss_bytes(pid)}
        stop, out, ready = ctx.Event(), ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=client, args=(daemon.port, stop, out, ready))
                 for _ in range(args.clients)]
        poller = VersionPoller(daemon.port)
        try:
            write_renamed(daemon.models_dir, "v000", artifacts[0])
            daemon.wait_deployed("v000", timeout=120)
            rss["one"] = rss_bytes(pid)
            size = bundle_bytes(daemon.root / "state" / "store")
            poller.start()
            for proc in procs:
                proc.start()
            for _ in procs:  # spawned clients import numpy: on a loaded machine, seconds
                ready.get(timeout=300)
            time.sleep(1.0)  # warm-up, not measured
            steady: list[tuple[float, float]] = []  # the phases' (start, end) stretches
            swapping: list[tuple[float, float]] = []
            to_serve, after_swap, registry = [], [], []
            for numbers in rounds:
                steady_from = time.time()
                time.sleep(args.steady / len(rounds))
                steady.append((steady_from, time.time()))
                swaps_from = time.time()
                for i in numbers:
                    version = f"v{i:03d}"
                    write_renamed(daemon.models_dir, version, artifacts[i])
                    complete = time.time()  # the rename made it complete
                    while poller.answered != version:
                        time.sleep(0.002)
                    to_serve.append(time.time() - complete)
                    after_swap.append(rss_bytes(pid))
                    registry.append(registry_bytes(daemon.root / "state"))
                swapping.append((swaps_from, time.time()))
                time.sleep(args.pause)
            rss["two"], rss["after"] = after_swap[0], rss_bytes(pid)
        finally:
            stop.set()
            poller.stop()
            samples = [s for _ in procs for s in out.get(timeout=60)]
            for proc in procs:
                proc.join(10)
            daemon.stop()
    failed = sum(not ok for _, _, ok in samples)
    steady_p99, during = p99(samples, steady), p99(samples, swapping)
    print(f"requests served={len(samples) - failed} failed={failed} "
          f"clients={args.clients} versions swapped={args.versions} workers={args.workers} "
          f"rounds={len(rounds)}")
    print(f"p99 latency steady={steady_p99 * 1e3:.2f}ms during swaps={during * 1e3:.2f}ms "
          f"ratio={during / steady_p99:.2f}x")
    print(f"complete-to-serving p50={np.median(to_serve) * 1e3:.0f}ms "
          f"max={max(to_serve) * 1e3:.0f}ms (rename into place)")
    mib = 1 << 20
    later = after_swap[10:]
    slope = float(np.polyfit(np.arange(len(later)), later, 1)[0]) if len(later) > 2 else 0.0
    db_slope = (float(np.polyfit(np.arange(len(later)), registry[10:], 1)[0])
                if len(later) > 2 else 0.0)
    print(f"resident memory: no version {rss['none'] / mib:.1f} MiB, one {rss['one'] / mib:.1f}"
          f" MiB, two {rss['two'] / mib:.1f} MiB, after {args.versions} swaps "
          f"{rss['after'] / mib:.1f} MiB")
    print(f"a version's bundle {size / mib:.2f} MiB; second version's resident cost "
          f"{(rss['two'] - rss['one']) / mib:.2f} MiB = {(rss['two'] - rss['one']) / size:.1f}x;"
          f" growth over {args.versions - 1} swaps {(rss['after'] - rss['two']) / mib:.2f} MiB,"
          f" per swap after the first 10: {slope / 1024:.1f} KiB (the registry file: "
          f"{db_slope / 1024:.1f} KiB per swap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
