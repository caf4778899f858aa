"""Serving: the deployed model, its atomic swap, and the last good version as fallback.

The servables it holds are built by the Loader stage (:class:`~core.loader.ServableModel`:
everything needed to score records with one version, prepared at load time so that the request
path does no lookups). :class:`ServingSlot` holds the deployed and fallback servables as one
immutable :class:`SlotState`; a swap replaces that reference in one step under a lock, and
scoring reads the reference once and never takes the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from modeld.core.errors import NoModelDeployed, RecordInvalid
from modeld.core.loader import Scores, ServableModel


@dataclass(frozen=True, slots=True)
class SlotState:
    """What serves now: the deployed version and the last good one behind it, and the
    candidate on trial beside them (shadow scoring, a canary share; see core/shadow.py)."""

    deployed: ServableModel | None
    fallback: ServableModel | None
    candidate: ServableModel | None = None


def _unless(candidate: ServableModel | None, deployed: ServableModel | None
            ) -> ServableModel | None:
    if candidate is None or deployed is None or candidate.version != deployed.version:
        return candidate
    return None


class ServingSlot:
    """Holds the deployed model; swapped by the manager, read by every scoring thread.

    ``swap`` and ``set`` take the one lock; ``score`` reads ``state`` once and never locks, so a
    request in flight finishes on the model it started with. When the deployed model raises
    while scoring, the batch is answered by the fallback and ``on_fallback`` is told.
    """

    def __init__(
        self,
        on_fallback: Callable[[str, str | None, str], None] | None = None,
        anomaly_threshold: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.state = SlotState(None, None)
        self._on_fallback = on_fallback
        # model.anomaly_threshold: when set, is_anomaly = score > it, for every version; a
        # serving policy rather than part of a model, so a reload changes it at once
        self.anomaly_threshold = anomaly_threshold

    def set(self, deployed: ServableModel | None, fallback: ServableModel | None) -> SlotState:
        """Replace deployed and fallback; the candidate stays unless it is now deployed."""
        with self._lock:
            old = self.state
            self.state = SlotState(deployed, fallback, _unless(old.candidate, deployed))
            return old

    def swap(self, new: ServableModel) -> SlotState:
        """Make ``new`` the deployed model; the old deployed one becomes the fallback. A
        candidate that is now deployed is no longer a candidate."""
        with self._lock:
            old = self.state
            keep = old.deployed if old.deployed is not None else old.fallback
            if keep is not None and keep.version == new.version:
                keep = old.fallback
            self.state = SlotState(new, keep, _unless(old.candidate, new))
            return old

    def set_candidate(self, candidate: ServableModel | None) -> SlotState:
        """Put ``candidate`` on trial beside the deployed model (None: no candidate)."""
        with self._lock:
            old = self.state
            self.state = SlotState(old.deployed, old.fallback, candidate)
            return old

    def score(self, records: Sequence[object]) -> Scores:
        return self._thresholded(self._score(records))

    def score_with(self, servable: ServableModel, records: Sequence[object]) -> Scores:
        """Score with one given servable (a candidate, off or on the request path), under the
        slot's serving policy; raises whatever it raises."""
        return self._thresholded(servable.score_records(records))

    def _thresholded(self, result: Scores) -> Scores:
        threshold = self.anomaly_threshold
        if threshold is None:
            return result
        return replace(result, flags=result.scores > threshold)

    def _score(self, records: Sequence[object]) -> Scores:
        state = self.state
        if state.deployed is None:
            raise NoModelDeployed()
        try:
            return state.deployed.score_records(records)
        except RecordInvalid:
            raise
        except Exception as exc:  # third-party estimator code failed while scoring
            reason = f"{type(exc).__name__}: {exc}"
            fallback = state.fallback
            if self._on_fallback is not None:
                self._on_fallback(
                    state.deployed.version, None if fallback is None else fallback.version, reason
                )
            if fallback is None:
                raise
            result = fallback.score_records(records)
            return Scores(result.version, result.feature_names, result.scores, result.flags,
                          result.features, reason)
