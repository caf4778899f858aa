"""The running daemon's shared state: what the HTTP app, the scheduler and the main loop use.

Built once, in dependency order, by :func:`modeld.daemon.process.wiring.build_runtime`.
``score`` runs on request threads (or the event loop); it reads the slot's state once and holds
only the tiny monitor lock, never the manager's operation lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog

from modeld.core.errors import ModeldError, NoModelDeployed, RecordInvalid, VersionNotLoaded
from modeld.core.events import (
    DeployedVersionUnusable,
    FallbackUsed,
    ManagerEvent,
    ModelSwapped,
    ModelUnhealthy,
)
from modeld.core.features import Batch, FeatureColumns
from modeld.core.fleet import fleet_view
from modeld.core.loader import Scores, ServableModel
from modeld.core.manager import ModelManager, utc_now
from modeld.core.serving import ServingSlot
from modeld.core.shadow import canary_mask
from modeld.daemon.jobs.alerting import Alerter, manager_alert
from modeld.daemon.jobs.anomalies import explain_rows
from modeld.daemon.jobs.fleet import FleetMember
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.jobs.shadow import ShadowWorker
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import Settings

log = structlog.get_logger("modeld.runtime")

# contributions per explained record unless the request asks for another number
DEFAULT_TOP = 3


# the manager's events after which a version may have stopped being deployed or fallback
RETIRING_EVENTS = (ModelSwapped, ModelUnhealthy, DeployedVersionUnusable)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    with contextlib.suppress(OSError):
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
        return trim
    return None


_MALLOC_TRIM = _malloc_trim()


TRIM_DELAY_SECONDS = 5.0


class FreedMemory:
    """Hands the heap pages freed by retired versions back to the system, once for a burst.

    glibc keeps freed small allocations (an unpickled forest's trees are thousands) for
    reuse, so without a trim the daemon's resident size stays at its high-water mark after a
    swap; measured over 30 swaps in process (a collection after each): 1.4 MiB of growth
    without, 0.9 MiB with, and none after the fifth swap either way. ctypes releases the GIL
    for the call, but ``malloc_trim`` holds the allocator's lock while it walks the heap, and
    a request's thread that allocates meanwhile waits holding the GIL: one trim per swap
    doubled the p99 latency of 50 back-to-back swaps (tests/bench/swap_under_load.py, 1.6-2.1x
    the steady p99 with it, 1.3-1.7x without). So a release asks for a trim
    ``TRIM_DELAY_SECONDS`` later, and the releases meanwhile share it.
    """

    def __init__(self, delay: float = TRIM_DELAY_SECONDS) -> None:
        self._delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def release(self) -> None:
        if _MALLOC_TRIM is None:
            return
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self._delay, self._trim)
                self._timer.name = "modeld-trim"
                self._timer.daemon = True
                self._timer.start()

    def _trim(self) -> None:
        with self._lock:
            self._timer = None
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)

    def close(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            timer.join()


@dataclass(frozen=True, slots=True)
class CanaryScores:
    """A batch of ``size`` records a canary routed: each part's positions in the batch and
    what scored them (the candidate's share, the deployed version's). Built by
    ``Runtime.score_routed``, answered by ``Runtime.answer``."""

    size: int
    parts: tuple[tuple[np.ndarray, Scores], ...]


ScoredT = TypeVar("ScoredT", bound="Scores | CanaryScores")


class WorkerView(Protocol):
    """What a control process's pool of serving workers tells the API."""

    def status(self) -> list[dict[str, Any]]: ...

    def metrics(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    generation: int
    ok: bool
    error: str | None
    at: str


@dataclass(slots=True)
class Runtime:
    """Everything a request or job needs, in one place. One per daemon process.

    ``closers`` are the stops of what ``build_runtime`` opened, in the order it opened them;
    :meth:`close` runs them in reverse.
    """

    settings: Settings
    manager: ModelManager
    metrics: DaemonMetrics
    alerter: Alerter
    monitors: Monitors
    token: str | None
    shadow: ShadowWorker | None = None  # the daemon's; in-process tests run without one
    fleet: FleetMember | None = None  # started by the daemon's main; in-process tests: none
    workers: WorkerView | None = None  # a control process's serving workers (api.workers)
    started_at: float = field(default_factory=time.time)
    config_generation: int = 1
    last_reload: ReloadResult | None = None
    health: dict[str, bool] = field(default_factory=dict)
    closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    # what the scheduled state check found: "registry" (its problem), "store" (missing versions)
    state_problems: dict[str, str] = field(default_factory=dict)
    _counters: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    freed_memory: FreedMemory = field(default_factory=FreedMemory)

    @property
    def slot(self) -> ServingSlot:
        return self.manager.slot

    def close(self) -> None:
        """Stop what was opened, last first; called once by the main thread at shutdown."""
        self.run_closers(self.closers)
        self.freed_memory.close()

    @staticmethod
    def run_closers(closers: Sequence[tuple[str, Callable[[], None]]]) -> None:
        """Run each stop, last first; a failing one is logged and the rest still run."""
        for name, close in reversed(closers):
            try:
                close()
            except Exception:
                log.exception("cleanup_failed", component=name)

    def publish_deployed(self) -> None:
        """The deployed and fallback versions, as the ``modeld_deployed_model`` metric."""
        state = self.slot.state
        self.metrics.set_deployed(
            state.deployed.version if state.deployed else None,
            state.fallback.version if state.fallback else None,
        )

    def on_manager_event(self, event: ManagerEvent) -> None:
        """The manager's listener: metrics, the deployed-version info, alerts, the monitors of
        every loaded version built on the deploy path, and releasing what versions that no
        longer serve held."""
        self.metrics.on_event(event)
        self.publish_deployed()
        self.prepare_monitors()
        if isinstance(event, RETIRING_EVENTS):
            self.release_retired()
        alert = manager_alert(event)
        if alert is not None:
            self.alerter.send(alert)

    def on_worker_event(self, event: ManagerEvent) -> None:
        """A serving worker's listener (``api.workers``): its deployed-version info, its
        fallback count, and releasing retired versions. Imports, swaps, monitors and alerts
        are the control process's, which saw the same events first."""
        if isinstance(event, FallbackUsed):
            self.metrics.on_event(event)
        self.publish_deployed()
        if isinstance(event, RETIRING_EVENTS):
            self.release_retired()

    def release_retired(self) -> None:
        """Release what versions no longer loaded (deployed, fallback, candidate: a candidate
        scores a canary) held: their monitors, metric series and freed heap."""
        live = {m.version for m in self.slot.state.loaded()}
        self.monitors.retire(live)
        for version in set(self._counters) - live:
            del self._counters[version]
            self.metrics.forget(version)
        self.freed_memory.release()

    def prepare_monitors(self) -> None:
        """Build the window and drift detector of every loaded version (deployed, fallback,
        candidate) that has none yet: after startup and after each manager event."""
        for servable in self.slot.state.loaded():
            self.monitors.prepare(servable.version, servable.feature_names)

    def retention(self) -> None:
        """The scheduled retention job: old stored versions, old drift evaluations and
        alarms (``storage.retention_days``)."""
        storage = self.settings.storage
        self.manager.retention(storage.keep_versions, storage.retention_days)
        self.monitors.prune(self.manager.clock() - timedelta(days=storage.retention_days))

    def score(self, batch: Batch, version: str | None = None) -> Scores:
        """Score one batch, all from one version: the deployed one (or its fallback when it
        fails), or the loaded ``version``. The one scoring path of every HTTP surface: it
        counts and times what it scored, hands it to monitoring (a queue: no monitoring work
        here), and counts what it refused.

        With a candidate on trial, a batch of records the deployed version answered is also
        offered to the shadow worker (it never waits for it). The shadow comparison is given
        each model's scoring time as the CPU time of the thread that scored, so that the
        request thread and the shadow worker contending for the interpreter does not bias it.
        """
        return self._counted(lambda: self._score(batch, version))

    def score_routed(self, records: Sequence[object]) -> Scores | CanaryScores:
        """Score records as ``score`` does, except that with ``integration.canary.percent``
        set and a candidate on trial, the records whose key falls in the canary's share are
        answered by the candidate instead (a CanaryScores, whose answer names the version of
        every result). Called by /api/v1/score and the MCP tools."""
        return self._counted(lambda: self._score_routed(records))

    def _counted(self, scoring: Callable[[], ScoredT]) -> ScoredT:
        try:
            result = scoring()
        except ModeldError:
            self.metrics.requests.labels("refused").inc()
            raise
        self.metrics.requests.labels("ok").inc()
        return result

    def _score_routed(self, records: Sequence[object]) -> Scores | CanaryScores:
        state = self.slot.state
        canary = self.settings.integration.canary
        if state.candidate is None or state.deployed is None or canary.percent <= 0:
            return self._score(records, None)
        mask = canary_mask(records, canary.key, canary.percent)
        if not len(mask):  # nothing to route: the deployed version answers, named
            return CanaryScores(0, ((np.flatnonzero(mask), self._score(records, None)),))
        started = time.perf_counter()
        try:
            return self._score_canary(records, mask, state.deployed, state.candidate, started)
        except RecordInvalid:
            self.metrics.errors.labels("invalid_record").inc()
            self._observe_invalid(None)
            raise

    def _score(self, batch: Batch, version: str | None) -> Scores:
        started = time.perf_counter()
        state = self.slot.state
        cpu = time.thread_time() if state.candidate is not None else 0.0
        try:
            result = self.slot.score(batch, version)
        except RecordInvalid:
            self.metrics.errors.labels("invalid_record").inc()
            self._observe_invalid(version)
            raise
        except NoModelDeployed:
            self.metrics.errors.labels("no_model").inc()
            raise
        except VersionNotLoaded:
            self.metrics.errors.labels("version_not_loaded").inc()
            raise
        if not len(result.scores):
            return result
        latency = time.perf_counter() - started
        if state.candidate is not None and not isinstance(batch, FeatureColumns):
            self._shadow(batch, result, time.thread_time() - cpu, state.deployed,
                         state.candidate, False)
        self._observe(batch, result, latency)
        self.metrics.latency.observe(latency)
        return result

    def _score_canary(self, records: Sequence[object], mask: np.ndarray,
                      deployed: ServableModel, candidate: ServableModel,
                      started: float) -> CanaryScores:
        """The canary's share scored by the candidate, the rest by the deployed version.

        A failing candidate's share is answered by the deployed version (logged, counted).
        RecordInvalid names the record's index in the whole batch.
        """
        parts: list[tuple[np.ndarray, Scores]] = []
        for positions, by_candidate in ((np.flatnonzero(mask), True),
                                        (np.flatnonzero(~mask), False)):
            if not len(positions):
                continue
            part = [records[i] for i in positions.tolist()]
            began, cpu = time.perf_counter(), time.thread_time()
            try:
                result = (self._score_by_candidate(candidate, part) if by_candidate
                          else self.slot.score(part))
            except RecordInvalid as exc:
                raise RecordInvalid(int(positions[exc.index]), exc.problem) from exc
            parts.append((positions, result))
            self._shadow(part, result, time.thread_time() - cpu, deployed, candidate,
                         by_candidate and result.version == candidate.version)
            self._observe(part, result, time.perf_counter() - began)
        self.metrics.latency.observe(time.perf_counter() - started)
        return CanaryScores(len(records), tuple(parts))

    def _score_by_candidate(self, candidate: ServableModel, records: Sequence[object]
                            ) -> Scores:
        try:
            return self.slot.score_with(candidate, records)
        except RecordInvalid:
            raise
        except Exception as exc:  # third-party estimator code: the deployed version answers
            self.metrics.errors.labels("canary_failed").inc()
            log.error("canary_scoring_failed", version=candidate.version,
                      reason=f"{type(exc).__name__}: {exc}")
            return self.slot.score(records)

    def _shadow(self, records: Sequence[object], result: Scores, seconds: float,
                deployed: ServableModel | None, candidate: ServableModel | None,
                by_candidate: bool) -> None:
        """Offer an answered batch to the shadow worker when a candidate is on trial and the
        answer came from one model of the pair (not from the fallback)."""
        if self.shadow is None or deployed is None or candidate is None:
            return
        if result.version != (candidate.version if by_candidate else deployed.version):
            return
        self.shadow.offer(records, result, seconds, deployed, candidate, by_candidate)

    def _observe(self, batch: Batch, result: Scores, latency: float) -> None:
        """Hand what one version scored to monitoring, count it and keep its anomalies."""
        self.monitors.observe(result.version, result.features, result.scores, result.flags,
                              latency)
        counters = self._counters.get(result.version)
        if counters is None:
            counters = (self.metrics.records.labels(result.version),
                        self.metrics.anomalies.labels(result.version))
            self._counters[result.version] = counters
        counters[0].inc(len(result.scores))
        flagged = int(result.flags.sum())
        if flagged:
            counters[1].inc(flagged)
            self._keep_anomalies(batch, result)

    def _keep_anomalies(self, batch: Batch, result: Scores) -> None:
        """Hand the flagged records to the recent-anomalies buffer (explained and written by
        the next flush, off the request path)."""
        servable = self.servable(result.version)
        if servable is None:
            return
        records = ([None] * len(result.scores) if isinstance(batch, FeatureColumns)
                   else batch)
        self.monitors.anomalies.add(servable, records, np.flatnonzero(result.flags),
                                    result.scores, result.features)

    def answer(self, result: Scores | CanaryScores, explain: bool = False,
               top: int | None = DEFAULT_TOP) -> dict[str, Any]:
        """A scored batch as /api/v1/score answers it: one result per record, each with its
        ``top`` contributions when ``explain`` (about a millisecond a record: call it off the
        event loop then). A canary's answer names the version of every result, and lists the
        versions that scored the batch (``model_version`` is null when it was split)."""
        if isinstance(result, Scores):
            return {"model_version": result.version,
                    "results": self._results(result, explain, top)}
        results: list[dict[str, Any]] = [{}] * result.size
        for positions, part in result.parts:
            for i, item in zip(positions.tolist(), self._results(part, explain, top),
                               strict=True):
                item["model_version"] = part.version
                results[i] = item
        versions = sorted({part.version for _, part in result.parts})
        return {"model_version": versions[0] if len(versions) == 1 else None,
                "model_versions": versions, "results": results}

    def _results(self, result: Scores, explain: bool, top: int | None
                 ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [
            {"score": s, "is_anomaly": f, "confidence": c}
            for s, f, c in zip(result.scores.tolist(), result.flags.tolist(),
                               result.confidence.tolist(), strict=True)
        ]
        if explain:
            for answer, explanation in zip(results, self._explanations(result, top),
                                           strict=True):
                answer["explanation"] = explanation
        return results

    def explain(self, record: object) -> dict[str, Any]:
        """One record's score with its full explanation. Not traffic: nothing is observed,
        counted or kept (an agent asking why must not move the drift windows)."""
        result = self.slot.score([record])
        return {"model_version": result.version, "score": float(result.scores[0]),
                "is_anomaly": bool(result.flags[0]),
                "explanation": self._explanations(result, None)[0]}

    def _explanations(self, result: Scores, top: int | None) -> list[dict[str, Any] | None]:
        servable = self.servable(result.version)
        if servable is None:  # swapped out since it scored: the answer stands unexplained
            return [None] * len(result.scores)
        words = self.monitors.reference_words(result.version, result.feature_names)
        return [None if e is None else e.to_dict()
                for e in explain_rows(servable, result.features, result.scores, words, top)]

    def servable(self, version: str) -> ServableModel | None:
        """The loaded servable of ``version`` (deployed, fallback or candidate), if it is
        loaded."""
        try:
            return self.slot.state.find(version)
        except VersionNotLoaded:
            return None

    def _observe_invalid(self, version: str | None) -> None:
        state = self.slot.state
        try:
            scorer = state.deployed if version is None else state.find(version)
        except VersionNotLoaded:  # unloaded since it refused the batch: nobody to tell
            return
        if scorer is not None:
            self.monitors.observe_invalid(scorer.version)

    def fleet_view(self) -> dict[str, Any]:
        """The daemons heartbeating into this registry (``GET /api/v1/fleet``)."""
        fleet = self.settings.fleet
        view = fleet_view(self.manager.registry.daemons(), utc_now(),
                          fleet.heartbeat_interval, fleet.split_alarm_seconds)
        return {"backend": self.manager.registry.dialect.name,
                "self": None if self.fleet is None else self.fleet.id, **view.to_dict()}

    def status(self) -> dict[str, Any]:
        state = self.slot.state
        deployed = state.deployed
        return {
            "deployed_version": deployed.version if deployed else None,
            "fallback_version": state.fallback.version if state.fallback else None,
            "ready": deployed is not None,
            "model_type": deployed.model_type if deployed else None,
            "feature_names": list(deployed.feature_names) if deployed else [],
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config_generation": self.config_generation,
            "config_version": self.settings.version,
            "last_reload": None if self.last_reload is None else {
                "generation": self.last_reload.generation,
                "ok": self.last_reload.ok,
                "error": self.last_reload.error,
                "at": self.last_reload.at,
            },
            "training_models_dir": str(self.manager.models_dir),
            "auto_deploy": self.manager.policy.deployment.auto_deploy,
            "deploy_policy": self.manager.policy.deployment.deploy_policy,
            "candidate_version": state.candidate.version if state.candidate else None,
            "health": dict(self.health),
            "state_problems": dict(self.state_problems),
            "fleet": None if self.fleet is None else self.fleet.status(),
            "workers": None if self.workers is None else self.workers.status(),
        }

    def metrics_exposition(self) -> bytes:
        """/metrics: this process's metrics, with its workers' merged in."""
        return self.metrics.exposition(() if self.workers is None else self.workers.metrics())
