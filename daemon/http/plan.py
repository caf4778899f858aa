"""The seed plan's model-management API at /api/v1/model-management, as its callers use it.

Every path, request form and response field is the plan's (its "4.1 Model Management API"),
with modeld's extra fields added; a service written against the plan switches to modeld by
changing its base URL (docs/migrating.md). Each route calls the same manager operation as
modeld's own /api/v1 route for the same thing, so there is one implementation: this module
only renames fields. Handlers run on uvicorn's event loop and send the manager's work to the
thread pool; core's errors reach the app's one translation into 404/409/422 with a ``detail``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from modeld.core.errors import UnknownVersion
from modeld.core.lifecycle import lifecycle_state
from modeld.core.manager import iso, utc_now
from modeld.core.registry import TransferRow
from modeld.daemon.http.views import (
    error,
    import_answer,
    serving_pair,
    version_metadata,
    version_view,
)
from modeld.daemon.process.runtime import Runtime

__all__ = ["PREFIX", "plan_router"]

PREFIX = "/api/v1/model-management"
NO_NEW_MODELS = "No new models to import"

VALIDATE_QUERY = Query(None, description="false skips the quality gate, never the checks that "
                       "keep an unservable model out (default: integration.validate_imports)")


def plan_router(runtime: Runtime) -> APIRouter:
    """The plan's router for one runtime; included once by ``create_app``."""
    router = APIRouter(prefix=PREFIX, tags=["model-management"])
    manager = runtime.manager
    registry = manager.registry

    @router.get("/training-service/models",
                summary="Models in the training service's folder, newest first")
    async def training_service_models() -> list[dict[str, Any]]:
        rows = await run_in_threadpool(manager.training_models)
        return [{**row, "evaluation_metrics": row["metrics"]} for row in rows]

    # Declared before "/{version}/..." so that a folder path ending in "/deploy" stays a path.
    @router.post("/import/{model_path:path}",
                 summary="Import a folder of the training service (absolute, or relative to "
                 "its models folder)")
    async def import_model(model_path: str, validate: bool | None = VALIDATE_QUERY) -> Any:
        outcome = await run_in_threadpool(manager.import_path, model_path, validate)
        return plan_import_answer(runtime, outcome, model_path)

    @router.post("/import-latest", summary="Import the newest model not imported yet")
    async def import_latest(validate: bool | None = VALIDATE_QUERY) -> Any:
        folder = await run_in_threadpool(manager.latest_folder, True)
        if folder is None:
            if await run_in_threadpool(manager.latest_folder) is None:
                return error(404, f"{NO_NEW_MODELS}: no models found in {manager.models_dir}")
            return error(409, f"{NO_NEW_MODELS}: every model in {manager.models_dir} is "
                         "imported already")
        outcome = await run_in_threadpool(manager.import_path, str(folder.path), validate)
        return plan_import_answer(runtime, outcome, str(folder.path))

    @router.post("/{version}/validate", summary="Validate a stored version again")
    async def validate_version(version: str) -> dict[str, Any]:
        report = await run_in_threadpool(manager.revalidate, version)
        return plan_validation(report)

    def serving_answer(serving: str, status: str, at_key: str) -> dict[str, Any]:
        """The plan's deploy/rollback answer; the time is that of the deployment row."""
        row = registry.get_version(serving)
        return {"version": serving, "status": status,
                at_key: row.deployed_at if row is not None and row.deployed_at else iso(utc_now()),
                "fallback_version": serving_pair(runtime.slot)[1]}

    @router.post("/{version}/deploy", summary="Deploy a version")
    async def deploy(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.deploy, version)
        return serving_answer(serving, "deployed", "deployed_at")

    @router.post("/{version}/rollback", summary="Roll back to a version")
    async def rollback(version: str) -> dict[str, Any]:
        serving = await run_in_threadpool(manager.rollback, version)
        return serving_answer(serving, "rolled_back", "rolled_back_at")

    @router.get("/transfer-history", summary="Every import attempt, oldest first (the plan's "
                "appended file)")
    async def transfer_history(limit: int = 1000) -> list[dict[str, Any]]:
        rows = registry.transfers(max(1, min(limit, 10_000)))
        return [plan_transfer(row) for row in reversed(rows)]

    @router.get("/{version}/drift", summary="The plan's drift check of a version, from modeld's "
                "drift statistics")
    async def drift(version: str) -> dict[str, Any]:
        row = registry.get_version(version)
        if row is None:
            raise UnknownVersion(version)
        return await run_in_threadpool(runtime.monitors.plan_drift, version)

    @router.get("/models", summary="Every stored version with the plan's fields")
    async def models() -> list[dict[str, Any]]:
        deployed, fallback = serving_pair(runtime.slot)
        return [
            {**version_view(row, deployed, fallback), "model_path": row.store_path,
             "status": version_metadata(row, deployed, fallback)["deployment_info"]["status"],
             "lifecycle": lifecycle_state(row.status, row.version, row.deployed_at, deployed,
                                          fallback),
             "import_info": row.metadata.get("import_info")}
            for row in registry.list_versions()
        ]

    return router


def plan_import_answer(runtime: Runtime, outcome: Any, original_path: str) -> Any:
    """The plan's import answer (``imported_version, local_path, original_path, status``)
    around modeld's; a refused import keeps modeld's status code and ``detail``."""
    answer = import_answer(outcome, serving_pair(runtime.slot)[0])
    if isinstance(answer, Response):
        return answer
    row = None if outcome.version is None else runtime.manager.registry.get_version(
        outcome.version)
    return {**answer, "imported_version": outcome.version,
            "local_path": None if row is None else row.store_path,
            "original_path": original_path, "status": "imported", "outcome": outcome.status}


def plan_validation(report: dict[str, Any]) -> dict[str, Any]:
    """modeld's validation report with the plan's names: ``is_valid``, ``score``."""
    return {**report, "is_valid": report["accepted"], "score": report["quality_score"]}


def plan_transfer(row: TransferRow) -> dict[str, Any]:
    """A transfer row as the plan's transfer_history.json holds it; ``transfer_id`` is the
    imported version as in the plan (``#<id>`` for an attempt that named none)."""
    return {"transfer_id": row.version or f"#{row.id}", "original_path": row.source_path,
            "local_path": row.local_path, "transferred_at": row.transferred_at,
            "status": "imported" if row.status == "completed" else row.status,
            "id": row.id, "version": row.version, "detail": row.detail or None}
