"""Serving: the deployed model, its atomic swap, and the last good version as fallback.

A :class:`ServableModel` is everything needed to score records with one version, prepared at
load time (features, scaler, compiled forest, threshold) so that the request path does no
lookups. :class:`ServingSlot` holds the deployed and fallback servables as one immutable
:class:`SlotState`; a swap replaces that reference in one step under a lock, and scoring reads
the reference once and never takes the lock.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from modeld.core.errors import ModelLoadFailed, NoModelDeployed, RecordInvalid
from modeld.core.features import FeatureExtractor
from modeld.core.forest import compile_isolation_forest

Scorer = Callable[[np.ndarray], np.ndarray]
Flagger = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Scores:
    """The result of scoring one batch: all from one version."""

    version: str
    feature_names: tuple[str, ...]
    scores: np.ndarray
    flags: np.ndarray
    features: np.ndarray
    fallback_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ServableModel:
    """One loaded version, ready to score. Built once per load; immutable afterwards.

    ``score_matrix`` raises whatever the estimator raises; the slot turns that into a fallback.
    """

    version: str
    model_type: str
    feature_names: tuple[str, ...]
    extractor: FeatureExtractor
    transform: Callable[[np.ndarray], np.ndarray] | None
    scorer: Scorer
    flagger: Flagger
    warmup_scores: np.ndarray
    warmup_rows: np.ndarray

    def score_matrix(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.transform(features) if self.transform is not None else features
        scores = self.scorer(x)
        return scores, self.flagger(x, scores)

    def score_records(self, records: Sequence[object]) -> Scores:
        """Score a batch all-or-nothing; raises RecordInvalid naming the first bad record."""
        features = self.extractor.transform(records)
        scores, flags = self.score_matrix(features)
        return Scores(self.version, self.feature_names, scores, flags, features)

    def health_check(self) -> str | None:
        """Re-score the warmup rows: None when finite and equal to load time, else the problem."""
        try:
            scores, _ = self.score_matrix(self.warmup_rows)
        except Exception as exc:  # the estimator is third-party code
            return f"scoring the warmup rows raised {type(exc).__name__}: {exc}"
        if not np.all(np.isfinite(scores)):
            return "scoring the warmup rows gave non-finite scores"
        if not np.allclose(scores, self.warmup_scores, rtol=0, atol=1e-9):
            return "scores on the warmup rows differ from those at load time"
        return None


def _scaler_transform(scaler: Any, width: int) -> Callable[[np.ndarray], np.ndarray]:
    """A fast path for StandardScaler (plain numpy), the scaler's own transform otherwise."""
    n_in = getattr(scaler, "n_features_in_", width)
    if n_in != width:
        raise ValueError(f"the scaler expects {n_in} features, the model {width}")
    mean = getattr(scaler, "mean_", None) if getattr(scaler, "with_mean", False) else None
    scale = getattr(scaler, "scale_", None) if getattr(scaler, "with_std", False) else None
    if type(scaler).__name__ == "StandardScaler":
        mean_a = np.zeros(width) if mean is None else np.asarray(mean, dtype=np.float64)
        scale_a = np.ones(width) if scale is None else np.asarray(scale, dtype=np.float64)
        return lambda x: (x - mean_a) / scale_a
    transform = scaler.transform

    def generic(x: np.ndarray) -> np.ndarray:
        return np.asarray(transform(x), dtype=np.float64)

    return generic


def _scorer_for(estimator: Any) -> tuple[Scorer, Flagger]:
    """Score higher-is-more-anomalous; flag by the model's own decision rule."""
    if type(estimator).__name__ == "IsolationForest":
        forest = compile_isolation_forest(estimator)
        threshold = -float(forest.offset_)
        return (lambda x: -forest.score_samples(x)), (lambda _x, s: s > threshold)
    score_samples = estimator.score_samples
    if hasattr(estimator, "offset_"):
        threshold = -float(estimator.offset_)
        return (lambda x: -np.asarray(score_samples(x), dtype=np.float64)), (
            lambda _x, s: s > threshold
        )
    predict = estimator.predict
    return (lambda x: -np.asarray(score_samples(x), dtype=np.float64)), (
        lambda x, _s: np.asarray(predict(x)) == -1
    )


def build_servable(
    version: str,
    model_type: str,
    estimator: Any,
    scaler: Any | None,
    feature_names: Sequence[str],
    warmup_records: Sequence[object],
    warmup_row_count: int,
) -> ServableModel:
    """Prepare one version for serving and warm it by scoring sample rows.

    Called by the manager on the thread that imports or deploys. Raises ModelLoadFailed with
    the reason when anything about the model cannot serve: it is never half-built.
    """
    width = len(feature_names)
    try:
        transform = None if scaler is None else _scaler_transform(scaler, width)
        scorer, flagger = _scorer_for(estimator)
        extractor = FeatureExtractor(list(feature_names))
        rows = _warmup_rows(extractor, warmup_records, scaler, width, warmup_row_count)
        servable = ServableModel(
            version, model_type, tuple(feature_names), extractor, transform, scorer, flagger,
            np.empty(0), rows,
        )
        with warnings.catch_warnings():
            # Fitted on a DataFrame, served with arrays: sklearn warns on every call; harmless.
            warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
            scores, flags = servable.score_matrix(rows)
    except RecordInvalid as exc:
        raise ModelLoadFailed(version, f"warmup record {exc.index}: {exc.problem}") from exc
    except Exception as exc:  # third-party estimator code: any failure means "cannot serve"
        raise ModelLoadFailed(version, f"{type(exc).__name__}: {exc}") from exc
    if scores.shape != (len(rows),) or flags.shape != (len(rows),):
        raise ModelLoadFailed(version, f"scoring {len(rows)} rows gave shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ModelLoadFailed(version, "scoring the warmup rows gave non-finite scores")
    return ServableModel(
        version, model_type, tuple(feature_names), extractor, transform, scorer, flagger,
        scores, rows,
    )


def _warmup_rows(
    extractor: FeatureExtractor,
    records: Sequence[object],
    scaler: Any | None,
    width: int,
    count: int,
) -> np.ndarray:
    if records:
        return extractor.transform(records)
    # No warmup records: rows around the training centre when a scaler tells where it is.
    centre = np.zeros(width)
    mean = getattr(scaler, "mean_", None)
    if mean is not None and np.shape(mean) == (width,):
        centre = np.asarray(mean, dtype=np.float64)
    rng = np.random.default_rng(0)
    return np.asarray(centre + rng.standard_normal((count, width)), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SlotState:
    """What serves now: the deployed version and the last good one behind it."""

    deployed: ServableModel | None
    fallback: ServableModel | None


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
        with self._lock:
            old = self.state
            self.state = SlotState(deployed, fallback)
            return old

    def swap(self, new: ServableModel) -> SlotState:
        """Make ``new`` the deployed model; the old deployed one becomes the fallback."""
        with self._lock:
            old = self.state
            keep = old.deployed if old.deployed is not None else old.fallback
            if keep is not None and keep.version == new.version:
                keep = old.fallback
            self.state = SlotState(new, keep)
            return old

    def score(self, records: Sequence[object]) -> Scores:
        result = self._score(records)
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
