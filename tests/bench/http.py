"""Scoring over HTTP against a real daemon, side by side with MLServer on the same model.

Run from the repository root: ``python tests/bench/http.py [--seconds 5]``.

It trains one IsolationForest (100 trees, 20 features), starts `modeld run` on temporary
folders with it deployed and, when MLServer is installed (``--mlserver``, default
/work/wt/venv-mlserver/bin/mlserver: a separate venv with ``pip install mlserver
mlserver-sklearn``), an MLServer serving the same joblib file with mlserver-sklearn
(``parallel_workers: 0``, in its HTTP process). Both are then driven with the same rows, as
requests of 1 and of 100 records, at 1, 4 and 16 keep-alive connections:

* with wrk (Debian's package), for requests/s and the p50/p99 it measures;
* with the Python client (http.client, one process per connection, closed loop, every
  connection measured over the same span: a rate is requests over that one span).

modeld's ``POST /api/v1/noop`` with the same bodies (reads and parses them, answers ``{}``)
is the floor of its HTTP stack, measured beside each modeld line.
``--workers N`` runs both servers with N processes that score: modeld with ``api.workers: N``
(its serving workers on one port), MLServer with ``parallel_workers: N`` (its inference pool;
its workers fail to start on uvloop >= 0.21, so its venv needs ``pip install 'uvloop<0.21'``).
``--traffic wifi`` serves the WiFi model modeld's trainer makes instead (tests/bench/wifi.py:
12 features, simulated access-point traffic it did not see, a held-out scenario in it); both
servers get the same feature rows either way.
Printed: one line per (client, server, connections, records), then modeld's ratio to MLServer
from this one run. Missing wrk or MLServer is said plainly and those lines are skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This file is named http.py: its own folder must not shadow the standard library's http.
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import multiprocessing.synchronize  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from functools import partial  # noqa: E402

import httpx  # noqa: E402
import joblib  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402

from modeld.daemon.producer.trainer import DEFAULT_FEATURES  # noqa: E402
from tests.bench.wifi import wifi_model, wifi_traffic  # noqa: E402
from tests.helpers import DaemonProcess, artifact_files, free_port, write_renamed  # noqa: E402

GAUSSIAN_FEATURES = [f"f{i}" for i in range(20)]
CONNECTIONS = (1, 4, 16)
RECORD_COUNTS = (1, 100)
DEFAULT_MLSERVER = "/work/wt/venv-mlserver/bin/mlserver"
HEADERS = {"Content-Type": "application/json", "X-Modeld-Client": "bench"}


@dataclass(frozen=True, slots=True)
class Target:
    """One server endpoint and the body it takes for a given batch."""

    server: str
    port: int
    path: str
    bodies: dict[int, bytes]
    pid: int


WARMUP_REQUESTS = 20  # per Python client connection, before the measured span


@dataclass(frozen=True, slots=True)
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    served: int  # every request the server answered while its CPU time was counted
    cpu_us_per_request: float = float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and every process under it (modeld's serving
    workers, MLServer's inference pool). CPU per request is the figure the other helpers' load
    on a shared machine moves least: it counts only what the server did."""
    server = psutil.Process(pid)
    total = 0.0
    for process in (server, *server.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):  # a process that ended meanwhile
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measured(target: Target, run: Callable[[], Result]) -> Result:
    """``run``'s result with the server's CPU time per request over it."""
    before = cpu_seconds(target.pid)
    result = run()
    used = cpu_seconds(target.pid) - before
    return replace(result, cpu_us_per_request=used / max(result.served, 1) * 1e6)


def served(traffic: str) -> tuple[IsolationForest, list[str], dict[int, np.ndarray]]:
    """The model, its feature names and the rows of each request size for ``traffic``."""
    if traffic == "wifi":
        model, _ = wifi_model()
        rows = wifi_traffic(max(RECORD_COUNTS))
        return model, list(DEFAULT_FEATURES), {n: rows[:n] for n in RECORD_COUNTS}
    rng = np.random.default_rng(0)
    model = IsolationForest(n_estimators=100, random_state=0).fit(
        rng.normal(size=(10_000, len(GAUSSIAN_FEATURES))))
    return model, GAUSSIAN_FEATURES, {
        n: np.random.default_rng(n).normal(size=(n, len(GAUSSIAN_FEATURES)))
        for n in RECORD_COUNTS}


def modeld_body(rows: np.ndarray, features: list[str]) -> bytes:
    records = [
        {"timestamp": "2026-11-28T10:15:02Z", "host": "ap-3f-12", "process": "hostapd",
         "message": "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: associated",
         "features": {name: float(v) for name, v in zip(features, row, strict=True)}}
        for row in rows
    ]
    return json.dumps({"records": records}).encode()


def mlserver_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape),
                                   "datatype": "FP64", "data": rows.ravel().tolist()}]}).encode()


# --------------------------------------------------------------------------- wrk

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Modeld-Client"] = "bench"
local f = io.open("{body}", "rb")
wrk.body = f:read("*all")
f:close()
done = function(summary, latency, requests)
  io.write(string.format("RESULT %f %f %f %d\\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


def run_wrk(wrk: str, target: Target, n: int, connections: int, seconds: float,
            tmp: Path) -> Result:
    body = tmp / f"body-{target.server}-{n}.json"
    body.write_bytes(target.bodies[n])
    script = tmp / f"wrk-{target.server}-{n}.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    url = f"http://127.0.0.1:{target.port}{target.path}"
    out = subprocess.run(
        [wrk, "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{seconds:g}s",
         "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60,
        check=True).stdout
    match = re.search(r"RESULT (\S+) (\S+) (\S+) (\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    rate, p50, p99, errors = match.groups()
    return Result(float(rate), float(p50), float(p99), int(errors),
                  round(float(rate) * seconds))


# --------------------------------------------------------------------------- Python client


def drive(port: int, path: str, body: bytes, seconds: float,
          start: multiprocessing.synchronize.Barrier,
          out: multiprocessing.Queue) -> None:
    # Every connection's span is the same span: the processes start seconds apart, so each
    # waits for the others before it connects (an idle connection is closed after
    # api.header_timeout) and again after its warm-up.
    start.wait()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    latencies = []
    for _ in range(WARMUP_REQUESTS):  # warm up the connection and both ends
        conn.request("POST", path, body, HEADERS)
        conn.getresponse().read()
    start.wait()
    deadline = time.perf_counter() + seconds
    failures = 0
    while (start := time.perf_counter()) < deadline:
        conn.request("POST", path, body, HEADERS)
        response = conn.getresponse()
        response.read()
        latencies.append(time.perf_counter() - start)
        failures += response.status != 200
    out.put((latencies, failures, seconds))


def run_python(target: Target, n: int, connections: int, seconds: float) -> Result:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(connections)
    clients = [ctx.Process(target=drive, args=(target.port, target.path, target.bodies[n],
                                               seconds, start, out))
               for _ in range(connections)]
    for client in clients:
        client.start()
    answers = [out.get(timeout=seconds + 120) for _ in clients]
    for client in clients:
        client.join()
    latencies = np.concatenate([np.array(a[0]) for a in answers])
    return Result(len(latencies) / seconds, float(np.percentile(latencies, 50) * 1e3),
                  float(np.percentile(latencies, 99) * 1e3), sum(a[1] for a in answers),
                  len(latencies) + WARMUP_REQUESTS * connections)


# --------------------------------------------------------------------------- servers


def start_mlserver(binary: str, model_file: Path, tmp: Path, workers: int
                   ) -> tuple[subprocess.Popen[bytes], int]:
    folder = tmp / "mlserver"
    (folder / "bench").mkdir(parents=True)
    shutil.copy(model_file, folder / "bench" / "model.joblib")
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0 if workers == 1 else workers, "debug": False}))
    (folder / "bench" / "model-settings.json").write_text(json.dumps({
        "name": "bench", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    log = (tmp / "mlserver.log").open("wb")
    proc = subprocess.Popen([binary, "start", str(folder)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/models/bench/ready").status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"MLServer did not become ready; see {tmp / 'mlserver.log'}")


def line(client: str, server: str, connections: int, n: int, result: Result) -> str:
    return (f"{client:<6} {server:<7} conns={connections:<2} records={n:<3} "
            f"requests/s={result.requests_per_s:8.0f} "
            f"records/s={result.requests_per_s * n:8.0f} p50={result.p50_ms:6.2f}ms "
            f"p99={result.p99_ms:6.2f}ms cpu/request={result.cpu_us_per_request:6.0f}us "
            f"errors={result.errors}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mlserver", default=os.environ.get("MLSERVER", DEFAULT_MLSERVER))
    parser.add_argument("--traffic", choices=("gaussian", "wifi"), default="gaussian")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is not installed (apt-get install wrk): the wrk lines are skipped", flush=True)
    have_mlserver = Path(args.mlserver).is_file()
    if not have_mlserver:
        print(f"MLServer is not installed at {args.mlserver} (python3 -m venv DIR && "
              "DIR/bin/pip install mlserver mlserver-sklearn; pass --mlserver DIR/bin/mlserver):"
              " no MLServer lines, no ratios", flush=True)
    model, features, rows = served(args.traffic)
    print(f"traffic={args.traffic} workers={args.workers}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "modeld").mkdir()
        daemon = DaemonProcess(tmp / "modeld", overrides={"logging": {"level": "WARNING"},
                                                          "api": {"workers": args.workers}})
        daemon.models_dir.mkdir(parents=True)
        model_file = tmp / "model.joblib"
        joblib.dump(model, model_file)
        mlserver = None
        daemon.start(wait_ready=False)
        daemon.wait_for(lambda: daemon.get("/healthz").status_code == 200, 180,
                        "the daemon to answer /healthz")
        try:
            write_renamed(daemon.models_dir, "bench", artifact_files(
                "bench", model=model, feature_names=features))
            daemon.wait_deployed("bench", timeout=120)
            assert daemon.proc is not None
            targets = [Target("modeld", daemon.port, "/api/v1/score",
                              {n: modeld_body(r, features) for n, r in rows.items()}, daemon.proc.pid)]
            if have_mlserver:
                mlserver, port = start_mlserver(args.mlserver, model_file, tmp,
                                                args.workers)
                targets.append(Target("mlserver", port, "/v2/models/bench/infer",
                                      {n: mlserver_body(r) for n, r in rows.items()},
                                      mlserver.pid))
            floor = Target("noop", daemon.port, "/api/v1/noop", targets[0].bodies,
                           daemon.proc.pid)
            results: dict[tuple[str, str, int, int], Result] = {}
            clients = ["wrk"] if wrk else []
            clients.append("python")
            for client in clients:
                for connections in CONNECTIONS:
                    for n in RECORD_COUNTS:
                        for target in (*targets, floor):
                            result = measured(target, partial(
                                run_wrk, wrk, target, n, connections, args.seconds, tmp)
                                if client == "wrk" and wrk else partial(
                                run_python, target, n, connections, args.seconds))
                            results[client, target.server, connections, n] = result
                            print(line(client, target.server, connections, n, result),
                                  flush=True)
            for (client, server, connections, n), result in results.items():
                other = results.get((client, "mlserver", connections, n))
                if server != "modeld" or other is None:
                    continue
                print(f"{client:<6} conns={connections:<2} records={n:<3} modeld/MLServer "
                      f"throughput={result.requests_per_s / other.requests_per_s:5.1f}x "
                      f"cpu/request={other.cpu_us_per_request / result.cpu_us_per_request:5.1f}x "
                      f"less p99 modeld={result.p99_ms:.2f}ms mlserver={other.p99_ms:.2f}ms",
                      flush=True)
        finally:
            if mlserver is not None:
                os.killpg(mlserver.pid, 15)
                mlserver.wait(30)
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
