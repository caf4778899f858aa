"""``modeld run``: the process lifecycle.

Start in dependency order (logging, registry and store, serving, manager recovery, HTTP,
poll worker and watcher, scheduler), stop in reverse, each stop bounded by a timeout; a failing
cleanup is logged and the rest still run. Signal handlers only record the signal; the main
loop acts on it: SIGHUP reloads the configuration and rescans, SIGTERM/SIGINT stop.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

import structlog
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from starlette.types import ASGIApp

from modeld.core.dialect import DATABASE_ERRORS
from modeld.core.errors import ConfigError, RegistryDamaged, SchemaTooNew, StateDirectoryLocked
from modeld.core.manager import iso, utc_now
from modeld.core.registry import (
    backup_registry,
    clean_partial_backups,
    newest_good_backup,
    registry_problem,
    restore_registry,
)
from modeld.daemon.http.app import create_app
from modeld.daemon.http.limits import server_limits
from modeld.daemon.jobs.alerting import Alert
from modeld.daemon.jobs.fleet import FleetMember
from modeld.daemon.jobs.watch import PollWorker
from modeld.daemon.process.crashpoints import CRASH_ENV
from modeld.daemon.process.inbox import SignalInbox
from modeld.daemon.process.logs import configure_logging
from modeld.daemon.process.runtime import ReloadResult, Runtime
from modeld.daemon.process.sdnotify import SystemdNotifier
from modeld.daemon.process.settings import (
    ApiSettings,
    Settings,
    check_reload,
    config_sections,
    config_warnings,
    load_settings,
)
from modeld.daemon.process.statelock import hold_state_lock
from modeld.daemon.process.wiring import apply_settings, both_listeners, build_runtime
from modeld.daemon.process.workers import WorkerPool

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
        self.inbox = SignalInbox()
        self.notifier = SystemdNotifier.from_env(os.environ)
        self.http_port: int | None = None
        # the serving workers (api.workers > 1): this process is then their control process
        self.pool: WorkerPool | None = None

    def run(self) -> int:
        settings = self.settings
        # Imports and loads run on worker threads and hold the GIL in long stretches; a
        # shorter switch interval hands it back to the request thread sooner (lower p99).
        # An import shortens it further while it runs (daemon/jobs/watch.py).
        sys.setswitchinterval(0.0005)
        configure_logging(settings.logging)
        self.inbox.install((signal.SIGHUP, signal.SIGTERM, signal.SIGINT))
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
        except (RegistryDamaged, SchemaTooNew) as exc:  # starting again would fail the same way
            log.error("startup_failed", reason=str(exc))
            return 3
        except DATABASE_ERRORS as exc:  # a fleet's database away at startup: systemd retries
            log.error("startup_failed", reason="the registry database cannot be reached: "
                      f"{str(exc).strip() or type(exc).__name__}")
            return 1
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
        location = s.storage.registry_location()
        if isinstance(location, Path) or location.startswith("sqlite:"):  # a file to judge
            self._check_registry(Path(str(location).removeprefix("sqlite://")),
                                 s.storage.directory / "store" / "versions")
        runtime = build_runtime(s, utc_now, crash_at=os.environ.get(CRASH_ENV))
        cleanups.append(("runtime", runtime.close))
        if s.api.workers > 1:
            pool = self.pool = runtime.workers = WorkerPool(s.api)
            cleanups.append(("worker pool", pool.close))
            runtime.manager.listener = both_listeners(runtime.manager.listener,
                                                      pool.on_manager_event)
        log.info("starting", config=str(self.config_path), store=str(s.storage.directory),
                 models_dir=str(runtime.manager.models_dir),
                 deployed=runtime.status()["deployed_version"])
        self.http_thread = self._start_http(runtime, cleanups)

        manager = runtime.manager
        worker = PollWorker(manager, s.integration.force_polling,
                            s.integration.polling_interval,
                            enabled=s.integration.auto_import and manager.leads,
                            on_failure=lambda reason: runtime.alerter.send(Alert(
                                kind="scan_failed", title="scanning the training service's "
                                "models folder failed", detail=reason)))
        if not s.integration.auto_import:
            log.info("auto_import_off", reason="integration.auto_import is false; import with "
                     "the API or `modeld models import`")
        worker.start()
        cleanups.append(("poll worker", lambda: worker.stop(STOP_TIMEOUT)))
        self.worker = worker
        fleet = runtime.fleet = FleetMember(
            manager, s.fleet, self._fleet_id(self.http_port), self._fleet_url(self.http_port),
            on_lead=lambda leads: self._lead(runtime, leads), alerter=lambda: runtime.alerter)
        fleet.start()
        cleanups.append(("fleet", lambda: fleet.stop(STOP_TIMEOUT)))

        scheduler = BackgroundScheduler(timezone=UTC)
        self._schedule(scheduler, runtime)
        scheduler.start()
        cleanups.append(("scheduler", lambda: scheduler.shutdown(wait=False)))
        cleanups.append(("flush monitors", runtime.monitors.flush))
        self.scheduler = scheduler
        if self.pool is not None:  # last: they forward to this process's API
            self._start_workers(self.pool, runtime, cleanups)
        # Everything imported and loaded so far lives as long as the process: out of the
        # collector's sight, a full collection no longer walks it. Those walks (160-770 ms
        # measured under load, over the interpreter's startup heap) were the scoring p99.
        gc.freeze()
        return runtime

    @staticmethod
    def _start_workers(pool: WorkerPool, runtime: Runtime,
                       cleanups: list[tuple[str, Callable[[], None]]]) -> None:
        cleanups.append(("workers", lambda: pool.stop(STOP_TIMEOUT)))
        pool.start(runtime)

    def _fleet_id(self, port: int | None) -> str:
        return self.settings.fleet.id or f"{socket.gethostname()}:{port}"

    def _fleet_url(self, port: int | None) -> str:
        api = self.settings.api
        host = socket.gethostname() if api.host in ("0.0.0.0", "::", "") else api.host
        return self.settings.fleet.url or f"http://{host}:{port}"

    def _lead(self, runtime: Runtime, leads: bool) -> None:
        """This daemon became (True) or stopped being (False) its fleet's importer."""
        if leads:
            runtime.manager.lead()
        else:
            runtime.manager.resign()
        self.worker.enabled = leads and self.settings.integration.auto_import
        self.worker.request()

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
        """Serve the API on its own thread (with workers, the control process serves it on a
        unix socket for them to forward to); raises OSError when it cannot listen."""
        if self.pool is None:
            http, self.http_port = serve_http(create_app(runtime), runtime.settings.api,
                                              cleanups)
            return http
        http, _ = serve_http(create_app(runtime), runtime.settings.api, cleanups,
                             uds=self.pool.control_socket)
        self.http_port = self.pool.port
        return http

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
        if s.storage.backup_enabled and not runtime.manager.registry.shared:
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
        if self.pool is not None:
            health["workers"] = self.pool.alive()
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
            received = self.inbox.wait(tick)
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
        self.worker.enabled = new.integration.auto_import and runtime.manager.leads
        _log_config_warnings(new)
        runtime.config_generation = generation
        runtime.last_reload = ReloadResult(generation, True, None, now)
        self.worker.request()
        if self.pool is not None:
            self.pool.reload()
        log.info("reloaded", generation=generation, config=str(self.config_path))
        self.notifier.ready()
        self.notifier.status(self._status_line(runtime))


def serve_http(app: ASGIApp, api: ApiSettings, cleanups: list[tuple[str, Callable[[], None]]],
               sock: socket.socket | None = None, uds: Path | None = None
               ) -> tuple[threading.Thread, int | None]:
    """Serve ``app`` on its own thread: on ``api.host:api.port``, on a listening ``sock``
    (a worker's SO_REUSEPORT socket) or on the unix socket ``uds`` (the control process of
    workers); returns the thread and the TCP port bound. Raises OSError when it cannot listen.
    Its stop is appended to ``cleanups``."""
    server = uvicorn.Server(uvicorn.Config(
        app, host=api.host, port=api.port, uds=None if uds is None else str(uds),
        log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=STOP_TIMEOUT, **server_limits(api),
    ))
    sockets = None if sock is None else [sock]
    http = threading.Thread(target=server.run, kwargs={"sockets": sockets}, name="modeld-http",
                            daemon=True)
    http.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not http.is_alive() or time.monotonic() > deadline:
            where = uds if uds is not None else f"{api.host}:{api.port}"
            raise OSError(f"the HTTP server could not listen on {where}")
        time.sleep(0.01)
    port = _bound_port(server)
    log.info("http_listening", host=api.host if uds is None else str(uds), port=port)

    def stop_http() -> None:
        server.should_exit = True
        http.join(STOP_TIMEOUT)

    cleanups.append(("http", stop_http))
    return http, port


def _bound_port(server: uvicorn.Server) -> int | None:
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            name = sock.getsockname()
            return int(name[1]) if isinstance(name, tuple) else None
    return None


def restart_keys(old: Settings, new: Settings) -> list[str]:
    """The changed keys that a reload cannot apply: they take effect at the next start."""
    return [
        key for key, before, after in (
            ("api.host", old.api.host, new.api.host),
            ("api.port", old.api.port, new.api.port),
            ("api.workers", old.api.workers, new.api.workers),
            ("storage.directory", old.storage.directory, new.storage.directory),
            ("storage.registry_url", old.storage.registry_url, new.storage.registry_url),
            ("fleet", old.fleet, new.fleet),
            ("integration.training_service_path", old.integration.training_service_path,
             new.integration.training_service_path),
        ) if before != after
    ]
