"""The composition root: one function builds the running daemon from its settings and a clock.

``modeld run`` (:mod:`modeld.daemon.process.main`) and the tests both call
:func:`build_runtime`, so what a test drives is wired exactly as production is: the manager's
listener (metrics, alerts), the serving slot's fallback hook, the canary first load and the
test-only crash points when ``MODELD_TEST_CRASH_AT`` asks for them. The process around it
(HTTP server, poll worker, scheduler, signals) is started by ``main``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from modeld.core.drift import DriftConfig
from modeld.core.events import Listener, ManagerEvent
from modeld.core.manager import (
    Clock,
    FirstLoad,
    ManagerPolicy,
    ModelManager,
    TrustPolicy,
    utc_now,
)
from modeld.core.registry import Registry
from modeld.core.serving import ServingSlot
from modeld.core.store import ModelStore
from modeld.core.validate import bundle_folder
from modeld.daemon.jobs.alerting import Alerter
from modeld.daemon.jobs.handoff import HandoffMonitors
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.jobs.sandbox import Zygote, canary_load
from modeld.daemon.jobs.shadow import ShadowWorker
from modeld.daemon.process.crashpoints import CrashPoint
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.runtime import Runtime
from modeld.daemon.process.settings import Settings

SHADOW_STOP_TIMEOUT = 3.0  # the worker wakes every 0.2 s; its last batch is bounded by one


def manager_policy(settings: Settings) -> ManagerPolicy:
    """The manager's share of the settings, as the one value a reload swaps."""
    return ManagerPolicy(
        validation=settings.model.validation_policy(),
        deployment=settings.integration.deployment_policy(),
        settle_seconds=settings.integration.settle_seconds,
        loader=settings.security.load_policy().loader(),
        trust=TrustPolicy(settings.security.require_manifest, settings.security.verify_key),
        validate_imports=settings.integration.validate_imports,
        compress_stored=settings.storage.compression,
        allow_unbundled=settings.security.allow_unbundled_estimators,
    )


def build_runtime(settings: Settings, clock: Clock = utc_now,
                  crash_at: str | None = None) -> Runtime:
    """Open the registry and store, recover (:meth:`ModelManager.start`) and wire every part.

    Called once on the main thread. ``crash_at`` is ``MODELD_TEST_CRASH_AT`` (tests only).
    Raises ConfigError or OSError; whatever was opened before the failure is closed again.
    The caller stops the result with :meth:`Runtime.close`.
    """
    crash = None if crash_at is None else CrashPoint(crash_at)
    closers: list[tuple[str, Callable[[], None]]] = []
    try:
        return _assemble(settings, clock, crash, closers)
    except BaseException:
        Runtime.run_closers(closers)
        raise


def _assemble(settings: Settings, clock: Clock, crash: CrashPoint | None,
              closers: list[tuple[str, Callable[[], None]]]) -> Runtime:
    s = settings
    # absolute, so that the paths the API reports (local_path) do not depend on our cwd
    state = s.storage.directory.resolve()
    store = (ModelStore(state / "store", s.security.max_artifact_bytes)
             if crash is None
             else crash.store(state / "store", s.security.max_artifact_bytes))
    location = s.storage.registry_location()
    registry = Registry(location) if crash is None else crash.registry(location)
    closers.append(("registry", registry.close))
    metrics = DaemonMetrics(s.monitoring.resource_monitoring)
    alerter = alerter_of(s, metrics)
    alerter.start()

    def fallback_used(deployed: str, fallback: str | None, reason: str) -> None:
        manager.scoring_failed(deployed, fallback, reason)  # the manager is built just below

    slot = ServingSlot(on_fallback=fallback_used, anomaly_threshold=s.model.anomaly_threshold,
                       confidence_threshold=s.model.confidence_threshold)
    manager = ModelManager(registry=registry, store=store, slot=slot,
                           models_dir=s.integration.models_dir.resolve(),
                           policy=manager_policy(s), clock=clock,
                           leads=not registry.shared)  # a fleet's daemon imports once elected
    zygote = Zygote()
    if s.security.isolate_first_load:
        zygote.warm()
    closers.append(("canary zygote", zygote.close))
    monitors = Monitors(s.monitoring, registry, store.versions, metrics, alerter)
    monitors.start()
    closers.append(("monitoring", monitors.close))
    runtime = Runtime(settings=s, manager=manager, metrics=metrics, alerter=alerter,
                      monitors=monitors, token=s.api_token(), closers=closers)
    closers.append(("alerter", lambda: runtime.alerter.stop(1.0)))  # a reload may replace it
    shadow = runtime.shadow = ShadowWorker(manager, metrics, s.integration)
    shadow.start()
    closers.append(("shadow worker", lambda: shadow.stop(SHADOW_STOP_TIMEOUT)))
    manager.first_load = _canary(runtime, zygote)
    manager.listener = (runtime.on_manager_event if crash is None
                        else both_listeners(runtime.on_manager_event, crash.on_event))
    manager.start()
    runtime.publish_deployed()
    runtime.prepare_monitors()
    return runtime


def build_worker_runtime(settings: Settings, send: Callable[[bytes], None],
                         status: Callable[[Runtime], dict[str, Any]]) -> Runtime:
    """A serving worker's runtime (``api.workers``): the registry and store its control
    process keeps, a follower's manager (it imports, decides and cleans up nothing: the
    control process does) serving what the registry says is deployed, and monitors that hand
    what it scores to the control process (``send``, with ``status`` of it and its
    metrics). Called once on the worker's main thread; raises as build_runtime does."""
    s = settings
    closers: list[tuple[str, Callable[[], None]]] = []
    try:
        store = ModelStore(s.storage.directory.resolve() / "store",
                           s.security.max_artifact_bytes)
        registry = Registry(s.storage.registry_location())
        closers.append(("registry", registry.close))
        metrics = DaemonMetrics(s.monitoring.resource_monitoring)

        def fallback_used(deployed: str, fallback: str | None, reason: str) -> None:
            manager.scoring_failed(deployed, fallback, reason)

        slot = ServingSlot(on_fallback=fallback_used,
                           anomaly_threshold=s.model.anomaly_threshold,
                           confidence_threshold=s.model.confidence_threshold)
        manager = ModelManager(registry=registry, store=store, slot=slot,
                               models_dir=s.integration.models_dir.resolve(),
                               policy=manager_policy(s), leads=False)
        alerter = alerter_of(s, metrics)  # never started: alerts are the control process's
        monitors = HandoffMonitors(
            s.monitoring, registry, store.versions, metrics, alerter, send=send,
            status=lambda: status(runtime),
            metrics=lambda: metrics.exposition().decode())
        runtime = Runtime(settings=s, manager=manager, metrics=metrics, alerter=alerter,
                          monitors=monitors, token=s.api_token(), closers=closers)
        monitors.start()
        closers.append(("monitoring", monitors.close))
        manager.listener = both_listeners(runtime.on_worker_event, monitors.keep_event)
        manager.serve_registry()
        runtime.publish_deployed()
        return runtime
    except BaseException:
        Runtime.run_closers(closers)
        raise


def alerter_of(settings: Settings, metrics: DaemonMetrics) -> Alerter:
    """The alerter of ``settings``; what its rate limit holds back is counted in /metrics."""
    return Alerter(settings.monitoring.alerting,
                   held_back=lambda channel: metrics.alerts_held_back.labels(channel).inc())


def apply_settings(runtime: Runtime, new: Settings, token: str | None) -> None:
    """Apply a reloaded configuration to what :func:`build_runtime` built.

    Called by the main thread on SIGHUP once ``new`` has been read and checked. Each part
    swaps one value (the manager its policy, the slot its threshold); the alerter is replaced
    only when its settings changed. Keys that need a restart are left as they were started.
    """
    runtime.manager.set_policy(manager_policy(new))
    runtime.settings = new
    runtime.token = token
    runtime.slot.anomaly_threshold = new.model.anomaly_threshold
    runtime.slot.confidence_threshold = new.model.confidence_threshold
    if runtime.shadow is not None:
        runtime.shadow.configure(new.integration)
    runtime.monitors.settings = new.monitoring
    runtime.monitors.config = DriftConfig.from_mapping(new.monitoring.model_dump())
    if new.monitoring.alerting != runtime.alerter.settings:
        runtime.alerter.stop(1.0)
        runtime.alerter = alerter_of(new, runtime.metrics)
        runtime.alerter.start()
        runtime.monitors.alerter = runtime.alerter


def _canary(runtime: Runtime, zygote: Zygote) -> FirstLoad:
    """The first load of every artifact, in a limited child process (``security``)."""

    def first_load(folder: Path, digests: Mapping[str, str], out: Path) -> None:
        settings = runtime.settings  # the current one: a reload may change it
        security = settings.security
        if not security.isolate_first_load:  # the daemon unpickles it itself, as configured
            bundle_folder(folder, out, security.load_policy().loader(),
                          settings.model.warmup_rows)
            return
        canary_load(folder, time_limit=security.canary_time_limit,
                    memory_limit_bytes=security.canary_memory_limit,
                    loader_spec=security.load_policy(),
                    sample_rows=settings.model.warmup_rows,
                    expected_digests=digests, zygote=zygote, bundle_to=out)

    return first_load


def both_listeners(first: Listener, second: Listener) -> Listener:
    """One listener that hands each event to ``first``, then to ``second``."""
    def listener(event: ManagerEvent) -> None:
        first(event)
        second(event)

    return listener
