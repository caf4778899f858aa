"""The HTTP API (FastAPI on uvicorn): scoring, state, and the operators' model management.

Handlers run on uvicorn's event loop; operations that take the manager's lock or load models
run in the thread pool. core's errors are translated here, and only here, into status codes
with a ``detail`` a person can act on. No user error is a 500.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from modeld.core.errors import (
    ArtifactError,
    ModeldError,
    ModelLoadFailed,
    NoModelDeployed,
    PathOutsideModels,
    RecordInvalid,
    UnknownVersion,
    VersionConflict,
)
from modeld.core.manager import describe_folder
from modeld.core.registry import VersionRow
from modeld.core.source import scan_models_folder
from modeld.daemon.http.dashboard import mount_dashboard
from modeld.daemon.process.runtime import Runtime

log = structlog.get_logger("modeld.api")

INLINE_BATCH = 64
# The dashboard's page holds no data without the token: its script asks for it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})

STATUS_FOR: list[tuple[type[ModeldError], int]] = [
    (UnknownVersion, 404),
    (VersionConflict, 409),
    (ModelLoadFailed, 409),
    (PathOutsideModels, 400),
    (RecordInvalid, 422),
    (ArtifactError, 422),
    (NoModelDeployed, 503),
]


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, max_length=4096,
                      description="A folder inside <training_service_path>/models")
    validate_artifact: bool = Field(True, alias="validate",
                                    description="false skips the quality gate, not the checks "
                                    "that make a model servable")


class ImportLatestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    validate_artifact: bool = Field(True, alias="validate")


SCORE_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["records"],
            "properties": {"records": {"type": "array", "items": {
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


def version_view(row: VersionRow, deployed: str | None, fallback: str | None) -> dict[str, Any]:
    """A version as the API shows it; ``status`` is derived from what serves now."""
    status = row.status
    if row.version == deployed:
        status = "deployed"
    elif row.version == fallback:
        status = "fallback"
    elif row.status == "available" and row.deployed_at:
        status = "retired"
    return {
        "version": row.version,
        "status": status,
        "model_type": row.model_type,
        "quality_score": row.quality_score,
        "created_at": row.created_at,
        "imported_at": row.imported_at,
        "deployed_at": row.deployed_at,
        "source_path": row.source_path,
        "reason": row.reason or None,
        "warnings": list(row.report.get("warnings", [])),
        "errors": list(row.report.get("errors", [])),
        "metrics": (row.metadata.get("evaluation_info") or {}).get("basic_metrics")
        if isinstance(row.metadata.get("evaluation_info"), dict) else None,
    }


def create_app(runtime: Runtime) -> FastAPI:
    """Build the app for one runtime. Called once by the daemon (and by in-process tests)."""
    app = FastAPI(
        title="modeld",
        version="0.1.0",
        description="Imports, validates, hot-swaps and serves anomaly-detection models for "
        "WiFi access-point logs.",
        default_response_class=ORJSONResponse,
    )
    manager = runtime.manager
    registry = manager.registry

    def error(status: int, detail: str) -> ORJSONResponse:
        return ORJSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(ModeldError)
    async def modeld_error(_request: Request, exc: ModeldError) -> Response:
        for kind, status in STATUS_FOR:
            if isinstance(exc, kind):
                return error(status, str(exc))
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return error(422, f"{where}: {first.get('msg')}")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                    ) -> Response:
        token = runtime.token
        if token is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return ORJSONResponse(
                    {"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
        api = runtime.settings.api
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > api.max_request_bytes
            except ValueError:
                return error(400, "Content-Length is not a number")
            if too_big:
                return error(413, f"request body larger than {api.max_request_bytes} bytes "
                             "(api.max_request_bytes)")
        return await call_next(request)

    async def read_json(request: Request) -> Any:
        api = runtime.settings.api
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > api.max_request_bytes:
                raise HTTPException(413, f"request body larger than {api.max_request_bytes} "
                                    "bytes (api.max_request_bytes)")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HTTPException(400, f"body is not valid JSON: {exc}") from exc

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("request_failed", path=request.url.path, method=request.method,
                      reason=f"{type(exc).__name__}: {exc}")
        return error(500, f"internal error ({type(exc).__name__}); the daemon logged it as "
                     "request_failed")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, str(exc.detail))

    # probes and state -----------------------------------------------------------------------

    @app.get("/healthz", summary="The process is alive (and which configuration it runs)")
    async def healthz() -> dict[str, Any]:
        status = runtime.status()
        return {"status": "alive", "config_generation": status["config_generation"],
                "last_reload": status["last_reload"]}

    @app.get("/readyz", summary="200 only when a model is deployed and loaded")
    async def readyz() -> Response:
        deployed = runtime.slot.state.deployed
        if deployed is None:
            return error(503, "no model is deployed yet")
        return ORJSONResponse({"status": "ready", "deployed_version": deployed.version})

    @app.get("/api/v1/status", summary="What serves now, and the daemon's state")
    async def status() -> dict[str, Any]:
        return runtime.status()

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    # scoring ----------------------------------------------------------------------------

    @app.post("/api/v1/score", summary="Score WiFi log records with the deployed model",
              openapi_extra=SCORE_SCHEMA)
    async def score(request: Request) -> Response:
        payload = await read_json(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            return error(422, 'the body must be a JSON object {"records": [...]}')
        records = payload["records"]
        api = runtime.settings.api
        if not records:  # one result per record: none
            deployed = runtime.slot.state.deployed
            if deployed is None:
                raise NoModelDeployed()
            return ORJSONResponse({"model_version": deployed.version, "results": []})
        if len(records) > api.max_records:
            return error(413, f"{len(records)} records exceed api.max_records "
                         f"({api.max_records})")
        try:
            if len(records) <= INLINE_BATCH:
                result = runtime.score(records)
            else:
                result = await run_in_threadpool(runtime.score, records)
        except ModeldError:
            runtime.metrics.requests.labels("refused").inc()
            raise
        runtime.metrics.requests.labels("ok").inc()
        return Response(orjson.dumps(result), media_type="application/json")

    @app.post("/api/v1/noop", summary="Reads the body and answers {} (the HTTP stack's floor, "
              "for benchmarks)")
    async def noop(request: Request) -> Response:
        await read_json(request)
        return Response(b"{}", media_type="application/json")

    # models -----------------------------------------------------------------------------

    def deployed_pair() -> tuple[str | None, str | None]:
        state = runtime.slot.state
        return (state.deployed.version if state.deployed else None,
                state.fallback.version if state.fallback else None)

    @app.get("/api/v1/models", summary="Every version the registry knows, newest import first")
    async def models() -> list[dict[str, Any]]:
        deployed, fallback = deployed_pair()
        return [version_view(r, deployed, fallback) for r in registry.list_versions()]

    @app.get("/api/v1/models/{version}", summary="One version with its full report and metadata")
    async def model(version: str) -> dict[str, Any]:
        row = registry.get_version(version)
        if row is None:
            raise UnknownVersion(version)
        deployed, fallback = deployed_pair()
        return {**version_view(row, deployed, fallback), "report": row.report,
                "metadata": row.metadata, "checksums": row.checksums}

    @app.post("/api/v1/models/import", summary="Import one folder of the training service now")
    async def import_one(body: ImportRequest) -> dict[str, Any]:
        outcome = await run_in_threadpool(manager.import_path, body.path, body.validate_artifact)
        return import_answer(outcome)

    @app.post("/api/v1/models/import-latest",
              summary="Import the training service's newest artifact now")
    async def import_latest(body: ImportLatestRequest | None = None) -> dict[str, Any]:
        folder = await run_in_threadpool(manager.latest_folder)
        if folder is None:
            return error(404, f"no artifact with metadata in {manager.models_dir}")
        gate = True if body is None else body.validate_artifact
        outcome = await run_in_threadpool(manager.import_path, str(folder.path), gate)
        return import_answer(outcome)

    def import_answer(outcome: Any) -> Any:
        if outcome.status in ("rejected", "incomplete", "failed"):
            status = {"rejected": 422, "incomplete": 409, "failed": 503}[outcome.status]
            return ORJSONResponse({
                "detail": f"{outcome.path}: {outcome.status}: {outcome.reason}",
                "version": outcome.version, "status": outcome.status, "report": outcome.report,
            }, status_code=status)
        return {"version": outcome.version, "status": outcome.status,
                "reason": outcome.reason or None, "report": outcome.report,
                "deployed_version": deployed_pair()[0]}

    @app.post("/api/v1/models/{version}/validate", summary="Re-run validation of a version")
    async def validate(version: str) -> dict[str, Any]:
        return await run_in_threadpool(manager.revalidate, version)

    @app.post("/api/v1/models/{version}/deploy", summary="Deploy a version now")
    async def deploy(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.deploy, version)
        return {"deployed_version": serving, "fallback_version": deployed_pair()[1]}

    @app.post("/api/v1/models/rollback", summary="Roll back to the previous deployed version")
    async def rollback() -> dict[str, Any]:
        serving = await run_in_threadpool(manager.rollback, None)
        return {"deployed_version": serving, "fallback_version": deployed_pair()[1]}

    @app.post("/api/v1/models/{version}/rollback", summary="Roll back to a named version")
    async def rollback_to(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.rollback, version)
        return {"deployed_version": serving, "fallback_version": deployed_pair()[1]}

    @app.get("/api/v1/deployments", summary="The deployment history, newest first")
    async def deployments(limit: int = 200) -> list[dict[str, Any]]:
        return [
            {"id": d.id, "from_version": d.from_version, "to_version": d.to_version,
             "at": d.at, "reason": d.reason, "actor": d.actor}
            for d in registry.deployments(max(1, min(limit, 10_000)))
        ]

    @app.get("/api/v1/transfer-history", summary="Every import attempt, newest first")
    async def transfers(limit: int = 200) -> list[dict[str, Any]]:
        return [
            {"id": t.id, "version": t.version, "source_path": t.source_path,
             "local_path": t.local_path, "transferred_at": t.transferred_at,
             "status": t.status, "detail": t.detail or None}
            for t in registry.transfers(max(1, min(limit, 10_000)))
        ]

    @app.get("/api/v1/drift", summary="The current drift report of the deployed version")
    async def drift() -> dict[str, Any]:
        state = runtime.slot.state
        deployed = state.deployed
        if deployed is None:
            return {"deployed_version": None, "reports": {}}
        report = await run_in_threadpool(runtime.monitors.report, deployed.version,
                                         deployed.feature_names)
        return {"deployed_version": deployed.version, "reports": {deployed.version: report}}

    @app.get("/api/v1/drift/history",
             summary="Drift evaluations and alarms, newest first")
    async def drift_history(limit: int = 200) -> dict[str, Any]:
        limit = max(1, min(limit, 5000))
        return {"evaluations": registry.events("drift_evaluation", limit),
                "alarms": registry.events("drift_alarm", limit)}

    @app.get("/api/v1/quarantine", summary="Folders rejected as they stand, with the reason; "
             "each is reconsidered when its content changes")
    async def quarantine() -> list[dict[str, Any]]:
        return [
            {"folder": f.name, "version": f.version, "outcome": f.outcome, "reason": f.reason,
             "at": f.at, "fingerprint": f.fingerprint}
            for f in sorted(registry.folders().values(), key=lambda f: f.at, reverse=True)
            if f.outcome in ("rejected", "conflict")
        ]

    @app.get("/api/v1/training-service/models",
             summary="What the training service's models folder holds now")
    async def training_models() -> list[dict[str, Any]]:
        return await run_in_threadpool(list_training_folder)

    def list_training_folder() -> list[dict[str, Any]]:
        try:
            folders = scan_models_folder(manager.models_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        known = registry.folders()
        rows = []
        for folder in folders:
            record = known.get(folder.name)
            current = record is not None and record.fingerprint == folder.fingerprint
            imported = None
            if current and record is not None:
                imported = record.outcome
            rows.append({
                "folder": folder.name,
                "path": str(folder.path),
                **describe_folder(folder),
                "imported": imported in ("imported", "duplicate"),
                "outcome": imported or "pending",
                "rejected_reason": record.reason if current and record is not None
                and record.outcome in ("rejected", "conflict") else None,
            })
        return rows

    mount_dashboard(app, runtime)
    return app
