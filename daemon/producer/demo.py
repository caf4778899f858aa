"""``modeld demo``.

``modeld demo`` tells the whole story on one machine, in the terminal, with temporary folders:
it simulates WiFi logs, trains a first model, starts a real daemon (``modeld run`` as a
subprocess on loopback), streams records at it, trains and drops a second model (the hot swap),
then shifts the traffic until drift monitoring raises an alarm. It prints what happens as it
happens and the dashboard's URL, and ends after ``--duration`` or on Ctrl-C: the daemon gets
SIGTERM and the temporary folder is removed unless ``--keep``.

The demo runs on the main thread; one reader thread tails the daemon's log (JSON lines) into a
queue. Signal handlers only set an event; the main loop acts on it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import httpx
import yaml

from modeld.daemon.producer.simulator import simulate_wifi_logs
from modeld.daemon.producer.train import describe_metrics, train_into
from modeld.daemon.producer.trainer import TrainedArtifact

STORY_SECONDS: Final = 120.0
MIN_STORY_SECONDS: Final = 8.0
BATCH_RECORDS: Final = 40
BATCH_EVERY: Final = 0.2
STOP_TIMEOUT: Final = 15.0
STOP_RESERVE: Final = 1.0
WATCHED_EVENTS: Final = frozenset({
    "model_swapped", "model_imported", "import_rejected", "swap_failed", "drift_alarm",
    "fallback_used", "startup_failed",
})


# --------------------------------------------------------------------------- the story


@dataclass(frozen=True, slots=True)
class StoryPlan:
    """When each act of the demo starts, in seconds since streaming began (pure)."""

    attack_at: float
    second_model_at: float
    shift_at: float
    end: float | None  # None: keep streaming shifted traffic until Ctrl-C

    @classmethod
    def for_duration(cls, seconds: float | None) -> StoryPlan:
        length = STORY_SECONDS if seconds is None else max(seconds, MIN_STORY_SECONDS)
        return cls(attack_at=0.2 * length, second_model_at=0.4 * length,
                   shift_at=0.55 * length, end=None if seconds is None else length)

    def phase(self, t: float) -> str:
        if t < self.attack_at:
            return "normal"
        if t < self.second_model_at:
            return "attack"
        if t < self.shift_at:
            return "normal"
        return "shifted"


class Terminal:
    """Timestamped lines on stdout; colour only on a terminal without NO_COLOR."""

    COLOURS: Final = {"swap": "1;35", "anomaly": "31", "drift": "1;33", "phase": "1;36",
                      "ok": "32", "dim": "2", "error": "1;31"}

    def __init__(self, out: TextIO, started: float) -> None:
        self.out = out
        self.started = started
        self.colour = out.isatty() and "NO_COLOR" not in os.environ

    def line(self, text: str, kind: str = "", *, stamp: bool = True) -> None:
        prefix = f"[{time.monotonic() - self.started:6.1f}s] " if stamp else " " * 10
        if self.colour and kind in self.COLOURS:
            text = f"\033[{self.COLOURS[kind]}m{text}\033[0m"
        self.out.write(prefix + text + "\n")
        self.out.flush()


class DaemonLog:
    """Reads the daemon's output: every line to a file, watched JSON events to a queue.

    Runs on its own thread until the daemon's output ends (the process exited).
    """

    def __init__(self, stream: Any, path: Path) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.path = path
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name="modeld-demo-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        with self.path.open("ab") as sink:
            for raw in iter(self._stream.readline, b""):
                sink.write(raw)
                sink.flush()
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") in WATCHED_EVENTS:
                    self.events.put(event)

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while True:
            try:
                found.append(self.events.get_nowait())
            except queue.Empty:
                return found

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _term_with_parent() -> None:
    """In the daemon's child process before exec: SIGTERM it if the demo dies (Linux), so that
    even a killed demo leaves no daemon running."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demo_config(workspace: Path, port: int) -> dict[str, Any]:
    """The daemon's configuration: the embedded defaults on temporary folders, on loopback,
    with the timers short enough to see things happen within a minute."""
    return {
        "storage": {"directory": str(workspace / "state")},
        "integration": {"training_service_path": str(workspace / "training"),
                        "settle_seconds": 0.5, "import_interval": 5, "polling_interval": 0.5},
        "api": {"host": "127.0.0.1", "port": port},
        "logging": {"format": "json", "level": "INFO"},
        "monitoring": {"drift_interval": 3, "baseline_records": 200,
                       "metrics_flush_interval": 10},
    }


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


def drift_alarms(data: Any, version_hint: str | None = None) -> Iterator[dict[str, Any]]:
    """Alarms anywhere in a drift API answer: objects with a ``signal`` and an ``at``
    (the shape of ``modeld.core.drift.DriftAlarm``), tagged with the version they were found under."""
    if isinstance(data, dict):
        version = data.get("version") if isinstance(data.get("version"), str) else version_hint
        if "signal" in data and "at" in data:
            yield {**data, "version": data.get("version") or version}
            return
        for key, value in data.items():
            if key == "episode":  # the signals that joined an alarm's episode: not alarms
                continue
            hint = key if isinstance(value, dict | list) and version is None and key not in (
                "alarms", "signals", "history", "reports", "versions") else version
            yield from drift_alarms(value, hint)
    elif isinstance(data, list):
        for item in data:
            yield from drift_alarms(item, version_hint)


@dataclass
class Tally:
    records: int = 0
    anomalies: int = 0
    swaps: int = 0
    drift_alarms: int = 0
    since_records: int = 0
    since_anomalies: int = 0
    latencies: list[float] = field(default_factory=list)


class Demo:
    """One run of ``modeld demo``. ``run()`` on the main thread returns the exit status."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout) -> None:
        self.args = args
        self.seed = int(args.seed)
        self.plan = StoryPlan.for_duration(args.duration)  # replaced when streaming starts
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.term = Terminal(out, self.started)
        self.workspace: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: DaemonLog | None = None
        self.http: httpx.Client | None = None
        self.tally = Tally()
        self.serving: str | None = None
        self.seen_alarms: set[tuple[Any, ...]] = set()
        self.drift_api: bool | None = None
        self.last_anomaly_print = 0.0
        self.stopped_by = ""

    # ---- lifecycle

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopped_by = signal.Signals(signum).name
        self.stop.set()

    def run(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        cleanups: list[tuple[str, Callable[[], None]]] = []
        status = 0
        try:
            status = self._run(cleanups)
        except DemoStopped:
            self.term.line(f"stopping ({self.stopped_by or 'interrupted'})", "phase")
        except DemoFailed as exc:
            self.term.line(f"demo failed: {exc}", "error")
            status = 1
        finally:
            for name, cleanup in reversed(cleanups):
                try:
                    cleanup()
                except Exception as exc:  # one failing cleanup must not skip the others
                    self.term.line(f"cleanup of {name} failed: {exc}", "error")
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return status

    def _run(self, cleanups: list[tuple[str, Callable[[], None]]]) -> int:
        base = Path(self.args.workdir) if self.args.workdir else None
        workspace = Path(tempfile.mkdtemp(prefix="modeld-demo-", dir=base))
        self.workspace = workspace
        cleanups.append(("workspace", self._remove_workspace))
        self.term.line("modeld demo: a simulated WiFi network, a real daemon, two models, a hot "
                       "swap and a drift alarm", "phase", stamp=False)
        self.term.line(f"workspace {workspace}"
                       + ("" if self.args.keep else " (removed at the end; --keep keeps it)"),
                       "dim", stamp=False)
        models_dir = workspace / "training" / "models"
        models_dir.mkdir(parents=True)

        now = datetime.now(UTC).replace(microsecond=0)
        first = self._simulate_and_train(workspace, models_dir, "week1", now - timedelta(days=14),
                                         "IsolationForest", self.seed, now)
        if self.stop.is_set():
            raise DemoStopped

        port = self.args.port or free_port()
        config = workspace / "modeld.yaml"
        config.write_text(yaml.safe_dump(demo_config(workspace, port)))
        self._start_daemon(config, workspace / "daemon.log")
        cleanups.append(("daemon", self._stop_daemon))
        base_url = f"http://127.0.0.1:{port}"
        # X-Modeld-Client: the API refuses state-changing requests without it (cross-site)
        self.http = httpx.Client(base_url=base_url, timeout=30,
                                 headers={"X-Modeld-Client": "demo"})
        cleanups.append(("http client", self.http.close))
        self._wait_for(lambda: self._get("/healthz").status_code == 200, 30,
                       "the daemon to answer")
        assert self.proc is not None
        self.term.line(f"daemon running (pid {self.proc.pid}), config {config.name}", "ok")
        self.term.line(f"dashboard: {base_url}/", "ok", stamp=False)
        self._wait_for(lambda: self._status().get("deployed_version") == first.version, 30,
                       f"{first.version} to be deployed")
        self.serving = first.version
        self.term.line(f"serving {first.version} (imported and deployed automatically)", "ok")
        return self._stream(workspace, models_dir)

    def _remove_workspace(self) -> None:
        if self.workspace is None:
            return
        if self.args.keep:
            self.term.line(f"kept {self.workspace} (daemon.log, logs/, training/models, state/)",
                           "dim")
            return
        shutil.rmtree(self.workspace, ignore_errors=True)
        self.term.line("workspace removed", "dim")

    def _start_daemon(self, config: Path, log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELD_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modeld.daemon.cli", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=config.parent,
            # its own session: a Ctrl-C in the terminal reaches the demo only, which then stops
            # the daemon in order
            start_new_session=True,
            # the demo has no other thread yet (the log reader starts below)
            preexec_fn=_term_with_parent,  # noqa: PLW1509
        )
        self.log = DaemonLog(self.proc.stdout, log_path)
        self.log.start()

    def _stop_daemon(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.term.line("the daemon did not stop in time; killing it", "error")
                proc.kill()
                proc.wait()
        if self.log is not None:
            self.log.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.term.line(f"daemon stopped (exit status {proc.returncode})", "dim")
        self.proc = None

    def _wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            self._check_daemon()
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise DemoFailed(f"timed out waiting for {what}\n{self._log_tail()}")
            self.stop.wait(0.1)
        raise DemoStopped

    def _check_daemon(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoFailed(f"the daemon exited with status {self.proc.returncode}\n"
                             f"{self._log_tail()}")

    def _log_tail(self) -> str:
        return self.log.tail() if self.log else ""

    # ---- HTTP

    def _get(self, path: str) -> httpx.Response:
        assert self.http is not None
        return self.http.get(path)

    def _status(self) -> dict[str, Any]:
        return dict(self._get("/api/v1/status").json())

    # ---- acts

    def _simulate_and_train(self, workspace: Path, models_dir: Path, name: str,
                            start: datetime, model_type: str, seed: int, now: datetime
                            ) -> TrainedArtifact:
        # a week of the campus (one line every 70 s on average), ending in an attack
        records = simulate_wifi_logs(6000, start, seed, anomaly_burst=True, mean_gap_seconds=70.0,
                                     burst_fraction=0.06, site_seed=self.seed)
        logs = workspace / "logs" / f"{name}.jsonl"
        write_jsonl(logs, records)
        attacks = sum(1 for r in records if r.get("label") == "anomaly")
        self.term.line(f"simulated {len(records):,} log lines ({records[0]['timestamp'][:10]} to "
                       f"{records[-1]['timestamp'][:10]}, ending in an attack of {attacks} "
                       f"lines) -> logs/{name}.jsonl")
        self.term.line(f"$ modeld train --input logs/{name}.jsonl --output training/models "
                       f"--model-type {model_type}", "dim")
        artifact, folder = train_into(logs, models_dir, model_type=model_type, seed=seed,
                                      now=now)
        self.term.line(f"trained {model_type} {artifact.version}: "
                       f"{describe_metrics(artifact.metadata)}")
        self.term.line(f"wrote training/models/{folder.name} (via _tmp_{folder.name}, renamed "
                       "into place)", "dim", stamp=False)
        return artifact

    def _pools(self) -> dict[str, list[dict[str, Any]]]:
        """Traffic to replay, in random order (so each batch looks like a whole day)."""
        start = datetime.now(UTC) - timedelta(days=6)
        rng = random.Random(self.seed)
        normal = simulate_wifi_logs(6000, start, self.seed + 10, anomaly_burst=False,
                                    site_seed=self.seed)
        attack = simulate_wifi_logs(1500, start, self.seed + 11, anomaly_burst=True,
                                    burst_fraction=1.0, site_seed=self.seed)
        shifted = simulate_wifi_logs(6000, start, self.seed + 12, anomaly_burst=False,
                                     scenario="radio_degrading", site_seed=self.seed)
        for pool in (normal, attack, shifted):
            rng.shuffle(pool)
        return {"normal": normal, "attack": attack, "shifted": shifted}

    def _stream(self, workspace: Path, models_dir: Path) -> int:
        pools = self._pools()
        cursor = dict.fromkeys(pools, 0)
        if self.args.duration is not None:
            # --duration counts from the command's start: the story gets what setup left,
            # less the time the daemon takes to stop
            left = self.args.duration - (time.monotonic() - self.started) - STOP_RESERVE
            self.plan = StoryPlan.for_duration(left)
        plan = self.plan
        t0 = time.monotonic()
        phase = ""
        second_written: tuple[str, float] | None = None
        next_progress = t0 + self._progress_every()
        next_drift = t0 + 2.0
        self.term.line(f"streaming about {BATCH_RECORDS / BATCH_EVERY:.0f} records/s at "
                       "POST /api/v1/score", "phase")

        def take(name: str, n: int) -> list[dict[str, Any]]:
            pool = pools[name]
            start = cursor[name]
            cursor[name] = (start + n) % len(pool)
            batch = pool[start:start + n]
            return batch + pool[: n - len(batch)]

        while not self.stop.is_set():
            now = time.monotonic()
            t = now - t0
            if plan.end is not None and t >= plan.end:
                break
            current = plan.phase(t)
            if current != phase:
                self._announce(current, phase)
                phase = current
            if second_written is None and t >= plan.second_model_at:
                artifact = self._simulate_and_train(
                    workspace, models_dir, "week2", datetime.now(UTC) - timedelta(days=7),
                    "LocalOutlierFactor", self.seed + 1, datetime.now(UTC).replace(microsecond=0))
                second_written = (artifact.version, time.monotonic())
                continue
            if second_written and second_written[0] != self.serving \
                    and time.monotonic() - second_written[1] > 10:
                self._deploy_by_hand(second_written[0])
                second_written = (second_written[0], time.monotonic())
            if current == "attack":
                batch = take("attack", BATCH_RECORDS // 2) + take("normal", BATCH_RECORDS // 2)
            else:
                batch = take("shifted" if current == "shifted" else "normal", BATCH_RECORDS)
            self._score(batch)
            self._events()
            if now >= next_progress:
                self._progress()
                next_progress = now + self._progress_every()
            if now >= next_drift:
                self._poll_drift()
                next_drift = now + 2.0
            self.stop.wait(max(0.0, BATCH_EVERY - (time.monotonic() - now)))
            if plan.end is None and t >= STORY_SECONDS and phase != "open":
                self.term.line("the story is told; still streaming shifted traffic. Explore the "
                               "dashboard, Ctrl-C to stop.", "phase")
                phase = "open"
        self._events()
        if self.stopped_by:
            self.term.line(f"stopping ({self.stopped_by})", "phase")
        tally = self.tally
        self.term.line(f"done: {tally.records:,} records scored, {tally.anomalies:,} anomalies, "
                       f"{tally.swaps} hot swap{'s' * (tally.swaps != 1)}, {tally.drift_alarms} "
                       f"drift alarm{'s' * (tally.drift_alarms != 1)}", "ok")
        return 0

    def _progress_every(self) -> float:
        return 2.0 if self.plan.end is None or self.plan.end >= 30 else 1.5

    def _announce(self, phase: str, previous: str) -> None:
        text = {
            "normal": "phase: ordinary office traffic" if not previous else
                      "phase: the attack is over; ordinary traffic again",
            "attack": "phase: ATTACK: a deauthentication flood against one access point and "
                      "password guessing, mixed into ordinary traffic",
            "shifted": "phase: the radio environment degrades (signals about 10 dB weaker, "
                       "twice the disconnections); drift monitoring should notice",
        }[phase]
        self.term.line(text, "phase")

    def _deploy_by_hand(self, version: str) -> None:
        assert self.http is not None
        self.term.line(f"{version} was not deployed automatically; deploying it through the "
                       "API", "swap")
        with contextlib.suppress(httpx.HTTPError):
            response = self.http.post(f"/api/v1/models/{version}/deploy")
            if response.status_code >= 400:
                self.term.line(f"deploy refused: {response.text[:300]}", "error")

    def _score(self, batch: list[dict[str, Any]]) -> None:
        assert self.http is not None
        self._check_daemon()
        started = time.perf_counter()
        try:
            response = self.http.post("/api/v1/score", json={"records": batch})
        except httpx.HTTPError as exc:
            raise DemoFailed(f"scoring failed: {exc}\n{self._log_tail()}") from None
        if response.status_code != 200:
            raise DemoFailed(f"scoring refused ({response.status_code}): {response.text[:500]}")
        self.tally.latencies.append((time.perf_counter() - started) * 1000)
        data = response.json()
        version = data["model_version"]
        if version != self.serving:
            self._swapped(self.serving, version, None)
        flagged = [(r, res) for r, res in zip(batch, data["results"], strict=True)
                   if res["is_anomaly"]]
        self.tally.records += len(batch)
        self.tally.since_records += len(batch)
        self.tally.anomalies += len(flagged)
        self.tally.since_anomalies += len(flagged)
        if flagged and time.monotonic() - self.last_anomaly_print >= 1.0:
            record, result = max(flagged, key=lambda pair: pair[1]["score"])
            more = f" (+{len(flagged) - 1} more in this batch)" if len(flagged) > 1 else ""
            self.term.line(f"anomaly  score {result['score']:.3g}  {record['host']} "
                           f"{record['process']}: {record['message'][:90]}{more}", "anomaly")
            self.last_anomaly_print = time.monotonic()

    def _swapped(self, old: str | None, new: str, took_ms: Any) -> None:
        if new == self.serving:
            return
        self.serving = new
        self.tally.swaps += 1
        took = f", took {took_ms} ms" if took_ms is not None else ""
        self.term.line(f"HOT SWAP {old} -> {new}{took}; requests kept flowing", "swap")

    def _progress(self) -> None:
        t = self.tally
        rate = t.since_anomalies / t.since_records * 100 if t.since_records else 0.0
        lat = sorted(t.latencies)
        p50 = lat[len(lat) // 2] if lat else 0.0
        self.term.line(f"scored {t.records:,} records with {self.serving}; {t.since_anomalies} "
                       f"anomalies in the last {t.since_records} ({rate:.1f} %); request p50 "
                       f"{p50:.1f} ms", "dim")
        t.since_records = t.since_anomalies = 0
        t.latencies.clear()

    def _events(self) -> None:
        if self.log is None:
            return
        for event in self.log.drain():
            name = event.get("event")
            if name == "model_swapped":
                if event.get("new") == self.serving:  # already seen in a scoring answer
                    self.term.line(f"the daemon logged model_swapped: {event.get('old')} -> "
                                   f"{event.get('new')} ({event.get('actor')}, "
                                   f"{event.get('reason')}), took {event.get('took_ms')} ms",
                                   "dim", stamp=False)
                else:
                    self._swapped(event.get("old"), str(event.get("new")),
                                  event.get("took_ms"))
            elif name == "model_imported":
                self.term.line(f"the daemon imported {event.get('version')}", "ok")
            elif name in ("import_rejected", "swap_failed", "fallback_used"):
                self.term.line(f"{name.replace('_', ' ')}: {event.get('version')}: "
                               f"{event.get('reason')}", "error")
            elif name == "drift_alarm":
                self._alarm(event)

    def _poll_drift(self) -> None:
        if self.drift_api is False or self.http is None:
            return
        try:
            response = self.http.get("/api/v1/drift")
        except httpx.HTTPError:
            return
        if response.status_code == 404:
            if self.drift_api is None:
                self.term.line("this daemon has no drift API yet; drift alarms will show if it "
                               "logs them", "dim")
            self.drift_api = False
            return
        if response.status_code != 200:
            return
        self.drift_api = True
        for alarm in drift_alarms(response.json()):
            self._alarm(alarm)

    def _alarm(self, alarm: Mapping[str, Any]) -> None:
        version = alarm.get("version") or self.serving
        # the same alarm arrives from the daemon's log and from its drift API; one episode of
        # change is one alarm, whichever of its signals crossed first
        episode = alarm.get("episode")
        key = ((version, "episode", episode) if episode
               else (version, alarm.get("signal"), alarm.get("record")))
        if key in self.seen_alarms:
            return
        self.seen_alarms.add(key)
        self.tally.drift_alarms += 1
        statistic = alarm.get("statistic")
        stat = f", statistic {statistic:.3g}" if isinstance(statistic, int | float) else ""
        detector = f" ({alarm['detector']})" if alarm.get("detector") else ""
        signals = alarm.get("signals") or [alarm.get("signal")]
        self.term.line(f"DRIFT ALARM on {version}: {', '.join(map(str, signals))}{detector}"
                       f"{stat}", "drift")
        if alarm.get("detail"):
            self.term.line(f"  {alarm['detail']}", "dim", stamp=False)


class DemoFailed(Exception):
    """The demo cannot go on; the message is for the person watching."""


class DemoStopped(Exception):
    """Ctrl-C (or SIGTERM) arrived while the demo was setting up."""


# --------------------------------------------------------------------------- modeld demo


def add_demo_command(subparsers: Any,
                     parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``modeld demo`` on the CLI's subparsers (``parents``: shared options)."""
    demo = subparsers.add_parser(
        "demo", parents=list(parents), help="simulate WiFi logs, run a daemon, swap models, raise a drift alarm",
        description="One command that shows modeld at work on temporary folders: simulated "
        "WiFi logs, a first model, a real daemon on 127.0.0.1 with its dashboard, a second model "
        "hot-swapped in, then shifted traffic until drift monitoring fires. Ends after "
        "--duration or on Ctrl-C and removes everything unless --keep.")
    demo.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help=f"stop after this long (default: tell the story in about "
                      f"{STORY_SECONDS:.0f} s, then keep streaming until Ctrl-C)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the temporary folder (logs, models, daemon state and log)")
    demo.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the simulation")
    demo.add_argument("--workdir", type=Path, default=None,
                      help="where to create the temporary folder (default: the system's)")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        print("modeld: demo: --duration must be positive", file=sys.stderr)
        return 2
    return Demo(args).run()
