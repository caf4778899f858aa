"""``modeld train``: JSON-lines records in, a complete artifact renamed into the models folder out.

The reference exporter for training services; the artifact is built by
``modeld.daemon.producer.trainer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modeld.core.errors import ModeldError
from modeld.daemon.producer.simulator import read_jsonl
from modeld.daemon.producer.trainer import (
    DEFAULT_FEATURES,
    MODEL_TYPES,
    ModelFormat,
    TrainedArtifact,
    train_artifact,
    write_artifact,
)


def add_train_command(subparsers: Any,
                      parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``modeld train`` on the CLI's subparsers (``parents``: shared options)."""
    train = subparsers.add_parser(
        "train", parents=list(parents), help="train a model from JSON-lines WiFi log records into a models folder",
        description="Train an IsolationForest (or a LocalOutlierFactor with novelty=True) with "
        "modeld's own feature extraction and write a complete artifact (model, metadata with "
        "a files manifest, drift reference, warmup records) into MODELS_DIR, renamed into place. "
        'Records labelled "label": "anomaly" are held out for honest evaluation metrics; '
        "without labels no metric is reported.")
    train.add_argument("--input", "-i", required=True, type=Path, metavar="FILE.jsonl",
                       help="one JSON record per line (timestamp, host, process, message)")
    train.add_argument("--output", "-o", required=True, type=Path, metavar="MODELS_DIR",
                       help="the training service's models folder")
    train.add_argument("--model-type", choices=MODEL_TYPES, default="IsolationForest")
    train.add_argument("--version", help="default: UTC time and a digest, e.g. "
                       "20261128_101500_3fa2c1")
    train.add_argument("--format", dest="fmt", choices=("joblib", "skops"), default="joblib",
                       help="how the estimator is saved (default joblib)")
    train.add_argument("--features", help="comma-separated catalog feature names "
                       f"(default: {','.join(DEFAULT_FEATURES)})")
    train.add_argument("--n-estimators", type=int, default=100)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-features", type=_max_features, default=None,
                       help="IsolationForest's max_features: a share (0.5) or a count (3) of the "
                       "features per tree (default: model.max_features of --config, else 1.0)")
    train.set_defaults(func=cmd_train)


def _max_features(text: str) -> int | float:
    value = float(text)
    if value.is_integer() and "." not in text:
        return int(value)
    return value


def train_into(path: Path, models_dir: Path, *, model_type: str = "IsolationForest",
               version: str | None = None, fmt: ModelFormat = "joblib",
               feature_names: Sequence[str] | None = None, n_estimators: int = 100,
               seed: int = 0, max_features: int | float = 1.0,
               now: datetime | None = None) -> tuple[TrainedArtifact, Path]:
    """Read ``path``, train, write into ``models_dir``; what ``modeld train`` does."""
    records = read_jsonl(path)
    artifact = train_artifact(
        records, model_type=model_type, feature_names=feature_names, version=version,
        n_estimators=n_estimators, seed=seed, fmt=fmt, max_features=max_features,
        now=now or datetime.now(UTC),
    )
    return artifact, write_artifact(artifact, models_dir)


def describe_metrics(metadata: Mapping[str, Any]) -> str:
    evaluation = metadata.get("evaluation_info") or {}
    metrics = evaluation.get("basic_metrics")
    if not metrics:
        return f"no metrics ({evaluation.get('note', 'no labels')})"
    return (f"F1 {metrics['f1_score']:.2f}, ROC AUC {metrics['roc_auc']:.2f}, precision "
            f"{metrics['precision']:.2f}, recall {metrics['recall']:.2f} on "
            f"{evaluation.get('holdout_samples')} held-out records")


def _configured_max_features(config: str | None) -> int | float:
    """``model.max_features`` of the configuration file (``--config``, else $MODELD_CONFIG)."""
    from modeld.daemon.process.settings import load_settings

    given = config or os.environ.get("MODELD_CONFIG")
    return load_settings(Path(given) if given else None).model.max_features


def cmd_train(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.features.split(",") if n.strip()] if args.features else None
    try:
        max_features = args.max_features
        if max_features is None:
            max_features = _configured_max_features(getattr(args, "config", None))
        artifact, folder = train_into(
            args.input, args.output, model_type=args.model_type, version=args.version,
            fmt=args.fmt, feature_names=names, n_estimators=args.n_estimators, seed=args.seed,
            max_features=max_features)
    except (OSError, ValueError, ModeldError) as exc:
        print(f"modeld: train: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps({"version": artifact.version, "path": str(folder),
                          "metadata": artifact.metadata}, indent=2))
        return 0
    info = artifact.metadata["training_info"]
    print(f"trained {artifact.metadata['model_info']['model_type']} {artifact.version} on "
          f"{info['training_samples']} records ({len(info['feature_names'])} features)")
    print(f"  {describe_metrics(artifact.metadata)}")
    print(f"  wrote {folder}")
    return 0
