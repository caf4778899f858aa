"""The candidate's trial over HTTP: ``GET /api/v1/shadow`` (the comparison report and the
gate), ``POST /api/v1/shadow/promote`` and ``POST /api/v1/shadow/discard``.

Handlers run on the event loop; promote and discard take the manager's lock, so they run in
the thread pool. Refusals (no candidate, another candidate) are core's VersionConflict /
UnknownVersion, translated by the app into 409 / 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from modeld.core.registry import CandidateRow
from modeld.daemon.http.views import serving_pair
from modeld.daemon.process.runtime import Runtime

__all__ = ["shadow_router", "shadow_view"]


class CandidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, min_length=1, max_length=128,
                                description="The candidate acted on; refused (409) when "
                                "another version is the candidate now")
    reason: str | None = Field(None, max_length=1000)


def _candidacy(row: CandidateRow) -> dict[str, Any]:
    return {"version": row.version, "champion": row.champion, "state": row.state,
            "since": row.since, "reason": row.reason, "held": row.held,
            "decided_at": row.decided_at, "actor": row.actor, "decision": row.decision}


def shadow_view(runtime: Runtime, history: int = 20) -> dict[str, Any]:
    """The trial as the API, the CLI and the dashboard show it: the candidate (a registry
    state), the comparison report and the gate's verdict, the shadow queue, the canary."""
    integration = runtime.settings.integration
    registry = runtime.manager.registry
    row = registry.candidate()
    view = runtime.shadow.view() if runtime.shadow is not None else None
    report = view.report if view is not None else None
    current = row is not None and report is not None and report.candidate == row.version
    deployed, _ = serving_pair(runtime.slot)
    return {
        "deploy_policy": runtime.manager.policy.deployment.deploy_policy,
        "deployed_version": deployed,
        "candidate": None if row is None else _candidacy(row),
        "report": report.to_dict() if current and report is not None else None,
        "gate": (view.verdict.to_dict() if current and view is not None
                 and view.verdict is not None else None),
        "shadow": {
            "sample": integration.shadow.sample,
            "min_records": integration.shadow.min_records,
            "cpu_budget": integration.shadow.cpu_budget,
            "queue_depth": None if view is None else view.queue_depth,
            "queue_size": None if view is None else view.queue_size,
            "dropped": None if view is None else view.dropped,
            "errors": None if view is None else view.errors,
        },
        "canary": {"percent": integration.canary.percent, "key": integration.canary.key},
        "history": [_candidacy(c) for c in registry.candidates(history) if c.state != "candidate"],
    }


def shadow_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()
    manager = runtime.manager

    @router.get("/api/v1/shadow", summary="The candidate on trial: its comparison with the "
                "deployed version, the promotion gate, the shadow queue, the canary")
    async def shadow() -> dict[str, Any]:
        return await run_in_threadpool(shadow_view, runtime)

    @router.post("/api/v1/shadow/promote", summary="Deploy the candidate now")
    async def promote(body: CandidateRequest | None = None) -> dict[str, Any]:
        body = body or CandidateRequest()
        serving = await run_in_threadpool(manager.promote, body.version, "operator",
                                          body.reason or "promoted by an operator")
        deployed, fallback = serving_pair(runtime.slot)
        return {"promoted": serving, "deployed_version": deployed, "fallback_version": fallback}

    @router.post("/api/v1/shadow/discard", summary="End the candidate's trial; it stays an "
                 "available version")
    async def discard(body: CandidateRequest | None = None) -> dict[str, Any]:
        body = body or CandidateRequest()
        version = await run_in_threadpool(manager.discard, body.version,
                                          body.reason or "discarded by an operator")
        return {"discarded": version, "deployed_version": serving_pair(runtime.slot)[0]}

    return router
