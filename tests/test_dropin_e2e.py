"""The seed plan's service switching to modeld: its own model_config.yaml starts a real daemon,
its router is driven over real HTTP, and ``modeld.client`` is used the way the plan's code uses
its classes (async, the same calls and return shapes)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from sklearn.svm import OneClassSVM

from modeld.client import (
    ModeldError,
    ModelManager,
    ModelPerformanceMonitor,
    ModelTransferService,
    ModelValidator,
)
from modeld.core.features import FeatureExtractor
from tests.helpers import DaemonProcess, artifact_files, stamp, train_forest, write_renamed

pytestmark = pytest.mark.e2e

PLAN_CONFIG = Path(__file__).parent / "data" / "plan_model_config.yaml"
PLAN = "/api/v1/model-management"
WIFI_FEATURES = ["hour_of_day", "day_of_week", "message_length", "x3", "x4"]


def plan_daemon(tmp_path: Path) -> DaemonProcess:
    """A daemon on the plan's YAML as the test data holds it, run from ``tmp_path`` (its paths
    are relative); only the port comes from the environment (the plan's file names none)."""
    daemon = DaemonProcess(tmp_path, cwd=tmp_path)
    shutil.copy(PLAN_CONFIG, daemon.config_path)
    daemon.models_dir = tmp_path / "mcp_training" / "models"
    daemon.models_dir.mkdir(parents=True)
    daemon.env["MODELD_API__PORT"] = str(daemon.port)
    return daemon


def wifi_artifact(version: str, seed: int, days_ago: float = 0.0) -> dict[str, bytes]:
    return artifact_files(version, model=train_forest(n_features=5, seed=seed),
                          feature_names=WIFI_FEATURES, created_at=stamp(days_ago))


def wifi_records(n: int) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-11-28T10:15:02Z", "host": "ap-3f-12", "process": "hostapd",
             "message": "wlan0: STA 3c:22:fb:1a:9e:01 IEEE 802.11: associated",
             "features": {"x3": 0.1 * i, "x4": -0.05 * i}} for i in range(n)]


def test_the_plans_yaml_starts_modeld_and_its_router_works(tmp_path: Path) -> None:
    assert "mcp_training" in PLAN_CONFIG.read_text()
    daemon = plan_daemon(tmp_path).start()
    try:
        status = daemon.status()
        assert status["config_version"] == "2.0.0"
        # stderr is text in the plan's format: "<time> - <logger> - <LEVEL> - <event> k=v"
        warnings = [line for line in daemon.logs().splitlines()
                    if " - WARNING - config_warning " in line]
        assert any("key='integration.auto_import'" in line for line in warnings), warnings
        assert any("key='monitoring.alerting.enabled'" in line for line in warnings)

        first = write_renamed(daemon.models_dir, "model_20261128_101500",
                              wifi_artifact("20261128_101500", seed=1, days_ago=1))
        second = write_renamed(daemon.models_dir, "model_20261129_101500",
                               wifi_artifact("20261129_101500", seed=2))
        http = httpx.Client(base_url=daemon.base, timeout=60)

        listed = http.get(f"{PLAN}/training-service/models").json()
        assert [m["version"] for m in listed] == ["20261129_101500", "20261128_101500"]
        for row in listed:
            assert {"version", "path", "created_at", "model_type", "training_samples",
                    "evaluation_metrics", "imported"} <= set(row)
            assert row["imported"] is False and row["model_type"] == "IsolationForest"
        assert listed[0]["evaluation_metrics"]["f1_score"] == 0.85

        # the plan's caller sends the folder's path as the listing gave it (absolute)
        imported = http.post(f"{PLAN}/import/{first}", params={"validate": "true"})
        assert imported.status_code == 200, imported.text
        answer = imported.json()
        assert answer["imported_version"] == "20261128_101500"
        assert answer["status"] == "imported" and answer["original_path"] == str(first)
        assert Path(answer["local_path"]).is_dir()
        assert http.get(f"{PLAN}/training-service/models").json()[1]["imported"] is True

        report = http.post(f"{PLAN}/20261128_101500/validate").json()
        assert report["is_valid"] is True and report["score"] == 1.0
        assert {"errors", "warnings", "recommendations"} <= set(report)

        deployed = http.post(f"{PLAN}/20261128_101500/deploy").json()
        assert deployed["version"] == "20261128_101500" and deployed["status"] == "deployed"
        assert deployed["deployed_at"]
        daemon.wait_deployed("20261128_101500")

        # import-latest: the newest folder not imported yet, then nothing new
        latest = http.post(f"{PLAN}/import-latest").json()
        assert latest["imported_version"] == "20261129_101500"
        assert latest["original_path"] == str(second)
        again = http.post(f"{PLAN}/import-latest")
        assert again.status_code == 409 and "No new models to import" in again.json()["detail"]
        assert http.post(f"{PLAN}/20261129_101500/deploy").json()["status"] == "deployed"
        daemon.wait_deployed("20261129_101500")

        scored = http.post("/api/v1/score", json={"records": wifi_records(5)}).json()
        assert scored["model_version"] == "20261129_101500"
        assert all(0.0 <= r["confidence"] <= 1.0 for r in scored["results"])

        back = http.post(f"{PLAN}/20261128_101500/rollback").json()
        assert back["version"] == "20261128_101500" and back["status"] == "rolled_back"
        assert back["rolled_back_at"] >= deployed["deployed_at"]
        daemon.wait_deployed("20261128_101500")

        history = http.get(f"{PLAN}/transfer-history").json()
        assert [h["transfer_id"] for h in history] == ["20261128_101500", "20261129_101500"]
        for row in history:
            assert {"transfer_id", "original_path", "local_path", "transferred_at",
                    "status"} <= set(row)
            assert row["status"] == "imported" and Path(row["local_path"]).is_dir()
        assert history[1]["original_path"] == str(second)

        # the plan's records: import_info, and deployment_info.status as it is now
        meta = http.get("/api/v1/models/20261128_101500").json()["metadata"]
        assert meta["import_info"]["original_path"] == str(first)
        assert meta["import_info"]["imported_at"] and meta["import_info"]["imported_by"]
        assert meta["deployment_info"]["status"] == "deployed"
        other = http.get("/api/v1/models/20261129_101500").json()["metadata"]
        assert other["deployment_info"]["status"] == "available"

        # a scorable model of a type modeld does not compile: accepted with warnings, served
        svm = OneClassSVM(nu=0.1, gamma="scale").fit(np.random.default_rng(0).normal(
            size=(300, len(WIFI_FEATURES))))
        write_renamed(daemon.models_dir, "svm", artifact_files(
            "svm-1", model=svm, model_type="OneClassSVM", feature_names=WIFI_FEATURES,
            created_at=stamp()))
        imported_svm = http.post(f"{PLAN}/import/svm").json()
        warned = imported_svm["report"]["warnings"]
        assert "model.type expects IsolationForest, the artifact holds OneClassSVM" in warned
        assert any("not a supported model type" in w for w in warned)
        assert http.post(f"{PLAN}/svm-1/deploy").json()["status"] == "deployed"
        batch = wifi_records(5)
        served = http.post("/api/v1/score", json={"records": batch}).json()
        rows = FeatureExtractor(WIFI_FEATURES).transform(batch)
        assert served["model_version"] == "svm-1"
        assert np.allclose([r["score"] for r in served["results"]], -svm.score_samples(rows))

        # modeld's precise errors, each with a detail
        assert http.post(f"{PLAN}/nope/deploy").status_code == 404
        assert http.post(f"{PLAN}/nope/rollback").status_code == 404
        assert http.post(f"{PLAN}/nope/validate").status_code == 404
        outside = http.post(f"{PLAN}/import/{tmp_path / 'mcp_service'}")
        assert outside.status_code == 400 and "detail" in outside.json()
        assert http.post(f"{PLAN}/import/x", params={"validate": "maybe"}).status_code == 422
        bad = daemon.models_dir / "broken"
        bad.mkdir()
        (bad / "metadata.json").write_text("{}")
        (bad / "model.joblib").write_bytes(b"not a model")
        refused = http.post(f"{PLAN}/import/broken")
        assert refused.status_code == 422 and "rejected" in refused.json()["detail"]
        http.close()
    finally:
        assert daemon.stop() == 0

    # logging.format is the plan's Python format string; the file is the plan's relative one
    lines = (tmp_path / "logs" / "model_inference.log").read_text().splitlines()
    swapped = [line for line in lines if " - model_swapped " in line]
    assert swapped, lines[-5:]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - modeld\.manager - INFO - "
                    r"model_swapped .*new='20261129_101500'", swapped[1])
    assert (tmp_path / "mcp_service" / "models" / "registry.sqlite3").is_file()


async def plan_service(models_dir: Path, base_url: str) -> dict[str, Any]:
    """What the plan's service does with its classes, calls unchanged but for the import."""
    # the plan's own ModelConfig (pydantic, attributes by section): accepted as it is
    config = SimpleNamespace(version="2.0.0", storage=SimpleNamespace(directory="models"),
                             monitoring=SimpleNamespace(drift_threshold=0.1))
    transfer_service = ModelTransferService(config, base_url=base_url)
    model_manager = ModelManager(base_url=base_url)
    validator = ModelValidator(config, base_url=base_url)
    monitor = ModelPerformanceMonitor(config, base_url=base_url)
    seen: dict[str, Any] = {}

    seen["scan"] = await transfer_service.scan_training_service_models()
    seen["latest"] = await transfer_service.import_latest_model(validate=True)
    seen["older"] = await transfer_service.import_model(str(models_dir / "a"), validate=True)
    try:
        await transfer_service.import_latest_model()
    except ModeldError as exc:
        seen["no_new"] = exc
    models = await model_manager.list_models()
    seen["models"] = models
    model_info = next(m for m in models if m["version"] == "va")
    seen["quality"] = await validator.validate_model_quality(model_info["model_path"])
    seen["deploy_a"] = await model_manager.deploy_model("va")
    seen["deploy_b"] = await model_manager.deploy_model("vb")
    seen["deploy_unknown"] = await model_manager.deploy_model("nope")
    seen["scored"] = await model_manager.score(wifi_records(30))
    await monitor.record_inference_metrics("vb", 0.002, 0.41, False)
    seen["drift"] = await monitor.check_model_drift("vb")
    seen["rollback"] = await model_manager.rollback_model("va")
    seen["models_after"] = await model_manager.list_models()
    seen["load"] = await model_manager.load_model(str(Path(model_info["model_path"])
                                                      / "model.joblib"))
    seen["loaded"] = (model_manager.current_model_version, model_manager.model_loaded,
                      model_manager.feature_names)
    seen["history"] = await transfer_service.get_transfer_history()
    return seen


def test_modeld_client_as_the_plans_code_uses_it(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, overrides={"integration": {"auto_import": False,
                                                                "auto_deploy": False}})
    daemon.models_dir.mkdir(parents=True)
    write_renamed(daemon.models_dir, "a", wifi_artifact("va", seed=1, days_ago=1))
    write_renamed(daemon.models_dir, "b", wifi_artifact("vb", seed=2))
    daemon.start()
    try:
        seen = asyncio.run(plan_service(daemon.models_dir, daemon.base))
    finally:
        assert daemon.stop() == 0

    assert [m["version"] for m in seen["scan"]] == ["vb", "va"]
    assert seen["latest"]["imported_version"] == "vb" and seen["latest"]["status"] == "imported"
    assert seen["older"]["imported_version"] == "va"
    assert seen["no_new"].status == 409 and "No new models to import" in seen["no_new"].detail
    assert all({"version", "model_path", "status"} <= set(m) for m in seen["models"])
    assert {m["status"] for m in seen["models"]} == {"available"}
    quality = seen["quality"]
    assert quality["is_valid"] is True and quality["score"] == 1.0
    assert {"errors", "warnings", "recommendations"} <= set(quality)
    assert seen["deploy_a"] is True and seen["deploy_b"] is True
    assert seen["deploy_unknown"] is False
    assert seen["scored"]["model_version"] == "vb" and len(seen["scored"]["results"]) == 30
    drift = seen["drift"]
    assert {"drift_detected", "drift_score", "confidence", "indicators", "threshold"} <= set(drift)
    assert set(drift["indicators"]) == {"anomaly_rate_change", "score_distribution_change",
                                        "inference_time_change"}
    assert drift["threshold"] == 0.1 and drift["drift_detected"] is False
    assert seen["rollback"] is True
    statuses = {m["version"]: m["status"] for m in seen["models_after"]}
    assert statuses == {"va": "deployed", "vb": "available"}
    assert seen["load"] is True and seen["loaded"] == ("va", True, WIFI_FEATURES)
    assert [h["transfer_id"] for h in seen["history"]] == ["vb", "va"]


def test_modeld_client_finds_the_daemon_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = DaemonProcess(tmp_path, overrides={"api": {"token": "s3cret"}})
    daemon.token = "s3cret"
    daemon.models_dir.mkdir(parents=True)
    config = daemon.config()
    daemon.start()
    try:
        monkeypatch.setenv("MODELD_URL", daemon.base)
        monkeypatch.setenv("MODELD_TOKEN", "s3cret")
        assert asyncio.run(ModelTransferService().scan_training_service_models()) == []
        monkeypatch.setenv("MODELD_TOKEN", "wrong")
        with pytest.raises(ModeldError) as refused:
            asyncio.run(ModelManager().list_models())
        assert refused.value.status == 401 and refused.value.detail
        # the plan's config argument: a modeld configuration file gives address and token
        monkeypatch.delenv("MODELD_URL")
        assert asyncio.run(ModelManager(daemon.config_path).list_models()) == []
        assert config["api"]["port"] == daemon.port
    finally:
        assert daemon.stop() == 0
    with pytest.raises(ModeldError) as down:
        asyncio.run(ModelManager(base_url=daemon.base).list_models())
    assert down.value.status is None and "not reachable" in down.value.detail
    assert yaml.safe_load(daemon.config_path.read_text())["api"]["token"] == "s3cret"
