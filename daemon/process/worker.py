"""A serving worker: ``modeld run`` started by its control process with ``MODELD_WORKER``.

It reads the settings its control process runs on from its link (the first message), builds
a follower's runtime (:func:`build_worker_runtime`), serves the API on its own SO_REUSEPORT
socket of ``api.port`` (scoring here, the rest forwarded to the control process:
:mod:`modeld.daemon.http.forward`), says ``ready`` over its link, and then, on the main loop:

- ``follow`` from the control process (a deploy, a rollback, a fallback): load what the
  registry says is deployed and swap, on the link's reader thread, within the swap's time;
- ``settings`` again: the control process reloaded; apply them with its generation;
- every ``fleet.reconcile_interval`` seconds: follow anyway (a message lost to a restart);
- SIGTERM/SIGINT, or its link closing (the control process is gone): stop, in reverse order.

SIGHUP is ignored here: a reload goes through the control process, which tells every worker.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

import structlog

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.errors import ConfigError, ModeldError
from modeld.core.manager import iso, utc_now
from modeld.daemon.http.app import create_app
from modeld.daemon.http.forward import ControlForward
from modeld.daemon.jobs.handoff import pack, unpack
from modeld.daemon.process.inbox import SignalInbox
from modeld.daemon.process.logs import configure_logging
from modeld.daemon.process.main import serve_http
from modeld.daemon.process.runtime import ReloadResult, Runtime
from modeld.daemon.process.settings import Settings
from modeld.daemon.process.wiring import apply_settings, build_worker_runtime
from modeld.daemon.process.workers import reuseport_socket

log = structlog.get_logger("modeld.worker")


class Worker:
    """One serving worker process; ``run()`` on its main thread returns the exit status.
    ``part`` is what its control process put in ``MODELD_WORKER``: its index, the file
    descriptor of its link, the port, the control process's API socket."""

    def __init__(self, part: dict[str, Any], link: Connection, first: dict[str, Any]) -> None:
        self.index = int(part["index"])
        self.port = int(part["port"])
        self.control_socket = Path(part["control"])
        self.link = link
        self.settings = Settings.model_validate(first["settings"])
        self.generation = int(first["generation"])
        self._send_lock = threading.Lock()
        self.inbox = SignalInbox()
        self._told: deque[tuple[str, dict[str, Any]]] = deque()  # reloads, the link's end

    def send(self, message: bytes) -> None:
        with self._send_lock:
            self.link.send_bytes(message)

    def run(self) -> int:
        configure_logging(self.settings.logging, fields={"worker": self.index})
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.inbox.install((signal.SIGTERM, signal.SIGINT))
        cleanups: list[tuple[str, Callable[[], None]]] = []
        try:
            runtime = build_worker_runtime(self.settings, self.send, self.status)
            cleanups.append(("runtime", runtime.close))
            runtime.config_generation = self.generation
            self._serve(runtime, cleanups)
            threading.Thread(target=self._listen, args=(runtime,), name="modeld-link",
                             daemon=True).start()
            deployed = runtime.status()["deployed_version"]
            gc.freeze()  # as the daemon's main does: full collections never walk the startup heap
            self.send(pack("ready", {"pid": os.getpid(), "deployed_version": deployed}))
            log.info("worker_ready", pid=os.getpid(), port=self.port,
                     deployed=deployed)
            self._loop(runtime)
        except (ModeldError, OSError, *DATABASE_ERRORS) as exc:  # type: ignore[misc]
            log.error("startup_failed", reason=str(exc))
            return 1
        finally:
            Runtime.run_closers(cleanups)
            self.link.close()
            log.info("stopped")
        return 0

    def _serve(self, runtime: Runtime, cleanups: list[tuple[str, Callable[[], None]]]) -> None:
        api = self.settings.api
        sock = reuseport_socket(api.host, self.port)
        app = ControlForward(create_app(runtime), self.control_socket, api.max_request_bytes)
        serve_http(app, api, cleanups, sock=sock)

    def status(self, runtime: Runtime) -> dict[str, Any]:
        """What this worker tells its control process with each shipment."""
        state = runtime.slot.state
        return {"pid": os.getpid(),
                "deployed_version": state.deployed.version if state.deployed else None,
                "fallback_version": state.fallback.version if state.fallback else None,
                "config_generation": runtime.config_generation}

    def _listen(self, runtime: Runtime) -> None:
        """The control process's messages, on the link's own thread: a follow is done here
        (the manager's lock; requests go on), the rest is left to the main loop."""
        while True:
            try:
                kind, meta, _arrays = unpack(self.link.recv_bytes())
            except (EOFError, OSError):
                self._told.append(("closed", {}))
                self.inbox.wake()
                return
            except ValueError as exc:
                log.error("control_message_invalid", reason=str(exc))
                continue
            if kind == "follow":
                self._follow(runtime)
            else:
                self._told.append((kind, meta))
                self.inbox.wake()

    def _follow(self, runtime: Runtime) -> None:
        try:
            runtime.manager.follow()
        except DATABASE_ERRORS as exc:
            log.error("follow_failed", reason=f"the registry cannot be read: {exc}")

    def _loop(self, runtime: Runtime) -> None:
        interval = self.settings.fleet.reconcile_interval
        next_reconcile = time.monotonic() + interval
        while True:
            received = self.inbox.wait(min(1.0, interval))
            if received & {signal.SIGTERM, signal.SIGINT}:
                log.info("stopping", signal=signal.Signals(min(received)).name)
                return
            while self._told:
                kind, meta = self._told.popleft()
                if kind == "closed":
                    log.warning("stopping", reason="the control process closed the link")
                    return
                if kind == "settings":
                    self._reload(runtime, meta)
            if time.monotonic() >= next_reconcile:
                self._follow(runtime)
                next_reconcile = time.monotonic() + interval

    def _reload(self, runtime: Runtime, meta: dict[str, Any]) -> None:
        """The settings the control process reloaded (it checked them), applied here."""
        generation = int(meta["generation"])
        try:
            new = Settings.model_validate(meta["settings"])
            token = new.api_token()
        except ConfigError as exc:  # api.token_file unreadable here
            log.error("reload_refused", key=exc.key, reason=str(exc),
                      kept_generation=runtime.config_generation)
            return
        if new.logging != self.settings.logging:
            configure_logging(new.logging, fields={"worker": self.index})
        apply_settings(runtime, new, token)
        self.settings = new
        runtime.config_generation = generation
        runtime.last_reload = ReloadResult(generation, True, None, iso(utc_now()))
        log.info("reloaded", generation=generation)



def serve_as_worker(part: dict[str, Any]) -> NoReturn:
    """Run one worker and end the process with its status. Once its runtime is closed
    nothing is left but the interpreter's heap, whose finalization took seconds measured
    on a loaded machine (past the control process's stop budget): it is skipped."""
    link = Connection(int(part["link"]))  # this process's own: closed by the worker
    try:
        kind, first, _arrays = unpack(link.recv_bytes())
    except (EOFError, OSError, ValueError) as exc:
        kind, first = f"nothing readable ({exc})", {}
    if kind != "settings":
        log.error("startup_failed", worker=part.get("index"),
                  reason=f"the control process sent {kind} before its settings")
        os._exit(1)
    code = Worker(part, link, first).run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
