"""core.training and `modeld train`: simulated logs in, a complete artifact renamed into place out,
judged by modeld's own validation."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn

from modeld.core.errors import ArtifactError
from modeld.core.features import FEATURE_CATALOG, FeatureExtractor, compute_features
from modeld.core.loader import LoadPolicy
from modeld.core.source import manifest_sizes_match, read_manifest, sha256_file
from modeld.core.validate import ValidationPolicy, validate_folder
from modeld.daemon.cli import main
from modeld.daemon.producer.simulator import ANOMALY_LABEL, simulate_wifi_logs
from modeld.daemon.producer.trainer import (
    DEFAULT_FEATURES,
    TrainedArtifact,
    train_artifact,
    write_artifact,
)

NOW = datetime(2026, 11, 28, 10, 15, 0, tzinfo=UTC)
START = NOW - timedelta(days=3)


@pytest.fixture(scope="module")
def logs() -> list[dict[str, Any]]:
    return simulate_wifi_logs(2500, START, seed=3, anomaly_burst=True)


@pytest.fixture(scope="module")
def forest(logs: list[dict[str, Any]]) -> TrainedArtifact:
    return train_artifact(logs, now=NOW, n_estimators=60)


def unlabelled(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "label"} for r in records]


# ------------------------------------------------------------------------- simulation


def test_simulated_logs_are_wifi_lines_in_time_order_and_reproducible(
    logs: list[dict[str, Any]],
) -> None:
    assert simulate_wifi_logs(2500, START, seed=3, anomaly_burst=True) == logs
    assert simulate_wifi_logs(2500, START, seed=4, anomaly_burst=True) != logs
    stamps = [datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")) for r in logs]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START
    assert stamps[-1] - stamps[0] > timedelta(days=1), "normal days, then the burst"
    processes = {r["process"] for r in logs}
    assert {"hostapd", "wpa_supplicant"} <= processes
    assert processes - {"hostapd", "wpa_supplicant"}, "controller lines too"
    for record in logs:  # everything the catalog needs is there
        compute_features(record)

    attack = [r for r in logs if r.get("label") == ANOMALY_LABEL]
    assert 0.05 * len(logs) < len(attack) < 0.15 * len(logs)
    assert {r.get("label") for r in logs} == {None, ANOMALY_LABEL}
    first_attack = logs.index(attack[0])
    assert all("label" not in r for r in logs[:first_attack]), "the burst comes last"
    flood = FeatureExtractor(["is_deauth", "is_auth_failure"]).transform(attack).max(axis=1)
    assert flood.mean() > 0.6, "deauthentication floods and authentication failures"

    assert all("label" not in r for r in simulate_wifi_logs(500, START, 3, anomaly_burst=False))


def test_radio_degrading_moves_the_traffic() -> None:
    names = ["signal_dbm", "has_signal", "is_disconnect", "is_disassoc", "is_deauth"]
    base = FeatureExtractor(names).transform(simulate_wifi_logs(3000, START, 1, False))
    moved = FeatureExtractor(names).transform(
        simulate_wifi_logs(3000, START, 1, False, "radio_degrading"))
    signal_base = base[base[:, 1] == 1, 0].mean()
    signal_moved = moved[moved[:, 1] == 1, 0].mean()
    assert signal_moved < signal_base - 8, "weaker signal"
    gone = base[:, 2:].max(axis=1).mean(), moved[:, 2:].max(axis=1).mean()
    assert gone[1] > 1.5 * gone[0], "twice the disconnections (a larger share of the lines)"


# ------------------------------------------------------------------------- the artifact


def written(artifact: TrainedArtifact, tmp_path: Path) -> Path:
    folder = write_artifact(artifact, tmp_path / "models")
    assert folder == tmp_path / "models" / artifact.version
    return folder


@pytest.mark.parametrize("model_type", ["IsolationForest", "LocalOutlierFactor"])
def test_trained_artifact_passes_modelds_own_validation(
    logs: list[dict[str, Any]], tmp_path: Path, model_type: str
) -> None:
    artifact = train_artifact(logs, model_type=model_type, now=NOW, n_estimators=60)
    folder = written(artifact, tmp_path)
    validation = validate_folder(folder, ValidationPolicy(min_estimators=50), NOW)
    report = validation.report
    assert report.accepted, report.to_dict()
    assert not report.blocking
    assert validation.servable is not None
    assert validation.servable.feature_names == DEFAULT_FEATURES

    meta = json.loads((folder / "metadata.json").read_text())
    info = meta["model_info"]
    assert info["version"] == artifact.version == folder.name
    assert info["model_type"] == model_type
    assert info["created_at"] == "2026-11-28T10:15:00Z"
    assert info["sklearn_version"] == sklearn.__version__
    assert info["numpy_version"] == np.__version__
    assert re.fullmatch(r"3\.\d+\.\d+", info["python_version"])
    assert meta["training_info"]["feature_names"] == list(DEFAULT_FEATURES)
    assert meta["training_info"]["training_samples"] > 1000
    assert meta["deployment_info"] == {"status": "trained"}
    assert len(meta["warmup"]) == 16
    assert all("label" not in r for r in meta["warmup"])
    assert re.fullmatch(r"20261128_101500_[0-9a-f]{6}", artifact.version)

    model = joblib.load(folder / "model.joblib")
    assert type(model).__name__ == model_type
    if model_type == "LocalOutlierFactor":
        assert model.novelty is True
        assert (folder / "scaler.joblib").is_file()
    else:
        assert not (folder / "scaler.joblib").exists()


def test_metrics_are_computed_on_held_out_labelled_records(forest: TrainedArtifact,
                                                           logs: list[dict[str, Any]]) -> None:
    evaluation = forest.metadata["evaluation_info"]
    metrics = evaluation["basic_metrics"]
    assert set(metrics) == {"f1_score", "roc_auc", "precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["roc_auc"] > 0.8, "the attack lines are far from ordinary traffic"
    attacks = sum(r.get("label") == ANOMALY_LABEL for r in logs)
    assert evaluation["holdout_samples"] == round(0.3 * (len(logs) - attacks)) + round(0.3 * attacks)
    assert evaluation["holdout_anomalies"] == round(0.3 * attacks)
    # fitted on the training part's ordinary records only
    assert forest.metadata["training_info"]["training_samples"] == (
        len(logs) - attacks - round(0.3 * (len(logs) - attacks)))


def test_without_labels_metrics_are_left_out_not_invented(logs: list[dict[str, Any]],
                                                          tmp_path: Path) -> None:
    artifact = train_artifact(unlabelled(logs), now=NOW, n_estimators=60)
    evaluation = artifact.metadata["evaluation_info"]
    assert "basic_metrics" not in evaluation
    assert "no labelled records" in evaluation["note"]
    report = validate_folder(written(artifact, tmp_path), ValidationPolicy(), NOW).report
    assert report.accepted
    assert "no evaluation metrics in metadata.json" in report.warnings


def test_labels_of_one_class_only_give_no_metrics(logs: list[dict[str, Any]]) -> None:
    normal = [{**r, "label": "normal"} for r in unlabelled(logs)]
    evaluation = train_artifact(normal, now=NOW, n_estimators=60).metadata["evaluation_info"]
    assert "basic_metrics" not in evaluation


def test_manifest_lists_every_other_file_and_matches(forest: TrainedArtifact,
                                                     tmp_path: Path) -> None:
    folder = written(forest, tmp_path)
    manifest = read_manifest(folder)
    assert manifest is not None
    on_disk = {p.name for p in folder.iterdir()}
    assert set(manifest) == on_disk - {"metadata.json"} == {"model.joblib", "reference.npz"}
    for name, entry in manifest.items():
        assert entry == {"sha256": sha256_file(folder / name),
                         "size": (folder / name).stat().st_size}
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert manifest_sizes_match(manifest, sizes)


def test_reference_holds_features_and_served_scores_of_held_out_normal_records(
    forest: TrainedArtifact, tmp_path: Path
) -> None:
    folder = written(forest, tmp_path)
    with np.load(folder / "reference.npz", allow_pickle=False) as data:
        assert set(data.files) == {"features", "scores", "flags"}
        features, scores = data["features"], data["scores"]
    assert features.shape[1] == len(DEFAULT_FEATURES)
    assert scores.shape == (features.shape[0],)
    model = joblib.load(folder / "model.joblib")
    np.testing.assert_allclose(scores, -model.score_samples(features))
    # the scores modeld serves are higher-is-more-anomalous, like these
    servable = validate_folder(folder, ValidationPolicy(), NOW).servable
    assert servable is not None
    served, _flags = servable.score_matrix(features[:50])
    np.testing.assert_allclose(served, scores[:50], rtol=1e-9, atol=1e-12)


def test_explicit_version_skops_format_and_own_feature_names(logs: list[dict[str, Any]],
                                                             tmp_path: Path) -> None:
    pytest.importorskip("skops")
    artifact = train_artifact(logs, version="wifi-v7", fmt="skops", now=NOW,
                              feature_names=["hour_of_day", "is_deauth", "reason_code"],
                              n_estimators=60)
    folder = written(artifact, tmp_path)
    assert folder.name == "wifi-v7"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.skops",
                                                        "reference.npz"]
    model_bytes = (folder / "model.skops").read_bytes()
    assert artifact.metadata["files"]["model.skops"]["sha256"] == \
        hashlib.sha256(model_bytes).hexdigest()
    validation = validate_folder(folder, ValidationPolicy(), NOW,
                                 loader=LoadPolicy(allow_pickle=False).loader())
    assert validation.report.accepted, validation.report.to_dict()
    assert validation.servable is not None
    assert validation.servable.feature_names == ("hour_of_day", "is_deauth", "reason_code")


def test_a_skops_local_outlier_factor_holds_no_pickle_at_all(logs: list[dict[str, Any]],
                                                             tmp_path: Path) -> None:
    pytest.importorskip("skops")
    artifact = train_artifact(logs, model_type="LocalOutlierFactor", fmt="skops", now=NOW)
    folder = written(artifact, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.skops",
                                                        "reference.npz", "scaler.skops"]
    validation = validate_folder(folder, ValidationPolicy(), NOW,
                                 loader=LoadPolicy(allow_pickle=False).loader())
    assert validation.report.accepted, validation.report.to_dict()


def test_refuses_what_it_cannot_train(logs: list[dict[str, Any]]) -> None:
    with pytest.raises(ValueError, match="not_a_feature"):
        train_artifact(logs, feature_names=["hour_of_day", "not_a_feature"], now=NOW)
    with pytest.raises(ValueError, match="model type"):
        train_artifact(logs, model_type="OneClassSVM", now=NOW)
    with pytest.raises(ValueError, match="too few"):
        train_artifact(logs[:5], now=NOW)
    assert set(FEATURE_CATALOG) >= set(DEFAULT_FEATURES)


# ------------------------------------------------------------------------- writing


class WatchedFiles(Mapping[str, bytes]):
    """An artifact's files that note what the models folder holds each time one is read."""

    def __init__(self, files: Mapping[str, bytes], models_dir: Path) -> None:
        self.files = dict(files)
        self.models_dir = models_dir
        self.seen: list[tuple[str, list[str]]] = []

    def __getitem__(self, name: str) -> bytes:
        self.seen.append((name, sorted(p.name for p in self.models_dir.iterdir())))
        return self.files[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def test_files_go_to_a_tmp_folder_and_are_renamed_into_place(forest: TrainedArtifact,
                                                             tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    watched = WatchedFiles(forest.files, models)
    artifact = TrainedArtifact(forest.version, forest.metadata, watched, forest.estimator)
    folder = write_artifact(artifact, models)

    tmp_name = f"_tmp_{forest.version}"
    assert [name for name, _ in watched.seen][-1] == "metadata.json", "metadata last"
    for _name, listing in watched.seen:
        assert listing == [tmp_name], "nothing visible under its final name while writing"
    assert sorted(p.name for p in models.iterdir()) == [forest.version]
    for name, data in forest.files.items():
        assert (folder / name).read_bytes() == data


def test_a_failed_write_leaves_nothing_behind(forest: TrainedArtifact, tmp_path: Path) -> None:
    models = tmp_path / "models"
    broken = TrainedArtifact("v-broken", forest.metadata,
                             {**forest.files, "no/such/dir": b"x"}, forest.estimator)
    with pytest.raises(OSError):
        write_artifact(broken, models)
    assert list(models.iterdir()) == []


def test_an_existing_version_is_never_overwritten(forest: TrainedArtifact,
                                                  tmp_path: Path) -> None:
    folder = written(forest, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ArtifactError, match="already exists"):
        write_artifact(forest, tmp_path / "models")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [forest.version]


# ------------------------------------------------------------------------- modeld train


def train_cli(*argv: str) -> int:
    """`modeld train ...`, through the real command-line parser, in this process."""
    return main(["train", *argv])


def test_modeld_train_reads_json_lines_and_writes_an_artifact(
    logs: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "logs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in logs) + "\n")
    models = tmp_path / "training" / "models"
    assert train_cli("--input", str(source), "--output", str(models), "--model-type",
                     "LocalOutlierFactor", "--version", "lof-1") == 0
    out = capsys.readouterr().out
    assert "trained LocalOutlierFactor lof-1" in out
    assert "F1" in out
    folder = models / "lof-1"
    assert validate_folder(folder, ValidationPolicy(), datetime.now(UTC)).report.accepted
    assert not [p for p in models.iterdir() if p.name.startswith("_tmp")]

    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert train_cli("--input", str(tmp_path / "bad.jsonl"), "--output", str(models)) == 1
    assert "bad.jsonl:1: not JSON" in capsys.readouterr().err
    assert sorted(os.listdir(models)) == ["lof-1"]
