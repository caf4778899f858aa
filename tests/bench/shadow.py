"""Shadow scoring under load: the request path's latency with and without a candidate on trial.

Run from the repository root: ``python tests/bench/shadow.py [--seconds 8] [--clients 3]``.

A real daemon (``integration.deploy_policy: shadow``, a gate that never judges within the run)
serves a champion trained by modeld's trainer on simulated WiFi logs; client processes score
batches of simulated records in closed loops over keep-alive connections, as fast as the
daemon answers (overload: the shadow worker, held to its CPU budget, cannot keep up). Three
phases of the same run with the same clients: without a candidate, with a candidate shadowing
every request (the default budget), with the worker overloaded (a reload to a twentieth of a
core and a queue of 8: most shadow work is dropped), and without again after the candidate is
discarded. Printed per phase: requests, p50/p99 latency; each shadow phase's p99 as a ratio of
the mean of the two phases without; and how much shadow work was compared and dropped
(counted) in each shadow phase.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

import numpy as np  # noqa: E402

from modeld.daemon.producer.simulator import simulate_wifi_logs  # noqa: E402
from modeld.daemon.producer.trainer import train_artifact, write_artifact  # noqa: E402
from tests.bench.swap_under_load import client  # noqa: E402
from tests.helpers import DaemonProcess  # noqa: E402

START = datetime(2026, 11, 23, tzinfo=UTC)


def window(samples: list[tuple[float, float, bool]], start: float, end: float) -> list[float]:
    return [lat for t, lat, ok in samples if start <= t < end and ok]


def counter(daemon: DaemonProcess, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in daemon.get("/metrics").text.splitlines()
               if line.startswith(name))


def shadow_phase(daemon: DaemonProcess, name: str, seconds: float,
                 phases: dict[str, tuple[float, float]], work: dict[str, str]) -> None:
    """One measured phase with the candidate on trial; what the shadow worker did in it."""
    before = daemon.get("/api/v1/shadow").json()
    dropped_before = counter(daemon, "modeld_shadow_dropped_total")
    begin = time.time()
    time.sleep(seconds)
    phases[name] = (begin, time.time())
    view = daemon.get("/api/v1/shadow").json()
    dropped = counter(daemon, "modeld_shadow_dropped_total") - dropped_before
    compared = ((view["report"] or {}).get("records_compared", 0)
                - (before["report"] or {}).get("records_compared", 0))
    work[name] = (f"records compared={compared} shadow batches dropped={dropped:.0f} "
                  f"(queue {view['shadow']['queue_size']}, cpu budget "
                  f"{view['shadow']['cpu_budget']:g} of a core)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="records per request")
    args = parser.parse_args()
    now = datetime.now(UTC)
    champion = train_artifact(simulate_wifi_logs(3000, START, 1, True), seed=1,
                              version="champion", now=now - timedelta(hours=2))
    candidate = train_artifact(simulate_wifi_logs(3000, START, 2, True), seed=2,
                               version="candidate", now=now - timedelta(hours=1))
    records = simulate_wifi_logs(args.batch, START + timedelta(days=7), 9, False)
    body = json.dumps({"records": records}).encode()
    ctx = multiprocessing.get_context("spawn")
    phases: dict[str, tuple[float, float]] = {}
    work: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        daemon = DaemonProcess(Path(tmp), overrides={
            "logging": {"level": "WARNING"},
            "integration": {"deploy_policy": "shadow", "shadow": {"min_records": 10**12}},
        })
        daemon.models_dir.mkdir(parents=True)
        daemon.start()
        stop, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=client, args=(daemon.port, stop, out, body))
                 for _ in range(args.clients)]
        try:
            write_artifact(champion, daemon.models_dir)
            daemon.wait_deployed("champion", timeout=60)
            for proc in procs:
                proc.start()
            # spawned clients take a while to start: measure once they all run
            daemon.wait_for(lambda: counter(daemon, "modeld_score_requests_total")
                            >= 5 * args.clients, 120, "the clients")
            time.sleep(1.0)  # warm-up, not measured
            begin = time.time()
            time.sleep(args.seconds)
            phases["without"] = (begin, time.time())

            write_artifact(candidate, daemon.models_dir)
            daemon.wait_for(lambda: daemon.status()["candidate_version"] == "candidate", 60,
                            "the candidate")
            time.sleep(1.0)
            shadow_phase(daemon, "shadow", args.seconds, phases, work)

            # overload: the worker held to a twentieth of a core with a short queue (a reload)
            config = daemon.config()
            config["integration"]["shadow"].update({"cpu_budget": 0.05, "queue_size": 8})
            daemon.write_config(config)
            daemon.signal(signal.SIGHUP)
            daemon.wait_for(lambda: daemon.get("/healthz").json()["config_generation"] == 2,
                            60, "the reload")
            time.sleep(1.0)
            shadow_phase(daemon, "shadow, overloaded", args.seconds, phases, work)

            assert daemon.post("/api/v1/shadow/discard").status_code == 200
            time.sleep(1.0)
            begin = time.time()
            time.sleep(args.seconds)
            phases["without, after discard"] = (begin, time.time())
        finally:
            stop.set()
            per_client = [out.get(timeout=60) for _ in procs]
            samples = [s for got in per_client for s in got]
            for proc in procs:
                proc.join(10)
            daemon.stop()
    # the first phase starts only once every client runs (a second after the last one's
    # first request), so that every phase is measured under the same load
    ready = max(got[0][0] for got in per_client) + 1.0
    first, until = phases["without"]
    phases["without"] = (max(first, ready), until)
    failed = sum(not ok for _, _, ok in samples)
    print(f"clients={args.clients} records/request={args.batch} seconds/phase={args.seconds:g} "
          f"failed={failed}")
    p99s = {}
    for name, (start, end) in phases.items():
        lat = window(samples, start, end)
        p99s[name] = float(np.percentile(lat, 99))
        print(f"{name:>24}: requests={len(lat)} p50={np.median(lat) * 1e3:.2f}ms "
              f"p99={p99s[name] * 1e3:.2f}ms")
    base = (p99s["without"] + p99s["without, after discard"]) / 2
    for name, done in work.items():
        print(f"{name:>24}: p99 / without = {p99s[name] / base:.2f}x; {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
