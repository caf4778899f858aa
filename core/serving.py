"""Serving: the deployed model, its atomic swap, and the last good version as fallback.

The servables it holds are built by the Loader stage (:class:`~core.loader.ServableModel`:
everything needed to score records with one version, prepared at load time so that the request
path does no lookups). :class:`ServingSlot` holds the deployed and fallback servables as one
immutable :class:`SlotState`; a swap replaces that reference in one step under a lock, and
scoring reads the reference once and never takes the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from modeld.core.errors import NoModelDeployed, RecordInvalid, VersionNotLoaded
from modeld.core.features import Batch
from modeld.core.loader import Scores, ServableModel


@dataclass(frozen=True, slots=True)
class SlotState:
    """What serves now: the deployed version and the last good one behind it, and the
    candidate on trial beside them (shadow scoring, a canary share; see core/shadow.py)."""

    deployed: ServableModel | None
    fallback: ServableModel | None
    candidate: ServableModel | None = None

    def loaded(self) -> tuple[ServableModel, ...]:
        """Every version loaded now, deployed first, then the fallback and the candidate: the
        versions that can score by name."""
        found: dict[str, ServableModel] = {}
        for s in (self.deployed, self.fallback, self.candidate):
            if s is not None:
                found.setdefault(s.version, s)
        return tuple(found.values())

    def find(self, version: str) -> ServableModel:
        """The loaded servable of ``version``; raises VersionNotLoaded when it is not loaded."""
        for servable in self.loaded():
            if servable.version == version:
                return servable
        raise VersionNotLoaded(version, tuple(s.version for s in self.loaded()))


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
        confidence_threshold: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.state = SlotState(None, None)
        self._on_fallback = on_fallback
        # model.anomaly_threshold: when set, is_anomaly = score > it, for every version; a
        # serving policy rather than part of a model, so a reload changes it at once
        self.anomaly_threshold = anomaly_threshold
        # model.confidence_threshold: when set, a flag also needs confidence >= it
        self.confidence_threshold = confidence_threshold

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

    def score(self, records: Batch, version: str | None = None) -> Scores:
        """Score with the deployed model (the fallback answers when it fails), or with the
        loaded ``version`` alone: a client that names a version gets that version or an error."""
        if version is None:
            return self._thresholded(self._score(records))
        return self._thresholded(self.state.find(version).score_records(records))

    def score_with(self, servable: ServableModel, records: Batch) -> Scores:
        """Score with one given servable (a candidate, off or on the request path), under the
        slot's serving policy; raises whatever it raises."""
        return self._thresholded(servable.score_records(records))

    def _thresholded(self, result: Scores) -> Scores:
        threshold, needed = self.anomaly_threshold, self.confidence_threshold
        flags = result.flags if threshold is None else result.scores > threshold
        if needed is not None:
            flags = flags & (result.confidence >= needed)
        return result if flags is result.flags else replace(result, flags=flags)

    def _score(self, records: Batch) -> Scores:
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
            return replace(fallback.score_records(records), fallback_reason=reason)
