"""The one scoring call of every HTTP surface (modeld's /api/v1/score and the Open Inference
Protocol's infer), so that both refuse, score, monitor and count alike.

Called on uvicorn's event loop. Small batches score right there (handing them to the thread pool
costs more than scoring them); larger ones score in the thread pool so the loop keeps serving.
core's errors propagate to the app's one translation into status codes.
"""

from __future__ import annotations

from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from modeld.core.features import Batch
from modeld.core.loader import Scores
from modeld.daemon.process.runtime import Runtime

__all__ = ["INLINE_BATCH", "score_batch"]

INLINE_BATCH = 64


async def score_batch(runtime: Runtime, batch: Batch, version: str | None = None) -> Scores:
    """Score ``batch`` with the deployed model, or with the loaded ``version``; 413 past
    ``api.max_records``."""
    limit = runtime.settings.api.max_records
    if len(batch) > limit:
        raise HTTPException(413, f"{len(batch)} records exceed api.max_records ({limit})")
    if len(batch) <= INLINE_BATCH:
        return runtime.score(batch, version)
    return await run_in_threadpool(runtime.score, batch, version)
