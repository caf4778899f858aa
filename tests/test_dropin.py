"""The plan's drop-in, one call at a time: its configuration keys, validation rules, scores with
a confidence, compression of the store, and the pieces its router and client stand on."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import io
import json
import logging
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import joblib
import numpy as np
import pytest
import structlog
from sklearn.covariance import EllipticEnvelope
from sklearn.svm import OneClassSVM

from modeld.client import ModeldError as ClientError
from modeld.client import ModelTransferService
from modeld.core.errors import ConfigError, ModelLoadFailed
from modeld.core.indicators import (
    drift_indicators,
    halves_change,
    plan_drift_check,
    relative_change,
)
from modeld.core.manager import ModelManager
from modeld.core.registry import Registry, backup_registry
from modeld.core.serving import ServingSlot
from modeld.daemon.cli import main as cli_main
from modeld.daemon.jobs.alerting import Alerter
from modeld.daemon.jobs.monitoring import Monitors
from modeld.daemon.process.logs import configure_logging
from modeld.daemon.process.metrics import DaemonMetrics
from modeld.daemon.process.settings import (
    LoggingSettings,
    MonitoringSettings,
    config_warnings,
    load_settings,
)
from modeld.daemon.producer.trainer import train_artifact
from tests.helpers import FEATURES, artifact_files, records, train_forest
from tests.test_core import NOW, created, drop, make_manager, validate_files
from tests.test_settings_and_logs import restore_logging  # noqa: F401 (a fixture)

PLAN_CONFIG = Path(__file__).parent / "data" / "plan_model_config.yaml"
WIFI = ["hour_of_day", "day_of_week", "message_length", "x3", "x4"]


# configuration --------------------------------------------------------------------------


def test_the_plans_yaml_loads_and_every_key_is_read(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(PLAN_CONFIG)
    assert settings.version == "2.0.0"
    assert settings.model.type == "IsolationForest"
    assert settings.model.validation_policy().expected_type == "IsolationForest"
    assert (settings.model.anomaly_threshold, settings.model.confidence_threshold) == (0.5, 0.8)
    assert settings.model.max_features == 1.0
    assert settings.storage.compression and settings.storage.backup_enabled
    assert settings.integration.validate_imports and not settings.integration.auto_import
    assert settings.monitoring.drift_detection and settings.monitoring.performance_tracking
    assert settings.logging.format_string == "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
    assert settings.logging.rotation.max_size == 100_000_000
    assert settings.logging.rotation.backup_count == 10
    keys = [key for key, _ in config_warnings(settings)]
    assert {"integration.auto_import", "monitoring.alerting.enabled", "logging.file"} <= set(keys)


@pytest.mark.parametrize(("text", "key"), [
    ("version: '3.0'\n", "version"),
    ("version: banana\n", "version"),
    ("model:\n  type: random_forest\n", "model.type"),
    ("model:\n  max_features: 1.5\n", "model.max_features"),
    ("logging:\n  format: plain\n", "logging.format"),
    ("logging:\n  format: '%(nosuchfield)s'\n", "logging.format"),
    ("monitoring:\n  drift_detection: true\n  enable_drift_detection: false\n",
     "monitoring.enable_drift_detection"),
])
def test_wrong_plan_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_settings(cfg)
    assert refused.value.key == key


def test_both_names_of_drift_detection_work(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    for name in ("drift_detection", "enable_drift_detection"):
        cfg.write_text(f"monitoring:\n  {name}: false\nmodel:\n  type: OneClassSVM\n")
        settings = load_settings(cfg)
        assert settings.monitoring.drift_detection is False
        assert settings.model.type == "OneClassSVM"
        assert "model.type" in dict(config_warnings(settings))
    monkeypatch.setenv("MODELD_MONITORING__DRIFT_DETECTION", "true")
    assert load_settings(cfg).monitoring.drift_detection is True


def test_config_check_prints_the_effective_configuration_and_warnings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELD_API__TOKEN", "hush")
    monkeypatch.setenv("MODELD_API__PORT", "9123")
    assert cli_main(["config", "check", str(PLAN_CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "port: 9123" in out and "hush" not in out and "token: '***'" in out
    assert "type: IsolationForest" in out and "compression: true" in out
    assert "warning: integration.auto_import: " in out
    assert "warning: monitoring.alerting.enabled: " in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  typo: 1\n")
    assert cli_main(["config", "check", str(bad)]) == 2
    assert "model.typo: unknown key" in capsys.readouterr().err


def test_a_logging_format_string_formats_console_and_file(tmp_path: Path,
                                                          restore_logging: None) -> None:  # noqa: F811
    target = tmp_path / "logs" / "model_inference.log"
    settings = LoggingSettings(format="%(levelname)s|%(name)s|%(message)s", file=target)
    stream = io.StringIO()
    configure_logging(settings, stream=stream, environ={})
    structlog.get_logger("modeld.manager").info("model_swapped", old="v1", new="v2")
    for handler in logging.getLogger().handlers:
        handler.flush()
    expected = "INFO|modeld.manager|model_swapped new='v2' old='v1'"
    assert stream.getvalue().splitlines() == [expected]
    assert target.read_text().splitlines() == [expected]


def test_modeld_train_uses_max_features(tmp_path: Path) -> None:
    corpus = [{"timestamp": f"2026-11-2{d}T{h:02d}:15:02Z", "host": f"ap-{h % 4}",
               "process": "hostapd", "message": f"wlan0: STA 3c:22:fb:1a:9e:{h:02x} associated"}
              for d in range(1, 8) for h in range(24)]
    artifact = train_artifact(corpus, max_features=0.5, now=NOW)
    model = joblib.load(io.BytesIO(artifact.files["model.joblib"]))
    assert model.max_features == 0.5
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  max_features: 2\n")
    data = tmp_path / "logs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in corpus))
    assert cli_main(["train", "--config", str(cfg), "--input", str(data),
                     "--output", str(tmp_path / "models"), "--version", "mf"]) == 0
    trained = joblib.load(tmp_path / "models" / "mf" / "model.joblib")
    assert trained.max_features == 2


# validation rules and scoring -----------------------------------------------------------


def test_the_plans_feature_and_metric_rules(tmp_path: Path) -> None:
    report = validate_files(tmp_path, artifact_files(
        "v", created_at=created(1), metrics={"f1_score": 0.65, "roc_auc": 0.75,
                                             "precision": 0.8, "recall": 0.8})).report
    codes = {f.code for f in report.findings}
    assert {"few_features", "missing_features", "f1_fair", "auc_fair"} == codes
    assert "missing expected features: ['hour_of_day', 'day_of_week', 'message_length']" \
        in report.warnings
    assert "Consider retraining with more data or different parameters" in report.recommendations
    assert "Consider feature engineering or model tuning" in report.recommendations
    assert report.accepted  # warnings only: 1 - 4 x 0.05


def test_an_artifact_of_another_type_than_model_type_is_warned(tmp_path: Path) -> None:
    files = artifact_files("v", created_at=created(1))
    report = validate_files(tmp_path, files, expected_type="LocalOutlierFactor").report
    assert "model.type expects LocalOutlierFactor, the artifact holds IsolationForest" \
        in report.warnings


@pytest.mark.parametrize("estimator", [OneClassSVM(nu=0.1, gamma="scale"),
                                       EllipticEnvelope(random_state=0)])
def test_unknown_scorable_types_are_accepted_with_a_warning_and_score_right(
        tmp_path: Path, estimator: object) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, len(FEATURES)))
    model = estimator.fit(x)  # type: ignore[attr-defined]
    kind = type(model).__name__
    files = artifact_files("v", model=model, model_type=kind, created_at=created(1))
    validation = validate_files(tmp_path, files)
    assert validation.report.accepted, validation.report.reason
    assert any(kind in w and "not a supported model type" in w
               for w in validation.report.warnings)
    batch = records(50, seed=3)
    scores = validation.servable.score_records(batch)
    matrix = np.array([[r["features"][n] for n in FEATURES] for r in batch])
    assert np.allclose(scores.scores, -model.score_samples(matrix))
    assert np.array_equal(scores.flags, model.predict(matrix) == -1)


def test_confidence_is_the_position_among_reference_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    model = train_forest()
    reference = rng.normal(size=(400, len(FEATURES)))
    files = artifact_files("v", model=model, created_at=created(1))
    buf = io.BytesIO()
    np.savez(buf, features=reference)
    files["reference.npz"] = buf.getvalue()
    servable = validate_files(tmp_path, files).servable
    expected = np.sort(-model.score_samples(reference))
    assert np.allclose(servable.reference_scores, expected)
    batch = records(40, seed=5)
    result = servable.score_records(batch)
    share = np.array([(expected <= s).mean() for s in result.scores])
    assert np.allclose(result.confidence, share)

    slot = ServingSlot(anomaly_threshold=0.5)
    slot.swap(servable)
    far = [{"features": dict.fromkeys(FEATURES, 6.0)}, *batch]
    plain = slot.score(far)
    assert plain.flags[0] and plain.confidence[0] == 1.0
    needed = float(np.median(plain.confidence[plain.flags]))
    assert (plain.flags & (plain.confidence < needed)).any()  # some flags lack the confidence
    slot.confidence_threshold = needed
    gated = slot.score(far)
    assert gated.flags[0] and gated.flags.sum() < plain.flags.sum()
    assert np.array_equal(gated.flags, plain.flags & (plain.confidence >= needed))


# manager: the quality gate, listings, paths ---------------------------------------------


def low_quality(version: str) -> dict[str, bytes]:
    return artifact_files(version, created_at=created(1), metrics={
        "f1_score": 0.3, "roc_auc": 0.4, "precision": 0.3, "recall": 0.3})


def test_validate_imports_false_skips_only_the_quality_gate(tmp_path: Path) -> None:
    manager = make_manager(tmp_path)
    manager.set_policy(replace(manager.policy, validate_imports=False))
    drop(manager, "low", low_quality("low"))
    broken = artifact_files("broken", created_at=created(1), feature_names=["a", "b"])
    drop(manager, "broken", broken)
    outcomes = {o.path.rsplit("/", 1)[-1]: o for o in manager.poll_once().outcomes}
    assert outcomes["low"].status == "imported"
    assert outcomes["broken"].status == "rejected" and "feature" in outcomes["broken"].reason
    (tmp_path / "gated").mkdir()
    gated = make_manager(tmp_path / "gated")
    drop(gated, "low", low_quality("low"))
    assert gated.poll_once().outcomes[0].status == "rejected"
    assert gated.import_path("low", quality_gate=False).status == "imported"


def test_training_listing_newest_first_and_import_paths(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, auto_deploy=False)
    drop(manager, "old", artifact_files("v-old", created_at=created(3)))
    drop(manager, "new", artifact_files("v-new", created_at=created(1)))
    listed = manager.training_models()
    assert [r["version"] for r in listed] == ["v-new", "v-old"]
    assert not any(r["imported"] for r in listed)
    assert manager.latest_folder(only_new=True).name == "new"
    absolute = manager.models_dir / "new"
    # a URL join may drop the leading "/"; "models/<name>" is relative to the training folder
    for given in (str(absolute), str(absolute).lstrip("/"), "models/new", "new"):
        assert manager.resolve_import_path(given) == absolute.resolve()
    assert manager.import_path(str(absolute).lstrip("/")).version == "v-new"
    assert manager.latest_folder(only_new=True).name == "old"
    assert [r["imported"] for r in manager.training_models()] == [True, False]
    stored = manager.registry.get_version("v-new").metadata
    assert stored["import_info"]["original_path"] == str(absolute.resolve())
    assert stored["import_info"]["imported_by"] == "operator"
    assert stored["deployment_info"]["status"] == "available"
    manager.import_path("old")
    assert manager.latest_folder(only_new=True) is None


# compression ----------------------------------------------------------------------------


def test_versions_not_loaded_are_kept_compressed_and_verified(tmp_path: Path) -> None:
    manager: ModelManager = make_manager(tmp_path, auto_deploy=False)
    manager.set_policy(replace(manager.policy, compress_stored=True))
    drop(manager, "a", artifact_files("va", created_at=created(2), seed=1))
    drop(manager, "b", artifact_files("vb", created_at=created(1), seed=2))
    manager.poll_once()
    delivered = manager.registry.get_version("va").checksums
    assert manager.deploy("vb") == "vb"
    assert manager.compact() == ["va"]
    folder = manager.store.path_of("va")
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json.gz", "model.joblib.gz"]
    assert not manager.store.is_compressed("vb")
    assert manager.registry.get_version("va").checksums == delivered
    assert manager.store.verify("va", delivered) is None
    assert manager.compact() == []

    assert manager.deploy("va") == "va"  # decompressed, checked, loaded
    assert not manager.store.is_compressed("va")
    assert manager.slot.score(records(3)).version == "va"
    assert manager.revalidate("vb")["accepted"]

    drop(manager, "c", artifact_files("vc", created_at=created(0.5), seed=3))
    manager.poll_once()
    assert manager.compact() == ["vc"]
    packed = manager.store.path_of("vc") / "model.joblib.gz"
    packed.write_bytes(gzip.compress(b"tampered"))
    assert "recorded at import" in manager.store.verify("vc", manager.registry.get_version(
        "vc").checksums)
    with pytest.raises(ModelLoadFailed, match="does not decompress to the bytes recorded"):
        manager.deploy("vc")
    assert manager.slot.state.deployed.version == "va"
    assert packed.exists()  # nothing replaced by bytes that do not match


def test_registry_backups_are_compressed(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.sqlite3")
    registry.add_event("note", None, "2026-11-28T00:00:00Z", {"x": 1})
    for stamp in ("20261128T000001", "20261128T000002", "20261128T000003"):
        target = backup_registry(registry, tmp_path / "backups", 2, stamp, compress=True)
    registry.close()
    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == [
        "registry-20261128T000002.sqlite3.gz", "registry-20261128T000003.sqlite3.gz"]
    restored = tmp_path / "restored.sqlite3"
    restored.write_bytes(gzip.decompress(target.read_bytes()))
    with sqlite3.connect(restored) as conn:
        assert conn.execute("SELECT kind FROM events").fetchall() == [("note",)]


# the plan's drift check -----------------------------------------------------------------


def test_plan_drift_check_follows_the_plans_indicators() -> None:
    assert relative_change(0.2, 0.1) == pytest.approx(1.0) and relative_change(1, 0) == 0.0
    assert halves_change(np.ones(10)) == 0.0  # fewer than the plan's twenty
    latencies = np.r_[np.full(50, 0.001), np.full(50, 0.002)]
    flags = np.r_[np.zeros(90, bool), np.ones(10, bool)]
    indicators = drift_indicators(score_effect=0.3, flags=flags, reference_rate=0.05,
                                  latencies=latencies)
    assert indicators == {"anomaly_rate_change": pytest.approx(1.0),
                          "score_distribution_change": 0.3,
                          "inference_time_change": pytest.approx(1.0)}
    answer = plan_drift_check(drift_detected=True, indicators=indicators, threshold=0.1)
    assert answer["indicators"] == indicators
    # inference time is reported, never drift: the score is the data indicators' mean
    assert answer["drift_score"] == pytest.approx(1.3 / 2, abs=1e-6)
    assert answer["confidence"] == pytest.approx(1.3 / 2, abs=1e-6)
    assert answer["operational_indicators"] == ["inference_time_change"]
    assert answer["drift_detected"] is True and answer["threshold"] == 0.1


@pytest.mark.parametrize("tracking", [True, False])
def test_performance_tracking_keeps_per_version_metrics_or_not(tmp_path: Path,
                                                               tracking: bool) -> None:
    settings = MonitoringSettings(performance_tracking=tracking, drift_detection=False)
    registry = Registry(tmp_path / "registry.sqlite3")
    monitors = Monitors(settings, registry, tmp_path / "versions", DaemonMetrics(False),
                        Alerter(settings.alerting))
    features = np.zeros((3, 2))
    monitors.prepare("v1", ("a", "b"))
    monitors.observe("v1", features, np.array([0.4, 0.5, 0.9]),
                     np.array([False, False, True]), 0.001)
    monitors.flush()
    assert monitors.windows["v1"].records == (3 if tracking else 0)
    assert monitors.plan_drift("v1")["status"] == "no_data"  # drift detection is off
    registry.close()


def test_client_reads_are_retried_and_writes_are_not() -> None:
    """A real HTTP server standing in for a daemon behind a proxy that answers 503 first."""
    seen: list[str] = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            status = 503 if len(seen) % 2 else 200
            body = json.dumps({"detail": "upstream busy"} if status == 503 else []).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert asyncio.run(ModelTransferService(base_url=url).scan_training_service_models()) \
            == []
        assert seen == ["GET /api/v1/model-management/training-service/models"] * 2
        seen.clear()
        with pytest.raises(ClientError) as refused:
            asyncio.run(ModelTransferService(base_url=url).import_latest_model())
        assert refused.value.status == 503 and refused.value.detail == "upstream busy"
        assert seen == ["POST /api/v1/model-management/import-latest?validate=true"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
