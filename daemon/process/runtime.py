"""The running daemon's shared state: what the HTTP app, the scheduler and the main loop use.

Built once, in dependency order, by :func:`modeld.daemon.process.wiring.build_runtime`.
``score`` runs on request threads (or the event loop); it reads the slot's state once and holds
only the tiny monitor lock, never the manager's operation lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from modeld.core.errors import ModeldError, NoModelDeployed, RecordInvalid, VersionNotLoaded
from modeld.core.events import (
    DeployedVersionUnusable,
    ManagerEvent,
    ModelSwapped,
    ModelUnhealthy,
)
from modeld.core.features import Batch, FeatureColumns
from modeld.core.loader import Scores, ServableModel
from modeld.core.manager import ModelManager
from modeld.core.serving import ServingSlot
from modeld.daemon.jobs.alerting import Alerter, manager_alert
from modeld.daemon.jobs.anomalies import explain_rows
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import Settings

log = structlog.get_logger("modeld.runtime")

# contributions per explained record unless the request asks for another number
DEFAULT_TOP = 3


# the manager's events after which a version may have stopped being deployed or fallback
RETIRING_EVENTS = (ModelSwapped, ModelUnhealthy, DeployedVersionUnusable)


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
    started_at: float = field(default_factory=time.time)
    config_generation: int = 1
    last_reload: ReloadResult | None = None
    health: dict[str, bool] = field(default_factory=dict)
    closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    # what the scheduled state check found: "registry" (its problem), "store" (missing versions)
    state_problems: dict[str, str] = field(default_factory=dict)
    _counters: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def slot(self) -> ServingSlot:
        return self.manager.slot

    def close(self) -> None:
        """Stop what was opened, last first; called once by the main thread at shutdown."""
        self.run_closers(self.closers)

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
        """The manager's listener: metrics, the deployed-version info, alerts, and releasing
        what versions that no longer serve held."""
        self.metrics.on_event(event)
        self.publish_deployed()
        if isinstance(event, RETIRING_EVENTS):
            state = self.slot.state
            live = {m.version for m in (state.deployed, state.fallback) if m is not None}
            self.monitors.retire(live)
            for version in set(self._counters) - live:
                del self._counters[version]
        alert = manager_alert(event)
        if alert is not None:
            self.alerter.send(alert)

    def score(self, batch: Batch, version: str | None = None) -> Scores:
        """Score one batch, all from one version: the deployed one (or its fallback when it
        fails), or the loaded ``version``. The one scoring path of every HTTP surface: it
        counts, times and monitors what it scored, and counts what it refused."""
        try:
            result = self._score(batch, version)
        except ModeldError:
            self.metrics.requests.labels("refused").inc()
            raise
        self.metrics.requests.labels("ok").inc()
        return result

    def _score(self, batch: Batch, version: str | None) -> Scores:
        started = time.perf_counter()
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
        self.monitors.observe(result.version, result.feature_names, result.features,
                              result.scores, result.flags, latency)
        counters = self._counters.get(result.version)
        if counters is None:
            counters = (self.metrics.records.labels(result.version),
                        self.metrics.anomalies.labels(result.version))
            self._counters[result.version] = counters
        counters[0].inc(len(result.scores))
        flagged = int(result.flags.sum())
        if flagged:
            counters[1].inc(flagged)
        self.metrics.latency.observe(latency)
        if flagged:
            self._keep_anomalies(batch, result)
        return result

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

    def answer(self, result: Scores, explain: bool = False,
               top: int | None = DEFAULT_TOP) -> dict[str, Any]:
        """A scored batch as /api/v1/score answers it: one result per record, each with its
        ``top`` contributions when ``explain`` (about a millisecond a record: call it off the
        event loop then)."""
        results: list[dict[str, Any]] = [
            {"score": s, "is_anomaly": f, "confidence": c}
            for s, f, c in zip(result.scores.tolist(), result.flags.tolist(),
                               result.confidence.tolist(), strict=True)
        ]
        if explain:
            for answer, explanation in zip(results, self._explanations(result, top),
                                           strict=True):
                answer["explanation"] = explanation
        return {"model_version": result.version, "results": results}

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
        """The loaded servable of ``version`` (deployed or fallback), if it is loaded."""
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
            self.monitors.observe_invalid(scorer.version, scorer.feature_names)

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
            "health": dict(self.health),
            "state_problems": dict(self.state_problems),
        }
