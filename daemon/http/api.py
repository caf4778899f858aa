"""modeld's own HTTP API under /api/v1, and the probes: scoring, state, and the operators'
model management.

Handlers run on uvicorn's event loop; operations that take the manager's lock or load models
run in the thread pool. core's errors propagate to the app's one translation into status codes
(:mod:`modeld.daemon.http.app`).
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from modeld.core.errors import UnknownVersion
from modeld.core.features import parse_timestamp
from modeld.core.manager import iso
from modeld.daemon.http.body import read_json
from modeld.daemon.http.scoring import score_routed
from modeld.daemon.http.views import (
    ORJSONResponse,
    candidate_version,
    error,
    import_answer,
    serving_pair,
    version_metadata,
    version_view,
)
from modeld.daemon.process.runtime import DEFAULT_TOP, Runtime

__all__ = ["api_router"]

MAX_ANOMALIES = 10_000


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, max_length=4096,
                      description="A folder inside <training_service_path>/models")
    validate_artifact: bool | None = Field(None, alias="validate",
                                           description="false skips the quality gate, not the "
                                           "checks that make a model servable (default: "
                                           "integration.validate_imports)")


class ImportLatestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    validate_artifact: bool | None = Field(None, alias="validate")


SCORE_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["records"],
            "properties": {
                "explain": {"type": "boolean", "default": False,
                            "description": "add each record's top contributions"},
                "top": {"type": "integer", "minimum": 1, "default": 3},
                "records": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "timestamp": {"type": "string", "format": "date-time"},
                    "host": {"type": "string"},
                    "process": {"type": "string"},
                    "message": {"type": "string"},
                    "features": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            }}},
        }}},
    }
}


def anomaly_since(since: str | None) -> str | None:
    """``since`` as the registry's timestamps read (UTC ISO); 422 naming it when unparsable."""
    if since is None or not since.strip():
        return None
    try:
        return iso(parse_timestamp(since.strip()))
    except ValueError as exc:
        raise HTTPException(422, f"since: {since!r} is not an ISO-8601 time ({exc})") from exc


def api_router(runtime: Runtime) -> APIRouter:
    """The probes and every /api/v1 route but the dashboard's, for one runtime."""
    router = APIRouter()
    for add in (_probe_routes, _scoring_routes, _model_routes, _history_routes):
        add(router, runtime)
    return router


def _probe_routes(router: APIRouter, runtime: Runtime) -> None:
    """Liveness, readiness, status, Prometheus metrics."""

    @router.get("/healthz", summary="The process is alive (and which configuration it runs)")
    async def healthz() -> dict[str, Any]:
        status = runtime.status()
        return {"status": "alive", "pid": os.getpid(),
                "config_generation": status["config_generation"],
                "last_reload": status["last_reload"]}

    @router.get("/readyz", summary="200 only when a model is deployed and loaded")
    async def readyz() -> Response:
        deployed = runtime.slot.state.deployed
        if deployed is None:
            return error(503, "no model is deployed yet")
        if "registry" in runtime.state_problems:
            return error(503, f"the registry is damaged: {runtime.state_problems['registry']}")
        answer: dict[str, Any] = {"status": "ready", "deployed_version": deployed.version}
        fleet = runtime.fleet
        if fleet is not None and not fleet.reachable:
            # still ready: it serves its last version (a balancer must not drop the whole
            # fleet because the database is away), and says so
            answer["registry"] = (f"unreachable since {fleet.unreachable_since}; serving the "
                                  "last version, catching up when it is back")
        return ORJSONResponse(answer)

    @router.get("/api/v1/status", summary="What serves now, and the daemon's state")
    async def status() -> dict[str, Any]:
        return runtime.status()

    @router.get("/api/v1/fleet", summary="Every daemon on this registry: who serves what")
    async def fleet() -> dict[str, Any]:
        return await run_in_threadpool(runtime.fleet_view)

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def metrics() -> Response:
        return Response(runtime.metrics_exposition(), media_type=CONTENT_TYPE_LATEST)


def _scoring_routes(router: APIRouter, runtime: Runtime) -> None:
    """Scoring, and the no-op floor benchmarks measure it against."""

    @router.post("/api/v1/score", summary="Score WiFi log records with the deployed model",
              openapi_extra=SCORE_SCHEMA)
    async def score(request: Request) -> Response:
        payload = await read_json(request, runtime.settings.api.max_request_bytes)
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            return error(422, 'the body must be a JSON object {"records": [...]}')
        explain, top = _explain_options(payload)
        result = await score_routed(runtime, payload["records"])
        if explain:  # about a millisecond a record: off the event loop
            answer = await run_in_threadpool(runtime.answer, result, True, top)
        else:
            answer = runtime.answer(result)
        return Response(orjson.dumps(answer), media_type="application/json")

    @router.post("/api/v1/noop", summary="Reads the body and answers {} (the HTTP stack's floor, "
              "for benchmarks)")
    async def noop(request: Request) -> Response:
        await read_json(request, runtime.settings.api.max_request_bytes)
        return Response(b"{}", media_type="application/json")


def _explain_options(payload: dict[str, Any]) -> tuple[bool, int]:
    """``"explain": true`` and the optional ``"top": n`` of a score request."""
    explain = payload.get("explain", False)
    if not isinstance(explain, bool):
        raise HTTPException(422, f'"explain" must be true or false, not {explain!r}')
    top = payload.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise HTTPException(422, f'"top" must be a whole number of contributions >= 1, '
                            f"not {top!r}")
    return explain, top


def _model_routes(router: APIRouter, runtime: Runtime) -> None:
    """The versions: list, show, import, validate, deploy, roll back."""
    manager = runtime.manager
    registry = runtime.manager.registry

    @router.get("/api/v1/models", summary="Every version the registry knows, newest import first")
    async def models() -> list[dict[str, Any]]:
        deployed, fallback = serving_pair(runtime.slot)
        candidate = candidate_version(runtime.slot)
        return [version_view(r, deployed, fallback, candidate) for r in registry.list_versions()]

    @router.get("/api/v1/models/{version}", summary="One version with its full report and metadata")
    async def model(version: str) -> dict[str, Any]:
        row = registry.get_version(version)
        if row is None:
            raise UnknownVersion(version)
        deployed, fallback = serving_pair(runtime.slot)
        return {**version_view(row, deployed, fallback, candidate_version(runtime.slot)),
                "report": row.report,
                "metadata": version_metadata(row, deployed, fallback),
                "checksums": row.checksums}

    # response_model: the 200 answer's schema; a refusal is a Response, which FastAPI sends as is
    @router.post("/api/v1/models/import", summary="Import one folder of the training service now",
                 response_model=dict[str, Any])
    async def import_one(body: ImportRequest) -> dict[str, Any] | Response:
        outcome = await run_in_threadpool(manager.import_path, body.path, body.validate_artifact)
        return import_answer(outcome, serving_pair(runtime.slot)[0])

    @router.post("/api/v1/models/import-latest",
              summary="Import the training service's newest artifact now",
              response_model=dict[str, Any])
    async def import_latest(body: ImportLatestRequest | None = None) -> dict[str, Any] | Response:
        folder = await run_in_threadpool(manager.latest_folder)
        if folder is None:
            return error(404, f"no artifact with metadata in {manager.models_dir}")
        gate = None if body is None else body.validate_artifact
        outcome = await run_in_threadpool(manager.import_path, str(folder.path), gate)
        return import_answer(outcome, serving_pair(runtime.slot)[0])

    @router.post("/api/v1/models/{version}/validate", summary="Re-run validation of a version")
    async def validate(version: str) -> dict[str, Any]:
        return await run_in_threadpool(manager.revalidate, version)

    @router.post("/api/v1/models/{version}/deploy", summary="Deploy a version now")
    async def deploy(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.deploy, version)
        return {"deployed_version": serving, "fallback_version": serving_pair(runtime.slot)[1]}

    @router.post("/api/v1/models/rollback", summary="Roll back to the previous deployed version")
    async def rollback() -> dict[str, Any]:
        serving = await run_in_threadpool(manager.rollback, None)
        return {"deployed_version": serving, "fallback_version": serving_pair(runtime.slot)[1]}

    @router.post("/api/v1/models/{version}/rollback", summary="Roll back to a named version")
    async def rollback_to(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.rollback, version)
        return {"deployed_version": serving, "fallback_version": serving_pair(runtime.slot)[1]}


def _history_routes(router: APIRouter, runtime: Runtime) -> None:
    """What happened: deployments, transfers, drift, quarantine, the training folder."""
    manager = runtime.manager
    registry = runtime.manager.registry

    @router.get("/api/v1/deployments", summary="The deployment history, newest first")
    async def deployments(limit: int = 200) -> list[dict[str, Any]]:
        return [
            {"id": d.id, "from_version": d.from_version, "to_version": d.to_version,
             "at": d.at, "reason": d.reason, "actor": d.actor}
            for d in registry.deployments(max(1, min(limit, 10_000)))
        ]

    @router.get("/api/v1/transfer-history", summary="Every import attempt, newest first")
    async def transfers(limit: int = 200) -> list[dict[str, Any]]:
        return [
            {"id": t.id, "version": t.version, "source_path": t.source_path,
             "local_path": t.local_path, "transferred_at": t.transferred_at,
             "status": t.status, "detail": t.detail or None}
            for t in registry.transfers(max(1, min(limit, 10_000)))
        ]

    @router.get("/api/v1/drift", summary="The deployed version's last scheduled drift "
                "evaluation (reading it evaluates and writes nothing)")
    async def drift() -> dict[str, Any]:
        state = runtime.slot.state
        deployed = state.deployed
        if deployed is None:
            return {"deployed_version": None, "reports": {}}
        report = await run_in_threadpool(runtime.monitors.report, deployed.version)
        return {"deployed_version": deployed.version, "reports": {deployed.version: report}}

    @router.get("/api/v1/drift/history",
             summary="Drift evaluations and alarms, newest first")
    async def drift_history(limit: int = 200) -> dict[str, Any]:
        limit = max(1, min(limit, 5000))
        return {"evaluations": [history_evaluation(e)
                                for e in registry.events("drift_evaluation", limit)],
                "alarms": registry.events("drift_alarm", limit)}

    @router.get("/api/v1/anomalies", summary="Recent anomalies with their explanations, newest "
             "first (since: ISO time they were scored; host: exact host)")
    async def anomalies(since: str | None = None, host: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        return await run_in_threadpool(runtime.monitors.anomalies.read, anomaly_since(since),
                                       host, max(1, min(limit, MAX_ANOMALIES)))

    @router.get("/api/v1/quarantine", summary="Folders rejected as they stand, with the reason; "
             "each is reconsidered when its content changes")
    async def quarantine() -> list[dict[str, Any]]:
        return [
            {"folder": f.name, "version": f.version, "outcome": f.outcome, "reason": f.reason,
             "at": f.at, "fingerprint": f.fingerprint}
            for f in sorted(registry.folders().values(), key=lambda f: f.at, reverse=True)
            if f.outcome in ("rejected", "conflict")
        ]

    @router.get("/api/v1/training-service/models",
             summary="What the training service's models folder holds now, newest first")
    async def training_models() -> list[dict[str, Any]]:
        return await run_in_threadpool(manager.training_models)


# what the drift history keeps of each signal of an evaluation (GET /api/v1/drift has them all)
HISTORY_SIGNAL_KEYS = ("name", "status", "statistic", "p_value", "effect_size")


def history_evaluation(evaluation: dict[str, Any]) -> dict[str, Any]:
    """A recorded drift evaluation as the history lists it: its signals in brief, so that the
    dashboard's poll of 200 of them stays small."""
    return {**evaluation, "signals": [{key: signal.get(key) for key in HISTORY_SIGNAL_KEYS}
                                      for signal in evaluation.get("signals", [])]}
