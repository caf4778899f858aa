"""``modeld run``: the process lifecycle.

Start in dependency order (logging, registry and store, serving, manager recovery, HTTP,
poll worker and watcher, scheduler), stop in reverse, each stop bounded by a timeout; a failing
cleanup is logged and the rest still run. Signal handlers only record the signal; the main
loop acts on it: SIGHUP reloads the configuration and rescans, SIGTERM/SIGINT stop.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from types import FrameType

import structlog
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler

from modeld.core.errors import ConfigError, RegistryDamaged, StateDirectoryLocked
from modeld.core.manager import iso, utc_now
from modeld.core.registry import (
    REGISTRY_FILE,
    backup_registry,
    clean_partial_backups,
    newest_good_backup,
    registry_problem,
    restore_registry,
)
from modeld.daemon.http.app import create_app
from modeld.daemon.http.limits import server_limits
from modeld.daemon.jobs.alerting import Alert
from modeld.daemon.jobs.watch import PollWorker
from modeld.daemon.process.crashpoints import CRASH_ENV
from modeld.daemon.process.logs import configure_logging
from modeld.daemon.process.runtime import ReloadResult, Runtime
from modeld.daemon.process.sdnotify import SystemdNotifier
from modeld.daemon.process.settings import (
    Settings,
    check_reload,
    config_sections,
    config_warnings,
    load_settings,
)
from modeld.daemon.process.statelock import hold_state_lock
from modeld.daemon.process.wiring import apply_settings, build_runtime

log = structlog.get_logger("modeld.main")

STOP_TIMEOUT = 3  # seconds per component; all of them together stay within systemd's 10 s
ANOMALY_FLUSH_SECONDS = 2.0  # see _schedule
# seconds between passes that gzip stored versions no longer loaded (storage.compression)
COMPRESS_INTERVAL = 60.0


def _log_config_warnings(settings: Settings) -> None:
    """One ``config_warning`` per thing ``modeld config check`` would warn about."""
    for key, warning in config_warnings(settings):
        log.warning("config_warning", key=key, reason=warning)


class Daemon:
    """One modeld process. ``run()`` is called on the main thread and returns an exit status."""

    def __init__(self, config_path: Path | None, settings: Settings) -> None:
        self.config_path = config_path
        self.settings = settings
        # what the running file holds: a reload's file without one of these may be cut short
        self._sections = config_sections(config_path)
        self._signals: deque[int] = deque()
        # The handler must not take a lock (it may interrupt the main thread while that holds
        # it): it appends to a deque, and Python writes the signal number to this pipe, which
        # the main loop waits on.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.notifier = SystemdNotifier.from_env(os.environ)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        settings = self.settings
        # Imports and loads run on worker threads and hold the GIL in long stretches; a
        # shorter switch interval hands it back to the request thread sooner (lower p99).
        sys.setswitchinterval(0.0005)
        configure_logging(settings.logging)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        _log_config_warnings(settings)
        cleanups: list[tuple[str, Callable[[], None]]] = []
        try:
            runtime = self._start(cleanups)
            self._loop(runtime)
        except ConfigError as exc:
            log.error("startup_failed", reason=str(exc))
            return 2
        except StateDirectoryLocked as exc:
            log.error("startup_failed", reason=str(exc))
            return 1
        except RegistryDamaged as exc:  # starting again would fail the same way
            log.error("startup_failed", reason=str(exc))
            return 3
        except OSError as exc:
            log.error("startup_failed", reason=str(exc))
            return 1
        finally:
            self.notifier.stopping()
            Runtime.run_closers(cleanups)
            log.info("stopped")
        return 0

    def _start(self, cleanups: list[tuple[str, Callable[[], None]]]) -> Runtime:
        s = self.settings
        lock = hold_state_lock(s.storage.directory)
        cleanups.append(("state lock", lambda: os.close(lock)))
        for partial in clean_partial_backups(s.storage.directory / "backups"):
            log.warning("backup_partial_removed", path=str(partial),
                        reason="left by a backup that was killed")
        self._check_registry(s.storage.directory / REGISTRY_FILE,
                             s.storage.directory / "store" / "versions")
        runtime = build_runtime(s, utc_now, crash_at=os.environ.get(CRASH_ENV))
        cleanups.append(("runtime", runtime.close))
        log.info("starting", config=str(self.config_path), store=str(s.storage.directory),
                 models_dir=str(runtime.manager.models_dir),
                 deployed=runtime.status()["deployed_version"])
        self.http_thread = self._start_http(runtime, cleanups)

        worker = PollWorker(runtime.manager, s.integration.force_polling,
                            s.integration.polling_interval, enabled=s.integration.auto_import,
                            on_failure=lambda reason: runtime.alerter.send(Alert(
                                kind="scan_failed", title="scanning the training service's "
                                "models folder failed", detail=reason)))
        if not s.integration.auto_import:
            log.info("auto_import_off", reason="integration.auto_import is false; import with "
                     "the API or `modeld models import`")
        worker.start()
        cleanups.append(("poll worker", lambda: worker.stop(STOP_TIMEOUT)))
        self.worker = worker

        scheduler = BackgroundScheduler(timezone=UTC)
        self._schedule(scheduler, runtime)
        scheduler.start()
        cleanups.append(("scheduler", lambda: scheduler.shutdown(wait=False)))
        cleanups.append(("flush monitors", runtime.monitors.flush))
        self.scheduler = scheduler
        # Everything imported and loaded so far lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it. Those walks (160-770 ms
        # measured under load, over the interpreter's startup heap) were the scoring p99.
        gc.freeze()
        return runtime

    def _check_registry(self, path: Path, versions: Path) -> None:
        """Never let a damaged or missing registry judge a non-empty store (it would remove
        every version as an orphan): restore the newest good backup when
        ``storage.restore_from_backup`` says so, else raise RegistryDamaged saying how."""
        storage = self.settings.storage
        problem = registry_problem(path)
        if problem is None and not path.exists() and versions.is_dir() and any(
                versions.iterdir()):
            problem = "the file is missing while the store holds versions"
        if problem is None:
            return
        folder = storage.directory / "backups"
        backup = newest_good_backup(folder)
        if storage.restore_from_backup and backup is not None:
            kept = restore_registry(backup, path, utc_now().strftime("%Y%m%dT%H%M%SZ"))
            log.warning("registry_restored", backup=str(backup), kept=str(kept), reason=problem)
            return
        where = (f"`modeld registry restore {backup}` restores the newest good backup"
                 if backup is not None else f"there is no good backup in {folder}")
        raise RegistryDamaged(str(path), problem, f"modeld will not start on it ({where}; "
                              "storage.restore_from_backup: true restores it at startup)")

    def _check_state(self, runtime: Runtime) -> None:
        """Scheduled: the registry's integrity and the store's version folders."""
        manager = runtime.manager
        problems = runtime.state_problems
        registry = manager.registry.check()
        if registry is not None and problems.get("registry") != registry:
            log.error("registry_damaged", path=str(manager.registry.path), reason=registry)
            runtime.alerter.send(Alert(kind="registry_damaged", title="the registry is damaged",
                                       detail=registry))
        if registry is not None:
            problems["registry"] = registry
            return  # the versions to look for cannot be read from it
        problems.pop("registry", None)
        missing = manager.missing_files()
        for version in sorted(set(missing) - set(problems.get("store", "").split())):
            log.error("version_files_missing", version=version,
                      path=str(manager.store.path_of(version)))
            runtime.alerter.send(Alert(
                kind="version_files_missing", version=version,
                title=f"a stored version's files are missing: {version}",
                detail=f"{manager.store.path_of(version)} is missing"))
        if missing:
            problems["store"] = " ".join(missing)
        else:
            problems.pop("store", None)

    def _start_http(self, runtime: Runtime,
                    cleanups: list[tuple[str, Callable[[], None]]]) -> threading.Thread:
        """Serve the API on its own thread; raises OSError when it cannot listen."""
        api = runtime.settings.api
        server = uvicorn.Server(uvicorn.Config(
            create_app(runtime), host=api.host, port=api.port, log_config=None,
            access_log=False, lifespan="on", timeout_graceful_shutdown=STOP_TIMEOUT,
            **server_limits(api),
        ))
        http = threading.Thread(target=server.run, name="modeld-http", daemon=True)
        http.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not http.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the HTTP server could not listen on {api.host}:{api.port}")
            time.sleep(0.01)
        log.info("http_listening", host=api.host, port=self._bound_port(server))

        def stop_http() -> None:
            server.should_exit = True
            http.join(STOP_TIMEOUT)

        cleanups.append(("http", stop_http))
        return http

    @staticmethod
    def _bound_port(server: uvicorn.Server) -> int | None:
        for srv in getattr(server, "servers", []):
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return None

    def _schedule(self, scheduler: BackgroundScheduler, runtime: Runtime) -> None:
        s = runtime.settings
        manager = runtime.manager
        scheduler.add_job(self.worker.request, "interval", id="rescan",
                          seconds=s.integration.import_interval, coalesce=True, max_instances=1)
        monitors = runtime.monitors
        scheduler.add_job(monitors.flush, "interval", id="flush_monitors",
                          seconds=s.monitoring.metrics_flush_interval, coalesce=True,
                          max_instances=1)
        # Flagged records are explained and written in small batches, so that the shutdown
        # flush has little left to explain within the stop budget.
        scheduler.add_job(monitors.anomalies.flush, "interval", id="flush_anomalies",
                          seconds=min(ANOMALY_FLUSH_SECONDS, s.monitoring.metrics_flush_interval),
                          coalesce=True, max_instances=1)
        scheduler.add_job(monitors.roll, "interval", id="roll_series",
                          seconds=s.monitoring.series_interval, coalesce=True, max_instances=1)
        scheduler.add_job(lambda: monitors.evaluate(runtime.status()["deployed_version"]),
                          "interval", id="drift", seconds=s.monitoring.drift_interval,
                          coalesce=True, max_instances=1)
        scheduler.add_job(
            runtime.retention,
            "interval", id="retention", seconds=s.storage.retention_interval, coalesce=True,
            max_instances=1,
        )
        if s.monitoring.model_health_checks:
            scheduler.add_job(manager.check_health, "interval", id="health_check",
                              seconds=s.monitoring.health_check_interval, coalesce=True,
                              max_instances=1)
        if s.storage.compression:
            scheduler.add_job(manager.compact, "interval", id="compress_versions",
                              seconds=min(COMPRESS_INTERVAL, s.storage.retention_interval),
                              next_run_time=utc_now(), coalesce=True, max_instances=1)
        scheduler.add_job(self._check_state, "interval", id="state_check", args=[runtime],
                          seconds=s.storage.integrity_check_interval, coalesce=True,
                          max_instances=1)
        if s.storage.backup_enabled:
            scheduler.add_job(self._backup, "interval", id="backup", args=[runtime],
                              seconds=s.storage.backup_interval, coalesce=True, max_instances=1)

    def _backup(self, runtime: Runtime) -> None:
        storage = runtime.settings.storage
        stamp = utc_now().strftime("%Y%m%dT%H%M%S%fZ")
        target = backup_registry(runtime.manager.registry, storage.directory / "backups",
                                 storage.backup_count, stamp, compress=storage.compression)
        log.info("registry_backed_up", path=str(target), keep=storage.backup_count)

    def _reschedule(self, runtime: Runtime) -> None:
        for job in self.scheduler.get_jobs():
            job.remove()
        self._schedule(self.scheduler, runtime)

    # the main loop ------------------------------------------------------------------------

    def _healthy(self, runtime: Runtime) -> bool:
        health = {
            "scheduler": bool(self.scheduler.running),
            "watcher": self.worker.alive(),
            "http": self.http_thread.is_alive(),
            "shadow": runtime.shadow is not None and runtime.shadow.alive(),
        }
        runtime.health.update(health)
        return all(health.values())

    def _status_line(self, runtime: Runtime) -> str:
        state = runtime.slot.state
        if state.deployed is None:
            return "Waiting for a valid model; none deployed"
        fallback = state.fallback.version if state.fallback else "none"
        return f"Serving {state.deployed.version} (fallback {fallback})"

    def _loop(self, runtime: Runtime) -> None:
        interval = self.notifier.watchdog_interval()
        tick = min(interval, 1.0) if interval else 1.0
        self.notifier.ready()
        last_status = self._status_line(runtime)
        self.notifier.status(last_status)
        log.info("ready", deployed=runtime.status()["deployed_version"])
        last_ping = 0.0
        while True:
            if select.select([self._wake_r], [], [], tick)[0]:
                os.read(self._wake_r, 4096)
            received = set()
            while self._signals:
                received.add(self._signals.popleft())
            stop = received & {signal.SIGTERM, signal.SIGINT}
            if stop:
                log.info("stopping", signal=signal.Signals(min(stop)).name)
                return
            if signal.SIGHUP in received:  # a burst of SIGHUPs is one reload
                self._reload(runtime)
            status = self._status_line(runtime)
            if status != last_status:
                self.notifier.status(status)
                last_status = status
            if interval and time.monotonic() - last_ping >= interval:
                if self._healthy(runtime):
                    self.notifier.watchdog()
                    last_ping = time.monotonic()
                else:
                    log.error("unhealthy_no_watchdog_ping", health=runtime.health)

    def _reload(self, runtime: Runtime) -> None:
        """Apply a new configuration, or keep the old one when the new one is refused."""
        self.notifier.reloading(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        # every attempt gets a fresh number, refused ones included, so `modeld reload` never
        # mistakes an earlier refusal for the answer to its own SIGHUP
        tried = runtime.last_reload.generation if runtime.last_reload else 0
        generation = max(runtime.config_generation, tried) + 1
        now = iso(utc_now())
        try:
            new = load_settings(self.config_path)
            check_reload(self.config_path, self._sections, runtime.token, new)
            token = new.api_token()
            if new.logging != self.settings.logging:
                configure_logging(new.logging)
        except ConfigError as exc:
            runtime.last_reload = ReloadResult(generation, False, str(exc), now)
            log.error("reload_refused", key=exc.key, reason=str(exc),
                      kept_generation=runtime.config_generation)
            self.notifier.ready()
            self.notifier.status(f"Reload refused: {exc}")
            self.worker.request()
            return
        restart_needed = restart_keys(self.settings, new)
        if restart_needed:
            log.warning("reload_needs_restart", keys=restart_needed,
                        reason="these keys take effect at the next start")
        apply_settings(runtime, new, token)
        self.settings = new
        self._sections = config_sections(self.config_path)
        self._reschedule(runtime)
        self.worker.enabled = new.integration.auto_import
        _log_config_warnings(new)
        runtime.config_generation = generation
        runtime.last_reload = ReloadResult(generation, True, None, now)
        self.worker.request()
        log.info("reloaded", generation=generation, config=str(self.config_path))
        self.notifier.ready()
        self.notifier.status(self._status_line(runtime))


def restart_keys(old: Settings, new: Settings) -> list[str]:
    """The changed keys that a reload cannot apply: they take effect at the next start."""
    return [
        key for key, before, after in (
            ("api.host", old.api.host, new.api.host),
            ("api.port", old.api.port, new.api.port),
            ("storage.directory", old.storage.directory, new.storage.directory),
            ("integration.training_service_path", old.integration.training_service_path,
             new.integration.training_service_path),
        ) if before != after
    ]
