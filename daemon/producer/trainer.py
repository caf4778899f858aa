"""The trainer: a complete artifact in the contract's layout, for training services and demos.

modeld does not train the production models (the training service does), but it ships the
reference exporter for them: ``modeld train`` and the demo build their artifacts here, and the
tests use it to play a careful producer. Two pure steps, each callable from a test:

- ``train_artifact`` extracts features with modeld's own ``FeatureExtractor`` (so training and
  serving compute the same numbers), fits an IsolationForest or a LocalOutlierFactor with
  ``novelty=True``, evaluates it honestly on a held-out split when labels exist, and returns
  every file's bytes with a ``files`` manifest;
- ``write_artifact`` writes those bytes into ``_tmp_<version>`` inside the models folder, fsyncs
  them, and renames the folder into place (atomic: modeld never sees half of it).

Nothing here reads the clock or global randomness: ``now`` and ``seed`` are arguments.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import joblib
import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from modeld.core.errors import ArtifactError
from modeld.core.features import FEATURE_CATALOG, FeatureExtractor
from modeld.core.store import fsync_path
from modeld.daemon.producer.simulator import ANOMALY_LABEL

__all__ = [
    "DEFAULT_CONTAMINATION",
    "DEFAULT_FEATURES",
    "MODEL_TYPES",
    "ModelFormat",
    "TrainedArtifact",
    "train_artifact",
    "write_artifact",
]

MODEL_TYPES: Final = ("IsolationForest", "LocalOutlierFactor")

DEFAULT_FEATURES: Final[tuple[str, ...]] = (
    "hour_of_day",
    "message_length",
    "is_auth_failure",
    "is_deauth",
    "is_handshake_failure",
    "is_eap_failure",
    "is_reject",
    "is_error",
    "reason_code",
    "status_code",
    "signal_dbm",
    "process_hostapd",
)
"""The catalog features a model gets when none are named: when (hour), what kind of event,
what the line carries (codes, signal) and who wrote it. Every one is computed by modeld from
the raw record. Few on purpose: an IsolationForest isolates a rare flag much faster among a
dozen features than among thirty (on the simulated logs the held-out ROC AUC goes from about
0.93 with 18 features to about 0.97 with these), and drift monitoring stays cheap."""

DEFAULT_CONTAMINATION: Final = 0.02
"""The share of normal traffic the model's decision flags. scikit-learn's "auto" rule assumes
continuous features; on log lines, where many rows are identical, it flags a fifth of ordinary
traffic on the simulated logs, which no operator would keep watching."""

HOLDOUT_FRACTION: Final = 0.3
REFERENCE_ROWS: Final = 20_000
WARMUP_RECORDS: Final = 16
MIN_LABELLED_CLASS: Final = 2

ModelFormat = Literal["joblib", "skops"]


# --------------------------------------------------------------------------- training


@dataclass(frozen=True, slots=True)
class TrainedArtifact:
    """One trained model as the bytes of its files, ready for ``write_artifact``.

    ``files`` holds every file of the folder; ``metadata.json`` comes last and its ``files``
    manifest covers all the others. ``estimator`` and ``scaler`` are the fitted objects (for
    callers that want to score in process).
    """

    version: str
    metadata: Mapping[str, Any]
    files: Mapping[str, bytes]
    estimator: Any = field(repr=False)
    scaler: Any = field(default=None, repr=False)


def _labels(records: Sequence[Mapping[str, Any]]) -> npt.NDArray[np.bool_] | None:
    """True for anomalies; None when no record carries a label (then nothing is evaluated)."""
    if not any("label" in r for r in records):
        return None
    return np.array([r.get("label") == ANOMALY_LABEL for r in records], dtype=bool)


def _split(n: int, labels: npt.NDArray[np.bool_] | None, seed: int
           ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Indices (train, held out); stratified by label so both sides see anomalies."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(~labels),
                                                     np.flatnonzero(labels)]
    train: list[npt.NDArray[np.intp]] = []
    held: list[npt.NDArray[np.intp]] = []
    for group in groups:
        shuffled = rng.permutation(group)
        cut = round(len(shuffled) * HOLDOUT_FRACTION)
        held.append(shuffled[:cut])
        train.append(shuffled[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def _evaluate(y_true: npt.NDArray[np.bool_], scores: npt.NDArray[np.float64],
              flagged: npt.NDArray[np.bool_]) -> dict[str, float] | None:
    """Metrics of the model's own decision on held-out labelled rows, or None when one class
    is (nearly) missing and they would mean nothing."""
    positives = int(y_true.sum())
    if positives < MIN_LABELLED_CLASS or len(y_true) - positives < MIN_LABELLED_CLASS:
        return None
    return {
        "f1_score": round(float(f1_score(y_true, flagged, zero_division=0)), 4),
        "roc_auc": round(float(roc_auc_score(y_true, scores)), 4),
        "precision": round(float(precision_score(y_true, flagged, zero_division=0)), 4),
        "recall": round(float(recall_score(y_true, flagged, zero_division=0)), 4),
    }


def _dump(obj: Any, fmt: ModelFormat) -> bytes:
    buffer = io.BytesIO()
    if fmt == "skops":
        import skops.io

        skops.io.dump(obj, buffer)
    else:
        joblib.dump(obj, buffer)
    return buffer.getvalue()


def _npz(**arrays: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _manifest(files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in files.items()}


def _warmup(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "label"} for r in records]


def _time_range(records: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    stamps = sorted(r["timestamp"] for r in records if isinstance(r.get("timestamp"), str))
    return {"from": stamps[0], "to": stamps[-1]} if stamps else None


def train_artifact(
    records: Sequence[Mapping[str, Any]],
    *,
    model_type: str = "IsolationForest",
    feature_names: Sequence[str] | None = None,
    version: str | None = None,
    n_estimators: int = 100,
    seed: int = 0,
    fmt: ModelFormat = "joblib",
    contamination: float | Literal["auto"] = DEFAULT_CONTAMINATION,
    max_features: int | float = 1.0,
    now: datetime,
) -> TrainedArtifact:
    """Train one model on ``records`` and return its artifact (nothing is written).

    Called by ``modeld train``, the demo and tests, on the caller's thread. Records are split
    into training and held-out parts (70/30, stratified by label). When any record carries a
    ``label``, the model is fitted on the training part's normal records only, and
    ``evaluation_info.basic_metrics`` holds F1, precision and recall of the model's own
    anomaly decision and the ROC AUC of its score, all on the held-out part; without labels
    the model is fitted on the whole training part and no metric is reported. The drift
    reference (``reference.npz``) is the held-out normal records' features and scores (higher
    is more anomalous, as modeld serves them). ``contamination`` is scikit-learn's: "auto", or
    the share of training rows the decision threshold flags (``DEFAULT_CONTAMINATION``).
    ``max_features`` is IsolationForest's (``model.max_features``): the share (a float) or
    number (an int) of features each tree draws.

    Raises ``RecordInvalid`` for a record modeld could not score either, and ``ValueError``
    for a model type, format or feature name it cannot train with, or too few records.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if fmt not in ("joblib", "skops"):
        raise ValueError(f"format {fmt!r} is not joblib or skops")
    names = tuple(DEFAULT_FEATURES if feature_names is None else feature_names)
    unknown = [n for n in names if n not in FEATURE_CATALOG]
    if not names or unknown:
        raise ValueError(f"feature names must be catalog features; unknown: {unknown or 'none'}")
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.astimezone(UTC)

    matrix = FeatureExtractor(names).transform(list(records))
    labels = _labels(records)
    train_idx, held_idx = _split(len(records), labels, seed)
    fit_idx = train_idx if labels is None else train_idx[~labels[train_idx]]
    normal_held = held_idx if labels is None else held_idx[~labels[held_idx]]
    if len(fit_idx) < 10 or len(normal_held) < 2:
        raise ValueError(f"too few records to train and hold out ({len(records)} given, "
                         f"{len(fit_idx)} normal ones to fit)")

    scaler: StandardScaler | None = None
    fit_rows = matrix[fit_idx]
    estimator: IsolationForest | LocalOutlierFactor
    if model_type == "IsolationForest":
        estimator = IsolationForest(n_estimators=n_estimators, contamination=contamination,
                                    max_features=max_features, random_state=seed)
        estimator.fit(fit_rows)
    else:
        # Distances need comparable units; the scaler ships with the model (scaler.<fmt>).
        # Log lines repeat exactly: with more than n_neighbors identical rows the local density
        # is infinite and scores explode to 1e9, so LOF is fitted on the distinct rows.
        scaler = StandardScaler().fit(fit_rows)
        distinct = np.unique(scaler.transform(fit_rows), axis=0)
        if len(distinct) < 3:
            raise ValueError("too few distinct feature rows to fit a LocalOutlierFactor")
        estimator = LocalOutlierFactor(n_neighbors=min(20, len(distinct) - 1), novelty=True,
                                       contamination=contamination)
        estimator.fit(distinct)

    def score(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        x = rows if scaler is None else scaler.transform(rows)
        return np.asarray(-estimator.score_samples(x), dtype=np.float64)

    threshold = -float(estimator.offset_)
    evaluation: dict[str, Any]
    metrics = None
    if labels is not None:
        held_scores = score(matrix[held_idx])
        metrics = _evaluate(labels[held_idx], held_scores, held_scores > threshold)
    if metrics is not None and labels is not None:
        evaluation = {
            "basic_metrics": metrics,
            "holdout_samples": len(held_idx),
            "holdout_anomalies": int(labels[held_idx].sum()),
            "decision": "the model's own threshold (anomaly when -score_samples > -offset_)",
        }
    elif labels is not None:
        evaluation = {"note": "labels present, but the held-out split lacks one of the classes: "
                      "no metric computed"}
    else:
        evaluation = {"note": "no labelled records: no metric computed"}

    rng = np.random.default_rng(seed)
    reference_idx = normal_held
    if len(reference_idx) > REFERENCE_ROWS:
        reference_idx = np.sort(rng.choice(reference_idx, REFERENCE_ROWS, replace=False))
    reference_rows = matrix[reference_idx]
    warmup_idx = rng.choice(normal_held, min(WARMUP_RECORDS, len(normal_held)), replace=False)

    # with fmt="skops" nothing in the folder is a pickle: modeld can load it with
    # security.allow_pickle false
    model_file = f"model.{fmt}"
    files: dict[str, bytes] = {model_file: _dump(estimator, fmt)}
    if scaler is not None:
        files[f"scaler.{fmt}"] = _dump(scaler, fmt)
    # the flags are the model's decisions on the reference rows: the drift monitor's reference
    # anomaly rate, per part of the day like the rest (core/drift/seasonal.py)
    reference_scores = score(reference_rows)
    files["reference.npz"] = _npz(features=reference_rows, scores=reference_scores,
                                  flags=reference_scores > threshold)

    if version is None:
        digest = hashlib.sha256(files[model_file]).hexdigest()[:6]
        version = f"{now:%Y%m%d_%H%M%S}_{digest}"
    training_info: dict[str, Any] = {
        "training_samples": len(fit_idx),
        "feature_names": list(names),
        "holdout_samples": len(held_idx),
        "labelled": labels is not None,
        "records_seen": len(records),
        "data_time_range": _time_range(records),
        "parameters": ({"n_estimators": n_estimators, "contamination": contamination,
                        "random_state": seed} if model_type == "IsolationForest" else
                       {"n_neighbors": estimator.n_neighbors, "novelty": True,
                        "contamination": contamination, "scaler": "StandardScaler",
                        "distinct_rows_fitted": int(estimator.n_samples_fit_)}),
        "trainer": "modeld train",
    }
    metadata: dict[str, Any] = {
        "model_info": {
            "version": version,
            "model_type": model_type,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sklearn_version": sklearn.__version__,
            "python_version": platform.python_version(),
            "numpy_version": np.__version__,
        },
        "training_info": training_info,
        "evaluation_info": evaluation,
        "deployment_info": {"status": "trained"},
        "warmup": _warmup([records[int(i)] for i in sorted(warmup_idx)]),
        "files": _manifest(files),
    }
    files["metadata.json"] = json.dumps(metadata, indent=2).encode()
    return TrainedArtifact(version, metadata, files, estimator, scaler)


# --------------------------------------------------------------------------- writing


def write_artifact(artifact: TrainedArtifact, models_dir: Path) -> Path:
    """Write ``artifact`` as ``models_dir/<version>`` and return that path.

    The files go into ``models_dir/_tmp_<version>`` (the contract's work-in-progress name,
    which modeld never touches), metadata.json last, each fsynced; then the folder is renamed
    into place in one step and ``models_dir`` is fsynced. A reader sees no folder or a complete
    one. Raises ``ArtifactError`` when ``<version>`` already exists (nothing is written) and
    ``OSError`` when the disk refuses (the temporary folder is removed).
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / artifact.version
    if final.exists():
        raise ArtifactError(str(final), "a folder for this version already exists")
    tmp = models_dir / f"_tmp_{artifact.version}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted run of this writer
    try:
        tmp.mkdir()
        order = [n for n in artifact.files if n != "metadata.json"] + ["metadata.json"]
        for name in order:
            with (tmp / name).open("wb") as fh:
                fh.write(artifact.files[name])
                fh.flush()
                os.fsync(fh.fileno())
        fsync_path(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(models_dir)
    return final

