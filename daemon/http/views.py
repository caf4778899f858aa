"""How the HTTP side shows core's values: one view per kind of thing, shared by the API and the
dashboard, and the JSON response class they answer with.

Pure functions of their arguments, called on the event loop or the thread pool.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response
from fastapi.responses import JSONResponse

from modeld.core.lifecycle import lifecycle_state, plan_status
from modeld.core.manager import ImportOutcome
from modeld.core.registry import VersionRow
from modeld.core.serving import ServingSlot

__all__ = ["ORJSONResponse", "candidate_version", "error", "import_answer", "serving_pair",
           "version_metadata", "version_view"]


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error(status: int, detail: str) -> ORJSONResponse:
    """The one error shape: ``{"detail": ...}`` with ``status``."""
    return ORJSONResponse({"detail": detail}, status_code=status)


def serving_pair(slot: ServingSlot) -> tuple[str | None, str | None]:
    """(deployed version, fallback version) as the slot holds them now."""
    state = slot.state
    return (state.deployed.version if state.deployed else None,
            state.fallback.version if state.fallback else None)


def candidate_version(slot: ServingSlot) -> str | None:
    """The candidate on trial beside the deployed version, as the slot holds it now."""
    candidate = slot.state.candidate
    return None if candidate is None else candidate.version


def version_view(row: VersionRow, deployed: str | None, fallback: str | None,
                 candidate: str | None = None) -> dict[str, Any]:
    """A version as the API shows it; ``status`` is its lifecycle state now."""
    evaluation = row.metadata.get("evaluation_info")
    return {
        "version": row.version,
        "status": lifecycle_state(row.status, row.version, row.deployed_at, deployed, fallback,
                                  candidate),
        "model_type": row.model_type,
        "quality_score": row.quality_score,
        "created_at": row.created_at,
        "imported_at": row.imported_at,
        "deployed_at": row.deployed_at,
        "source_path": row.source_path,
        "store_path": row.store_path,
        "reason": row.reason or None,
        "warnings": list(row.report.get("warnings", [])),
        "errors": list(row.report.get("errors", [])),
        "metrics": evaluation.get("basic_metrics") if isinstance(evaluation, dict) else None,
    }


def version_metadata(row: VersionRow, deployed: str | None,
                     fallback: str | None) -> dict[str, Any]:
    """A version's metadata as recorded at import, with the seed plan's
    ``deployment_info.status`` as it is now (``deployed``, ``available``, ...)."""
    state = lifecycle_state(row.status, row.version, row.deployed_at, deployed, fallback)
    deployment = row.metadata.get("deployment_info")
    return {**row.metadata, "deployment_info": {
        **(deployment if isinstance(deployment, dict) else {}), "status": plan_status(state)}}


def import_answer(outcome: ImportOutcome, deployed: str | None) -> dict[str, Any] | Response:
    """An import's outcome as the API answers it: 422/409/503 with a ``detail`` when nothing
    was imported, else the outcome and what serves now."""
    if outcome.status in ("rejected", "incomplete", "failed"):
        status = {"rejected": 422, "incomplete": 409, "failed": 503}[outcome.status]
        return ORJSONResponse({
            "detail": f"{outcome.path}: {outcome.status}: {outcome.reason}",
            "version": outcome.version, "status": outcome.status, "report": outcome.report,
        }, status_code=status)
    return {"version": outcome.version, "status": outcome.status,
            "reason": outcome.reason or None, "report": outcome.report,
            "deployed_version": deployed}
