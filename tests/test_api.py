"""The HTTP API in-process (FastAPI's TestClient over the real app, real registry and store)."""

from __future__ import annotations

import itertools
import json
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeld.daemon.http.app import create_app
from modeld.daemon.process import wiring
from modeld.daemon.process.runtime import Runtime
from modeld.daemon.process.settings import Settings
from tests.bad_corpus import Sentinel
from tests.helpers import (
    artifact_files,
    records,
    stamp,
    train_forest,
    write_in_place,
    write_renamed,
)

# the bound address as Host, and the header the CLI sends (the guard's cross-site checks)
IN_PROCESS: dict[str, Any] = {"base_url": "http://127.0.0.1",
                              "headers": {"X-Modeld-Client": "test"}}


def build_runtime(root: Path, token: str | None = None, **sections: Any) -> Runtime:
    """The daemon's own composition root on temporary folders; ``sections`` add settings."""
    settings = Settings(
        storage={"directory": str(root / "state")},
        integration={"training_service_path": str(root / "training"), "settle_seconds": 0},
        api={"token": token},
        **sections,
    )
    settings.integration.models_dir.mkdir(parents=True, exist_ok=True)
    return wiring.build_runtime(settings)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = build_runtime(tmp_path)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        yield http


def add_versions(runtime: Runtime, *names: str) -> None:
    for i, name in enumerate(names):
        write_renamed(runtime.manager.models_dir, name,
                      artifact_files(name, seed=i, created_at=stamp(10 - i)))
        runtime.manager.note_moved_in(name)
        runtime.manager.poll_once()


def test_every_operation_is_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/healthz", "/readyz", "/api/v1/status", "/api/v1/models",
                 "/api/v1/models/{version}", "/api/v1/models/import",
                 "/api/v1/models/import-latest", "/api/v1/models/{version}/validate",
                 "/api/v1/models/{version}/deploy", "/api/v1/models/rollback",
                 "/api/v1/models/{version}/rollback", "/api/v1/transfer-history",
                 "/api/v1/deployments", "/api/v1/training-service/models", "/api/v1/score"]:
        assert path in paths, path


def test_management_operations(client: TestClient, runtime: Runtime) -> None:
    add_versions(runtime, "v1", "v2")
    assert client.get("/api/v1/status").json()["deployed_version"] == "v2"

    one = client.get("/api/v1/models/v1").json()
    assert one["status"] == "fallback" and one["report"]["accepted"]
    assert one["metadata"]["model_info"]["version"] == "v1"
    assert client.post("/api/v1/models/v1/validate").json()["accepted"] is True

    assert client.post("/api/v1/models/v1/deploy").json()["deployed_version"] == "v1"
    assert client.post("/api/v1/models/rollback").json()["deployed_version"] == "v2"
    assert client.post("/api/v1/models/v1/rollback").json()["deployed_version"] == "v1"
    history = client.get("/api/v1/deployments").json()
    assert [(d["to_version"], d["actor"]) for d in history] == [
        ("v1", "rollback"), ("v2", "rollback"), ("v1", "operator"), ("v2", "auto"),
        ("v1", "auto")]

    write_in_place(runtime.manager.models_dir / "v3",
                   artifact_files("v3", seed=3, created_at=stamp(1)))
    listing = {r["folder"]: r for r in client.get("/api/v1/training-service/models").json()}
    assert listing["v3"]["imported"] is False and listing["v1"]["imported"] is True
    assert listing["v3"]["version"] == "v3" and listing["v3"]["metrics"]["f1_score"] == 0.85
    answer = client.post("/api/v1/models/import", json={"path": "v3"}).json()
    assert answer["version"] == "v3" and answer["status"] == "imported"
    assert answer["report"]["accepted"]
    # an operator's import follows the same policy: newer than what serves, so it serves
    assert answer["deployed_version"] == "v3"

    write_in_place(runtime.manager.models_dir / "v4",
                   artifact_files("v4", seed=4, created_at=stamp(0)))
    latest = client.post("/api/v1/models/import-latest", json={}).json()
    assert latest["version"] == "v4"
    transfers = client.get("/api/v1/transfer-history").json()
    assert transfers[0]["version"] == "v4" and transfers[0]["status"] == "completed"


def test_errors_are_precise(client: TestClient, runtime: Runtime) -> None:
    add_versions(runtime, "v1")
    for method, path in [("GET", "/api/v1/models/nope"), ("POST", "/api/v1/models/nope/deploy"),
                         ("POST", "/api/v1/models/nope/validate"),
                         ("POST", "/api/v1/models/nope/rollback")]:
        response = client.request(method, path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["detail"]

    write_renamed(runtime.manager.models_dir, "bad",
                  artifact_files("bad", feature_names=["a"], created_at=stamp(0)))
    refused = client.post("/api/v1/models/import", json={"path": "bad"})
    assert refused.status_code == 422 and "feature" in refused.json()["detail"]
    conflict = client.post("/api/v1/models/bad/deploy")
    assert conflict.status_code == 409 and "rejected" in conflict.json()["detail"]

    write_renamed(runtime.manager.models_dir, "v1-again",
                  artifact_files("v1", seed=7, created_at=stamp(0)))
    clash = client.post("/api/v1/models/import", json={"path": "v1-again"})
    assert clash.status_code == 409 and "different content" in clash.json()["detail"]

    assert client.post("/api/v1/models/rollback").status_code == 409
    for body in [{}, {"path": 3}, {"path": "v1", "extra": 1}, [1], "x"]:
        response = client.post("/api/v1/models/import", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"]
    garbage = client.post("/api/v1/models/import", content=b"{", headers={
        "content-type": "application/json"})
    assert garbage.status_code in (400, 422)


def test_nothing_escapes_the_training_folder(client: TestClient, runtime: Runtime,
                                             tmp_path: Path) -> None:
    sentinel = tmp_path / "unpickled"
    outside = tmp_path / "outside"
    files = artifact_files("evil", created_at=stamp(0))
    files["model.joblib"] = pickle.dumps(Sentinel(sentinel))
    write_in_place(outside, files)
    (runtime.manager.models_dir / "escape").symlink_to(outside)
    write_in_place(runtime.manager.models_dir / "_tmp_wip", artifact_files("wip"))
    for path in ["../../outside", str(outside), "escape", "/etc", "..", "/", "v1/../../..",
                 "a\x00b", "x" * 300, "_tmp_wip", "escape/.."]:
        response = client.post("/api/v1/models/import", json={"path": path})
        assert response.status_code == 400, path
        assert "is not a finished artifact folder directly inside" in response.json()["detail"]
    assert not sentinel.exists()
    assert client.get("/api/v1/transfer-history").json() == []


def test_bearer_token(tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path, token="s3cret")
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503
        for path in ("/api/v1/status", "/api/v1/models", "/metrics"):
            assert http.get(path).status_code == 401
        assert http.get("/api/v1/status", headers={"Authorization": "Bearer wrong"}
                        ).status_code == 401
        assert http.post("/api/v1/models/x/deploy").status_code == 401
        ok = http.get("/api/v1/status", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    runtime.close()


def test_concurrent_operations_are_serialised(client: TestClient, runtime: Runtime) -> None:
    add_versions(runtime, "v1", "v2", "v3")
    errors: list[int] = []

    def worker(i: int) -> None:
        for j in range(6):
            version = ("v1", "v2", "v3")[(i + j) % 3]
            path = (f"/api/v1/models/{version}/deploy" if (i + j) % 2 else
                    "/api/v1/models/rollback")
            status = client.post(path).status_code
            if status not in (200, 409):
                errors.append(status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    history = client.get("/api/v1/deployments").json()
    # each change starts from where the previous one ended: no lost or interleaved update
    for newer, older in itertools.pairwise(history):
        assert newer["from_version"] == older["to_version"]
    serving = client.get("/api/v1/status").json()["deployed_version"]
    assert serving == history[0]["to_version"] == runtime.manager.registry.deployed_version()


def test_score_endpoint_basics(client: TestClient, runtime: Runtime) -> None:
    none = client.post("/api/v1/score", json={"records": records(1)})
    assert none.status_code == 503 and "no model" in none.json()["detail"]
    add_versions(runtime, "v1")
    ok = client.post("/api/v1/score", json={"records": records(3)}).json()
    assert ok["model_version"] == "v1" and len(ok["results"]) == 3
    assert all(set(r) == {"score", "is_anomaly", "confidence"} for r in ok["results"])
    assert all(0.0 <= r["confidence"] <= 1.0 for r in ok["results"])
    assert client.post("/api/v1/score", json={"records": []}).json() == {
        "model_version": "v1", "results": []}
    assert client.post("/api/v1/score", json={"rows": []}).status_code == 422
    too_big = client.post("/api/v1/score", content=b" " * (5 * 1024 * 1024),
                          headers={"content-type": "application/json"})
    assert too_big.status_code == 413
    metrics = client.get("/metrics").text
    assert 'modeld_records_scored_total{version="v1"} 3.0' in metrics


def test_the_composed_daemon_answers_a_scoring_failure_from_the_fallback_and_records_it(
        tmp_path: Path) -> None:
    from tests.test_core import RaisingForest

    # RaisingForest lives in the tests package, which the canary child does not import; it
    # has no bundle form, so it is served unpickled, as the setting allows
    runtime = build_runtime(tmp_path, security={"isolate_first_load": False,
                                                "allow_unbundled_estimators": True})
    try:
        add_versions(runtime, "v1")
        write_renamed(runtime.manager.models_dir, "v2", artifact_files(
            "v2", model=RaisingForest(train_forest(seed=3)), created_at=stamp(0)))
        runtime.manager.note_moved_in("v2")
        runtime.manager.poll_once()
        deployed = runtime.slot.state.deployed
        assert deployed is not None and deployed.version == "v2"
        # arm the loaded instance: scoring now raises inside the deployed model
        deployed.scorer.__closure__[0].cell_contents.__self__.armed = True
        with TestClient(create_app(runtime), **IN_PROCESS) as http:
            answer = http.post("/api/v1/score", json={"records": records(2)})
            assert answer.status_code == 200 and answer.json()["model_version"] == "v1"
            assert "modeld_fallback_uses_total 1.0" in http.get("/metrics").text
        assert runtime.manager.registry.events("fallback_used")[0]["fallback"] == "v1"
    finally:
        runtime.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
SEGMENT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


def test_fuzz_the_openapi_schema_no_5xx_and_refusals_change_nothing(tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path)
    add_versions(runtime, "v1", "v2")
    app = create_app(runtime)
    schema = app.openapi()
    operations = [(path, method) for path, item in schema["paths"].items()
                  for method in item if path not in ("/metrics",)]
    deployed_before = runtime.manager.registry.deployed_version()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(op=st.sampled_from(operations), segment=SEGMENT, body=JSON)
    def fuzz(op: tuple[str, str], segment: str, body: Any) -> None:
        path, method = op
        url = path.replace("{version}", quote(segment, safe="")).replace(
            "{model_name}", runtime.settings.api.model_name)
        with TestClient(app, raise_server_exceptions=False, **IN_PROCESS) as http:
            before = runtime.manager.registry.deployed_version()
            response = http.request(method.upper(), url, content=json.dumps(body),
                                    headers={"content-type": "application/json"})
        assert response.status_code < 500, (method, url, body, response.text)
        if response.status_code >= 400:
            assert runtime.manager.registry.deployed_version() == before
            # the Open Inference Protocol's routes answer in its own shape
            assert response.json()["error" if url.startswith("/v2") else "detail"]

    fuzz()
    # the fuzz may have deployed a real version by name; never to anything unknown
    assert runtime.manager.registry.deployed_version() in {deployed_before, "v1", "v2"}
    runtime.close()


def test_a_registry_that_cannot_be_used_answers_503_and_nothing_escapes(
        runtime: Runtime) -> None:
    """A database error is the registry being away (a fleet's database restarting): 503 with
    one warning line. The TestClient re-raises what escapes the app, as uvicorn logs it with
    a traceback: the catch-all handler answered such errors and then let them escape."""
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        assert http.get("/api/v1/deployments").status_code == 200
        runtime.manager.registry.close()  # the connection lost, for real
        answer = http.get("/api/v1/deployments")
        assert answer.status_code == 503, answer.text
        assert "registry database cannot be used" in answer.json()["detail"]
