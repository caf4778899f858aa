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

from modeld.core.errors import NoModelDeployed, RecordInvalid
from modeld.core.events import ManagerEvent
from modeld.core.loader import Scores, ServableModel
from modeld.core.manager import ModelManager
from modeld.core.serving import ServingSlot
from modeld.core.shadow import canary_mask
from modeld.daemon.jobs.alerting import Alerter, manager_alert
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.jobs.shadow import ShadowWorker
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import Settings

log = structlog.get_logger("modeld.runtime")


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
    started_at: float = field(default_factory=time.time)
    config_generation: int = 1
    last_reload: ReloadResult | None = None
    health: dict[str, bool] = field(default_factory=dict)
    closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
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
        """The manager's listener: metrics, the deployed-version info, alerts."""
        self.metrics.on_event(event)
        self.publish_deployed()
        alert = manager_alert(event)
        if alert is not None:
            self.alerter.send(alert)

    def score(self, records: Sequence[object]) -> dict[str, Any]:
        """Score one batch with whichever model is deployed now; all from one version.

        With a candidate on trial, the batch is also offered to the shadow worker (it never
        waits for it); with ``integration.canary.percent`` set, the records whose key falls in
        the canary's share are answered by the candidate instead, and every result names the
        version that scored it. The shadow comparison is given each model's scoring time as
        the CPU time of the thread that scored, so that the request thread and the shadow
        worker contending for the interpreter does not bias it.
        """
        started = time.perf_counter()
        state = self.slot.state
        cpu = time.thread_time() if state.candidate is not None else 0.0
        canary = self.settings.integration.canary
        mask = None
        if state.candidate is not None and state.deployed is not None and canary.percent > 0:
            mask = canary_mask(records, canary.key, canary.percent)
        try:
            if mask is not None and mask.any():
                return self._score_canary(records, mask, state.deployed, state.candidate,
                                          started)
            result = self.slot.score(records)
        except RecordInvalid:
            self.metrics.errors.labels("invalid_record").inc()
            deployed = self.slot.state.deployed
            if deployed is not None:
                self.monitors.observe_invalid(deployed.version, deployed.feature_names)
            raise
        except NoModelDeployed:
            self.metrics.errors.labels("no_model").inc()
            raise
        latency = time.perf_counter() - started
        if state.candidate is not None:
            self._shadow(records, result, time.thread_time() - cpu, state.deployed,
                         state.candidate, False)
        self._observe(result, latency)
        self.metrics.latency.observe(latency)
        results = [
            {"score": s, "is_anomaly": f}
            for s, f in zip(result.scores.tolist(), result.flags.tolist(), strict=True)
        ]
        if mask is None:
            return {"model_version": result.version, "results": results}
        for item in results:  # a canary is on: every result names its version
            item["model_version"] = result.version
        return {"model_version": result.version, "model_versions": [result.version],
                "results": results}

    def _score_canary(self, records: Sequence[object], mask: np.ndarray,
                      deployed: ServableModel | None, candidate: ServableModel | None,
                      started: float) -> dict[str, Any]:
        """The canary's share scored by the candidate, the rest by the deployed version.

        A failing candidate's share is answered by the deployed version (logged, counted).
        RecordInvalid names the record's index in the whole batch.
        """
        assert deployed is not None and candidate is not None
        index = np.flatnonzero(mask)
        rest = np.flatnonzero(~mask)
        parts: list[tuple[np.ndarray, Scores]] = []
        for positions, by_candidate in ((index, True), (rest, False)):
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
            self._observe(result, time.perf_counter() - began)
        self.metrics.latency.observe(time.perf_counter() - started)
        results: list[dict[str, Any]] = [{}] * len(records)
        for positions, result in parts:
            for i, s, f in zip(positions.tolist(), result.scores.tolist(),
                               result.flags.tolist(), strict=True):
                results[i] = {"score": s, "is_anomaly": f, "model_version": result.version}
        versions = sorted({result.version for _, result in parts})
        return {"model_version": versions[0] if len(versions) == 1 else None,
                "model_versions": versions, "results": results}

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

    def _observe(self, result: Scores, latency: float) -> None:
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
        }
