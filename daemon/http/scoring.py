"""The one scoring call of every HTTP surface (modeld's /api/v1/score, with a canary's routing,
and the Open Inference Protocol's infer), so that both refuse, score, monitor and count alike.

Called on uvicorn's event loop. Small batches score right there (handing them to the thread pool
costs more than scoring them); larger ones score in the thread pool so the loop keeps serving.
core's errors propagate to the app's one translation into status codes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from modeld.core.features import Batch
from modeld.core.loader import Scores
from modeld.daemon.process.runtime import CanaryScores, Runtime, ScoredT

__all__ = ["INLINE_BATCH", "score_batch", "score_routed"]

# Batches up to this size score on the loop: their features and walk (about 0.5 ms at 256
# records of 20 features) cost no more than parsing their body, which the loop does anyway,
# while a hand-off to the pool and back is two waits for the GIL behind the busy loop (at 100
# records and 4 connections, 415 requests/s handed off, 486 scored on the loop).
INLINE_BATCH = 256


async def score_batch(runtime: Runtime, batch: Batch, version: str | None = None) -> Scores:
    """Score ``batch`` with the deployed model, or with the loaded ``version``; 413 past
    ``api.max_records``."""
    return await _bounded(runtime, len(batch), partial(runtime.score, batch, version))


async def score_routed(runtime: Runtime, records: Sequence[object]) -> Scores | CanaryScores:
    """As ``score_batch``, with a canary's share scored by the candidate (/api/v1/score)."""
    return await _bounded(runtime, len(records), partial(runtime.score_routed, records))


async def _bounded(runtime: Runtime, count: int, scoring: Callable[[], ScoredT]) -> ScoredT:
    limit = runtime.settings.api.max_records
    if count > limit:
        raise HTTPException(413, f"{count} records exceed api.max_records ({limit})")
    if count <= INLINE_BATCH:
        return scoring()
    return await run_in_threadpool(scoring)
