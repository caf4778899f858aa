"""The control process's serving workers (``api.workers`` > 1, README "Workers").

The control process is the daemon as ever (the registry, the store, the manager that imports
and decides, the scheduler, monitoring, alerting, the fleet membership) except that it binds
no public port: its API listens on a unix socket of its own, and :class:`WorkerPool` runs
``api.workers`` serving processes, each ``modeld run`` again with ``MODELD_WORKER`` set
(:mod:`modeld.daemon.process.worker`), each listening on ``api.port`` with SO_REUSEPORT, so
the kernel spreads connections over them.

Each worker has a link to the control process (a socketpair, one message per
``recv_bytes``; ``handoff.pack``): the control process sends its ``settings`` first and again
after each reload (a worker never reads the configuration file: it runs on what the control
process runs on), and ``follow`` after every change of the deployed version (the worker
loads it from the shared store and swaps, as a fleet's follower does on a notification; it
also reconciles every ``fleet.reconcile_interval``); the worker says ``ready`` once it serves
and ships what it scored every ``handoff.BATCH_SECONDS`` (with its status and metrics).

The pool's supervisor thread restarts a worker that exits (the others keep the port), at most
once a second per worker, and logs both. ``stop`` sends SIGTERM to every worker and waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from modeld.core.events import ManagerEvent
from modeld.daemon.jobs.handoff import deliver, pack, unpack
from modeld.daemon.process.crashpoints import CRASH_ENV
from modeld.daemon.process.runtime import RETIRING_EVENTS, Runtime
from modeld.daemon.process.settings import ApiSettings

log = structlog.get_logger("modeld.workers")

WORKER_ENV = "MODELD_WORKER"  # a worker's part: {"index", "link", "port", "control"}
START_TIMEOUT = 120.0  # seconds for every worker to serve (each imports the whole daemon)
RESTART_SECONDS = 1.0  # the least time between two starts of one worker
SUPERVISE_SECONDS = 0.2
# what a worker must not inherit: systemd's notifications are the control process's, and a
# test's crash point is for the process it names
NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", CRASH_ENV)


@dataclass(slots=True)
class _Worker:
    """One worker process as the pool sees it (guarded by the pool's lock)."""

    index: int
    proc: subprocess.Popen[bytes]
    link: Connection
    started_at: float
    restarts: int
    ready: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    metrics: str = ""
    send_lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerPool:
    """See the module docstring. Built by the control process's main thread before its API
    starts (``control_socket`` and ``port`` are then known), started once its runtime is
    complete; ``on_manager_event`` is chained to the manager's listener."""

    def __init__(self, api: ApiSettings) -> None:
        self.count = api.workers
        self._dir = Path(tempfile.mkdtemp(prefix="modeld-control-"))  # 0700: only us
        self.control_socket = self._dir / "api.sock"
        # Bound, never listening: the port is this pool's while workers come and go (and
        # port 0 becomes one port for all of them); only listening sockets get connections.
        # Taken without SO_REUSEPORT first, so that a port anything else holds is refused
        # instead of shared.
        self._reserved = reuseport_socket(api.host, free_port_of(api.host, api.port))
        self.port = int(self._reserved.getsockname()[1])
        self.host = api.host
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._runtime: Runtime | None = None
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="modeld-workers",
                                            daemon=True)

    # lifecycle ---------------------------------------------------------------------------

    def start(self, runtime: Runtime) -> None:
        """Start every worker and wait until each serves; raises OSError naming the first
        that exited or did not serve within START_TIMEOUT (its log says why)."""
        self._runtime = runtime
        for index in range(self.count):
            self._spawn(index, restarts=0)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with self._lock:
                workers = list(self._workers.values())
            if all(w.ready for w in workers):
                break
            for w in workers:
                if w.proc.poll() is not None:
                    raise OSError(f"worker {w.index} (pid {w.proc.pid}) exited with "
                                  f"{w.proc.returncode} before it served on port {self.port}")
            if time.monotonic() > deadline:
                raise OSError(f"the workers did not all serve on port {self.port} within "
                              f"{START_TIMEOUT:g} s")
            time.sleep(0.05)
        log.info("workers_serving", count=self.count, port=self.port,
                 pids=[w.proc.pid for w in workers])
        self._supervisor.start()

    def alive(self) -> bool:
        return self._supervisor.is_alive()

    def stop(self, timeout: float) -> None:
        """SIGTERM every worker, wait up to ``timeout`` for all, SIGKILL what is left."""
        self._stopping.set()
        if self._supervisor.ident is not None:  # a start that failed never started it
            self._supervisor.join(timeout)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for w in workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_stop_timed_out", worker=w.index, pid=w.proc.pid,
                          timeout=timeout)
                w.proc.kill()
                w.proc.wait()
            w.link.close()
        log.info("workers_stopped", count=len(workers))

    def close(self) -> None:
        """Release the port and the control socket's folder (after the API stopped)."""
        self._reserved.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # what the control process tells its workers ------------------------------------------

    def on_manager_event(self, event: ManagerEvent) -> None:
        """Chained to the manager's listener: after a change of the deployed version, every
        worker follows the registry at once (the message only says "look again", so one that
        arrives twice or late does no harm)."""
        if isinstance(event, RETIRING_EVENTS):
            self._tell("follow", {})

    def reload(self) -> None:
        """The control process reloaded its configuration: every worker applies it."""
        self._tell("settings", self._settings())

    def _settings(self) -> dict[str, Any]:
        """What a worker runs on: the control process's settings now (not the file, which
        may have changed since, or be one the control process refused) and generation."""
        runtime = self._runtime
        assert runtime is not None
        return {"settings": json.loads(runtime.settings.model_dump_json()),
                "generation": runtime.config_generation}

    def _tell(self, kind: str, meta: dict[str, Any]) -> None:
        message = pack(kind, meta)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            try:
                with w.send_lock:
                    w.link.send_bytes(message)
            except OSError as exc:  # exiting: the supervisor restarts it, and it follows
                log.warning("worker_unreachable", worker=w.index, pid=w.proc.pid, told=kind,
                            reason=str(exc))

    # what the workers say ----------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        """Every worker: index, pid, alive, ready, restarts, and what it last said it serves
        (``modeld status``)."""
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: w.index)
        return [{"index": w.index, "pid": w.proc.pid, "alive": w.proc.poll() is None,
                 "ready": w.ready, "restarts": w.restarts,
                 "started_at": round(w.started_at, 3), **w.status} for w in workers]

    def metrics(self) -> list[tuple[str, str]]:
        """(worker index, its last shipped metrics in the text format) of each live worker."""
        with self._lock:
            return [(str(w.index), w.metrics) for w in self._workers.values()
                    if w.metrics and w.proc.poll() is None]

    def _read(self, worker: _Worker) -> None:
        """The worker's messages, on a thread of their own until its link closes."""
        runtime = self._runtime
        assert runtime is not None
        while True:
            try:
                kind, meta, arrays = unpack(worker.link.recv_bytes())
            except (EOFError, OSError):
                return
            except ValueError as exc:  # a bug on one side: say so, keep the link
                log.error("worker_message_invalid", worker=worker.index, reason=str(exc))
                continue
            if kind == "ready":
                worker.ready = True
                log.info("worker_serving", worker=worker.index, pid=worker.proc.pid,
                         port=self.port, version=meta.get("deployed_version"))
                continue
            worker.status = dict(meta["status"])
            worker.metrics = str(meta["metrics"])
            deliver(runtime.monitors, runtime.servable, meta, arrays)

    # starting and supervising ------------------------------------------------------------

    def _spawn(self, index: int, restarts: int) -> None:
        ours, theirs = socket.socketpair()
        part = {"index": index, "link": theirs.fileno(), "port": self.port,
                "control": str(self.control_socket)}
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env[WORKER_ENV] = json.dumps(part)
        link = Connection(ours.detach())
        try:
            proc = subprocess.Popen([sys.executable, "-m", "modeld.daemon.cli", "run"], env=env,
                                    pass_fds=(theirs.fileno(),))
        except OSError:
            link.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(index, proc, link, time.time(), restarts)
        with worker.send_lock:  # the first message: what it runs on
            link.send_bytes(pack("settings", self._settings()))
        with self._lock:
            self._workers[index] = worker
        threading.Thread(target=self._read, args=(worker,), name=f"modeld-worker-{index}",
                         daemon=True).start()
        log.info("worker_started", worker=index, pid=proc.pid, restarts=restarts)

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_SECONDS):
            with self._lock:
                exited = [w for w in self._workers.values() if w.proc.poll() is not None]
            for w in exited:
                wait = RESTART_SECONDS - (time.time() - w.started_at)
                if wait > 0 and self._stopping.wait(wait):
                    return  # stopping: SIGTERM reached it first (systemd's stop)
                code = w.proc.returncode
                log.error("worker_exited", worker=w.index, pid=w.proc.pid,
                          reason=(f"killed by {signal.Signals(-code).name}" if code < 0
                                  else f"exit status {code}"),
                          restarting=True)
                w.link.close()
                try:
                    self._spawn(w.index, w.restarts + 1)
                except OSError as exc:  # no process to be had now: the next round tries again
                    log.error("worker_start_failed", worker=w.index, reason=str(exc))


def free_port_of(host: str, port: int) -> int:
    """``port`` (or, for 0, a free port) after checking nothing holds it: binding it without
    SO_REUSEPORT fails (OSError, EADDRINUSE) where another process listens or is bound."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.bind((host, port))
        return int(probe.getsockname()[1])


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
