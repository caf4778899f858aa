"""The Open Inference Protocol routes in-process (FastAPI's TestClient over the real app, real
registry and store): the protocol's edge cases, one scoring path with /api/v1/score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeld.core.errors import ConfigError
from modeld.daemon.http.app import create_app
from modeld.daemon.process.runtime import Runtime
from modeld.daemon.process.settings import Settings, load_settings
from tests.helpers import FEATURES, artifact_files, records, stamp, write_renamed
from tests.test_api import IN_PROCESS, add_versions, build_runtime, client, runtime

__all__ = ["client", "runtime"]  # test_api's fixtures, used here too

INFER = "/v2/models/wifi-anomaly/infer"


@pytest.fixture
def served(runtime: Runtime, client: TestClient) -> TestClient:
    """v2 deployed, v1 its fallback."""
    add_versions(runtime, "v1", "v2")
    return client


def matrix_of(batch: list[dict[str, Any]]) -> list[list[float]]:
    return [[r["features"][n] for n in FEATURES] for r in batch]


def features(data: Any, shape: list[int], datatype: str = "FP64") -> dict[str, Any]:
    return {"name": "features", "datatype": datatype, "shape": shape, "data": data}


def refused(response: Any, status: int, *words: str) -> str:
    """The protocol's error: ``{"error": ...}`` alone, with ``status``, naming ``words``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], (word, body["error"])
    return str(body["error"])


def scores_of(response: Any) -> list[float]:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    return outputs["anomaly_score"]["data"]


def test_server_metadata_health_and_readiness(client: TestClient, runtime: Runtime) -> None:
    assert client.get("/v2").json() == {"name": "modeld", "version": "0.1.0",
                                         "extensions": ["binary_tensor_data"]}
    assert client.get("/v2/health/live").status_code == 200
    refused(client.get("/v2/health/ready"), 503, "no model is deployed")
    refused(client.get("/v2/models/wifi-anomaly/ready"), 503, "no model")
    refused(client.get("/v2/models/wifi-anomaly"), 503, "no model")
    refused(client.post(INFER, json={"inputs": [features([[0.0] * 4], [1, 4])]}), 503,
            "no model")
    add_versions(runtime, "v1")
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/wifi-anomaly/ready").json() == {
        "name": "wifi-anomaly", "version": "v1", "ready": True}


def test_every_route_is_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/versions/{version}", "/v2/models/{model_name}/ready",
                 "/v2/models/{model_name}/versions/{version}/ready",
                 "/v2/models/{model_name}/infer",
                 "/v2/models/{model_name}/versions/{version}/infer"]:
        assert path in paths, path


def test_model_metadata_names_inputs_outputs_and_shapes(served: TestClient) -> None:
    meta = served.get("/v2/models/wifi-anomaly").json()
    assert meta["name"] == "wifi-anomaly" and meta["versions"] == ["v2", "v1"]
    assert meta["inputs"][0] == {"name": "features", "datatype": "FP64", "shape": [-1, 4],
                                 "parameters": {"feature_names": list(FEATURES)}}
    assert meta["inputs"][1] == {"name": "records", "datatype": "BYTES", "shape": [-1]}
    assert meta["inputs"][2:] == [{"name": n, "datatype": "FP64", "shape": [-1]}
                                  for n in FEATURES]
    assert meta["outputs"] == [{"name": "anomaly_score", "datatype": "FP64", "shape": [-1]},
                               {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]}]
    assert served.get("/v2/models/wifi-anomaly/versions/v1").json()["versions"] == ["v1"]
    refused(served.get("/v2/models/wifi-anomaly/versions/v0"), 404, "'v0' is not loaded",
            "v2, v1")
    refused(served.get("/v2/models/other"), 404, "unknown model 'other'", "api.model_name")
    refused(served.get("/v2/models/other/ready"), 404, "other")
    refused(served.get("/v2/models/wifi-anomaly/versions/v0/ready"), 404, "v0")


def test_the_model_name_is_a_setting_a_reload_changes(tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path)
    add_versions(runtime, "v1")
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        assert http.get("/v2/models/wifi-anomaly").json()["name"] == "wifi-anomaly"
        # what a SIGHUP does: the runtime's settings are replaced
        runtime.settings = runtime.settings.model_copy(
            update={"api": runtime.settings.api.model_copy(update={"model_name": "ap-logs"})})
        assert http.get("/v2/models/ap-logs").json()["name"] == "ap-logs"
        refused(http.get("/v2/models/wifi-anomaly"), 404, "'ap-logs'")
    runtime.close()  # the runtime's threads (the shadow worker) stop too


def test_api_model_name_defaults_and_is_checked(tmp_path: Path) -> None:
    assert Settings().api.model_name == "wifi-anomaly"
    config = tmp_path / "modeld.yaml"
    for bad in ("a/b", "", "../x"):
        config.write_text(yaml.safe_dump({"api": {"model_name": bad}}))
        with pytest.raises(ConfigError) as err:
            load_settings(config)
        assert err.value.key == "api.model_name"


def test_infer_scores_as_api_v1_does_and_echoes_id_and_version(served: TestClient) -> None:
    batch = records(6, seed=3)
    own = served.post("/api/v1/score", json={"records": batch}).json()
    matrix = matrix_of(batch)
    response = served.post(INFER, json={"id": "req-1", "inputs": [features(matrix, [6, 4])]})
    body = response.json()
    assert body["model_name"] == "wifi-anomaly" and body["model_version"] == "v2"
    assert body["id"] == "req-1" and body["parameters"] == {"model_version": "v2"}
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["anomaly_score"]["datatype"] == "FP64"
    assert outputs["anomaly_score"]["shape"] == [6]
    assert outputs["is_anomaly"] == {"name": "is_anomaly", "datatype": "BOOL", "shape": [6],
                                     "data": [r["is_anomaly"] for r in own["results"]]}
    assert np.allclose(outputs["anomaly_score"]["data"], [r["score"] for r in own["results"]],
                       rtol=0, atol=1e-12)
    # flat data in row-major order is the same tensor; FP32 is accepted; no id, none echoed
    flat = served.post(INFER, json={"inputs": [features([v for row in matrix for v in row], [6, 4], "FP32")]})
    assert "id" not in flat.json()
    assert scores_of(flat) == outputs["anomaly_score"]["data"]
    # a large batch (decoded and scored off the event loop) answers every row
    rows = np.random.default_rng(0).normal(size=(3000, 4)).tolist()
    large = served.post(INFER, json={"inputs": [features(rows, [3000, 4])]})
    assert len(scores_of(large)) == 3000
    # an empty batch is an answer
    empty = served.post(INFER, json={"inputs": [features([], [0, 4])]}).json()
    assert [o["shape"] for o in empty["outputs"]] == [[0], [0]]


def test_feature_columns_and_records_inputs(served: TestClient) -> None:
    batch = records(5, seed=4)
    expected = scores_of(served.post(INFER, json={"inputs": [features(matrix_of(batch),
                                                                      [5, 4])]}))
    # MLServer's "pd" convention: one input per column, in any order, [N] or [N, 1], any
    # numeric datatype
    columns = [{"name": n, "datatype": "FP64", "shape": [5] if i % 2 else [5, 1],
                "data": [r["features"][n] for r in batch]}
               for i, n in reversed(list(enumerate(FEATURES)))]
    pd = served.post(INFER, json={"parameters": {"content_type": "pd"}, "inputs": columns})
    assert np.allclose(scores_of(pd), expected, rtol=0, atol=1e-12)
    ints = [{"name": n, "datatype": "INT64", "shape": [2], "data": [1, -2]} for n in FEATURES]
    assert len(scores_of(served.post(INFER, json={"inputs": ints}))) == 2

    raw = {"name": "records", "datatype": "BYTES", "shape": [5],
           "data": [json.dumps(r) for r in batch]}
    assert np.allclose(scores_of(served.post(INFER, json={"inputs": [raw]})), expected,
                       rtol=0, atol=1e-12)
    # a bad record is named by its index, as /api/v1/score names it, but with the protocol's 400
    del batch[2]["features"]["x1"]
    raw["data"] = [json.dumps(r) for r in batch]
    refused(served.post(INFER, json={"inputs": [raw]}), 400, "record 2", "x1")
    raw["data"][3] = "{not json"
    refused(served.post(INFER, json={"inputs": [raw]}), 400, "element 3 is not JSON")


BAD_INPUTS: list[tuple[dict[str, Any], tuple[str, ...]]] = [
    (features([[0.0] * 3], [1, 3]), ("shape [1, 3]", "[N, 4]", "x0, x1, x2, x3")),
    (features([0.0] * 4, [4]), ("shape [4]", "[N, 4]")),
    (features([[0.0] * 4], [2, 4]), ("4 values", "holds 8")),
    (features([[0.0] * 4], [1, -4]), ("shape [1, -4]",)),
    (features([[0.0] * 4], "1x4"), ("shape '1x4'",)),
    (features([[1, 2, 3, 4]], [1, 4], "INT64"), ("must be FP32 or FP64, got INT64",)),
    (features([[0.0] * 4], [1, 4], "FLOAT"), ("datatype 'FLOAT'", "FP32")),
    (features([[0.0, 1.0, True, 2.0]], [1, 4]), ("value 2 is a boolean, not a number",)),
    (features([[0.0, 1.0, "2", 2.0]], [1, 4]), ("value 2 is a string",)),
    (features([[0.0, None, 1.0, 2.0]], [1, 4]), ("value 1 is null",)),
    (features({"x0": 1}, [1, 4]), ("data must be an array",)),
    ({"name": "features", "datatype": "FP64", "shape": [1, 4]}, ("no data",)),
    ({"name": "records", "datatype": "FP64", "shape": [1], "data": [1.0]},
     ("'records' must be BYTES",)),
    ({"name": "x0", "datatype": "BOOL", "shape": [1], "data": [True]}, ("must be numeric",)),
    ({"name": "wifi", "datatype": "FP64", "shape": [1], "data": [1.0]},
     ("unknown input 'wifi'", "'features' [N, 4]", "'records' [N]", "x0, x1, x2, x3")),
    ({"datatype": "FP64", "shape": [1], "data": [1.0]}, ("inputs[0] has no name",)),
]


def test_bad_inputs_are_400_naming_the_problem(served: TestClient) -> None:
    for tensor, words in BAD_INPUTS:
        refused(served.post(INFER, json={"inputs": [tensor]}), 400, *words)


def test_bad_requests_are_400(served: TestClient) -> None:
    one = features([[0.0] * 4], [1, 4])
    column = {"name": "x0", "datatype": "FP64", "shape": [1], "data": [1.0]}
    for body, words in [
        ([one], ("inference request object",)),
        ({"inputs": []}, ("non-empty array",)),
        ({"inputs": [one], "id": 7}, ("id must be a string",)),
        ({"inputs": [one, one]}, ("'features' is given more than once",)),
        ({"inputs": [one, column]}, ("'features' is the whole batch", "'x0'")),
        ({"inputs": [column]}, ("missing input 'x1'",)),
        ({"inputs": [column, {**column, "name": "x1", "shape": [2], "data": [1.0, 2.0]},
                     {**column, "name": "x2"}, {**column, "name": "x3"}]},
         ("different numbers of rows",)),
        ({"inputs": [one], "outputs": [{"name": "score"}]},
         ("outputs[0] names 'score'", "anomaly_score, is_anomaly")),
        ({"inputs": [one], "outputs": [{"name": "is_anomaly"}, {"name": "is_anomaly"}]},
         ("asked for more than once",)),
        ({"inputs": [one], "parameters": []}, ("parameters must be an object",)),
    ]:
        refused(served.post(INFER, json=body), 400, *words)
    refused(served.post(INFER, content=b"{", headers={"content-type": "application/json"}),
            400, "not valid JSON")


def test_outputs_selects(served: TestClient) -> None:
    request = {"inputs": [features(matrix_of(records(3)), [3, 4])]}
    both = served.post(INFER, json=request).json()["outputs"]
    assert [o["name"] for o in both] == ["anomaly_score", "is_anomaly"]
    for names in (["is_anomaly"], ["anomaly_score"], ["is_anomaly", "anomaly_score"]):
        chosen = served.post(INFER, json={**request, "outputs": [{"name": n} for n in names]})
        assert [o["name"] for o in chosen.json()["outputs"]] == names


def test_a_named_version_scores_when_loaded_and_404_otherwise(served: TestClient,
                                                              runtime: Runtime) -> None:
    batch = records(4, seed=8)
    request = {"inputs": [features(matrix_of(batch), [4, 4])]}
    v1 = served.post("/v2/models/wifi-anomaly/versions/v1/infer", json=request).json()
    assert v1["model_version"] == "v1" and v1["parameters"] == {"model_version": "v1"}
    expected = runtime.slot.state.find("v1").score_records(batch).scores
    assert np.allclose(v1["outputs"][0]["data"], expected, rtol=0, atol=1e-12)
    v2 = served.post("/v2/models/wifi-anomaly/versions/v2/infer", json=request).json()
    assert v2["model_version"] == "v2" and v2["outputs"][0]["data"] != v1["outputs"][0]["data"]
    refused(served.post("/v2/models/wifi-anomaly/versions/v9/infer", json=request), 404,
            "'v9' is not loaded")
    # v3 deploys: v2 becomes the fallback and v1, still in the registry, is no longer loaded
    add_versions_after(runtime, "v3")
    assert served.get("/api/v1/models/v1").status_code == 200
    refused(served.post("/v2/models/wifi-anomaly/versions/v1/infer", json=request), 404,
            "'v1' is not loaded", "v3, v2")
    refused(served.post("/v2/models/other/versions/v3/infer", json=request), 404, "other")


def add_versions_after(runtime: Runtime, name: str) -> None:
    write_renamed(runtime.manager.models_dir, name, artifact_files(name, seed=7,
                                                                   created_at=stamp(0)))
    runtime.manager.note_moved_in(name)
    runtime.manager.poll_once()
    assert runtime.slot.state.deployed is not None
    assert runtime.slot.state.deployed.version == name


def binary_request(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head)),
                                     "content-type": "application/octet-stream"}


def test_binary_tensor_data_in_and_out(served: TestClient) -> None:
    batch = records(3, seed=2)
    matrix = np.array(matrix_of(batch), dtype="<f4")
    expected = scores_of(served.post(INFER, json={"inputs": [features(matrix.tolist(),
                                                                      [3, 4], "FP32")]}))
    raw = matrix.tobytes()
    body, headers = binary_request({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 4],
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "anomaly_score", "parameters": {"binary_data": True}},
                    {"name": "is_anomaly"}]}, raw)
    response = served.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    size = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:size])
    score, flag = head["outputs"]
    assert score["parameters"] == {"binary_data_size": 24} and "data" not in score
    assert np.allclose(np.frombuffer(response.content[size:], "<f8"), expected, rtol=0,
                       atol=1e-12)
    assert flag["data"] == [bool(f) for f in flag["data"]] and len(flag["data"]) == 3

    # every output as binary data when the request says so (tritonclient's default)
    body, headers = binary_request({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 4],
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True}}, raw)
    response = served.post(INFER, content=body, headers=headers)
    size = int(response.headers["Inference-Header-Content-Length"])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(response.content[:size])
             ["outputs"]]
    assert sizes == [24, 3] and len(response.content) == size + 27

    def one_input(size: int) -> dict[str, Any]:
        return {"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 4],
                            "parameters": {"binary_data_size": size}}]}

    for header, data, words in [
        (one_input(len(raw) - 4), raw[:-4], ("44 bytes of FP32", "12 values of 4 bytes")),
        (one_input(len(raw) + 4), raw, ("binary_data_size 52", "only 48 bytes")),
        (one_input(len(raw)), raw + b"\0\0", ("2 bytes of binary tensor data after",)),
    ]:
        body, headers = binary_request(header, data)
        refused(served.post(INFER, content=body, headers=headers), 400, *words)
    body, headers = binary_request(one_input(len(raw)), raw)
    refused(served.post(INFER, content=body, headers={**headers,
                                                      "Inference-Header-Content-Length": "x"}),
            400, "Inference-Header-Content-Length is not a number")
    refused(served.post(INFER, content=body, headers={**headers,
                                                      "Inference-Header-Content-Length": "999"}),
            400, "Inference-Header-Content-Length is 999")
    nan = np.array([[np.nan, 0, 0, 0]], dtype="<f8").tobytes()
    body, headers = binary_request({"inputs": [{"name": "features", "datatype": "FP64",
                                                "shape": [1, 4],
                                                "parameters": {"binary_data_size": 32}}]}, nan)
    refused(served.post(INFER, content=body, headers=headers), 400, "record 0",
            "'x0' is not finite")


def test_one_scoring_path_metrics_monitoring_and_limits(served: TestClient,
                                                        runtime: Runtime) -> None:
    def metric(line: str) -> float:
        for row in served.get("/metrics").text.splitlines():
            if row.startswith(line + " "):
                return float(row.rsplit(" ", 1)[1])
        return 0.0

    served.post("/api/v1/score", json={"records": records(2)})
    served.post(INFER, json={"inputs": [features(matrix_of(records(5)), [5, 4])]})
    served.post("/v2/models/wifi-anomaly/versions/v1/infer",
                json={"inputs": [features(matrix_of(records(3)), [3, 4])]})
    assert metric('modeld_records_scored_total{version="v2"}') == 7
    assert metric('modeld_records_scored_total{version="v1"}') == 3
    assert metric('modeld_score_requests_total{outcome="ok"}') == 3
    runtime.monitors.drain()  # the monitoring thread's work on what was scored so far
    assert runtime.monitors.windows["v2"].records == 7
    assert runtime.monitors.windows["v1"].records == 3

    nan = np.array([[np.nan, 0, 0, 0]]).tobytes()
    body, headers = binary_request({"inputs": [{"name": "features", "datatype": "FP64",
                                                "shape": [1, 4],
                                                "parameters": {"binary_data_size": 32}}]}, nan)
    served.post(INFER, content=body, headers=headers)
    assert metric('modeld_score_errors_total{kind="invalid_record"}') == 1
    assert metric('modeld_score_requests_total{outcome="refused"}') == 1
    runtime.monitors.drain()
    assert runtime.monitors.windows["v2"].invalid == 1
    served.post("/v2/models/wifi-anomaly/versions/v0/infer",
                json={"inputs": [features([[0.0] * 4], [1, 4])]})

    limit = runtime.settings.api.max_records
    rows = [[0.0] * 4] * (limit + 1)
    refused(served.post(INFER, json={"inputs": [features(rows, [limit + 1, 4])]}), 413,
            "api.max_records")
    assert metric('modeld_records_scored_total{version="v2"}') == 7


def test_the_token_guards_all_but_the_probes_and_errors_keep_the_protocol_shape(
        tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path, token="s3cret")
    add_versions(runtime, "v1")
    with TestClient(create_app(runtime), **IN_PROCESS) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        for method, path in [("GET", "/v2"), ("GET", "/v2/models/wifi-anomaly"),
                             ("GET", "/v2/models/wifi-anomaly/ready"), ("POST", INFER),
                             ("POST", "/v2/models/wifi-anomaly/versions/v1/infer")]:
            response = http.request(method, path, json={})
            refused(response, 401, "bearer token")
            assert response.headers["WWW-Authenticate"] == "Bearer"
        ok = http.post(INFER, json={"inputs": [features([[0.0] * 4], [1, 4])]},
                       headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        refused(http.get("/v2/nowhere", headers={"Authorization": "Bearer s3cret"}), 404)
        # modeld's own API keeps its own shape
        assert http.get("/api/v1/status").json() == {"detail": "missing or wrong bearer token "
                                                     "(Authorization: Bearer <token>)"}
    runtime.close()  # the runtime's threads (the shadow worker) stop too


VALUE = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=30)
TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["features", "records", *FEATURES, "other"]),
     "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BOOL", "BYTES", "FP16", "x"]),
     "shape": st.lists(st.integers(-1, 5), max_size=3),
     "data": st.lists(VALUE | st.lists(VALUE, max_size=5), max_size=12)},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]),
                                            VALUE, max_size=2)},
)
REQUEST = st.fixed_dictionaries(
    {"inputs": st.lists(TENSOR, max_size=5)},
    optional={"id": VALUE, "outputs": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["anomaly_score", "is_anomaly", "other"])},
        optional={"parameters": st.dictionaries(st.just("binary_data"), VALUE)}), max_size=3),
        "parameters": st.dictionaries(st.sampled_from(["binary_data_output", "content_type"]),
                                      VALUE, max_size=2)},
)


def test_fuzz_inference_requests_answer_200_or_400(tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path)
    add_versions(runtime, "v1")
    http = TestClient(create_app(runtime), raise_server_exceptions=False, **IN_PROCESS)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=REQUEST, tail=st.binary(max_size=64))
    def fuzz(request: dict[str, Any], tail: bytes) -> None:
        head = json.dumps(request).encode()
        response = http.post(INFER, content=head + tail,
                             headers={"Inference-Header-Content-Length": str(len(head))})
        assert response.status_code in (200, 400), (request, response.text)
        if response.status_code == 400:
            assert response.json()["error"]

    with http:
        fuzz()
    runtime.close()  # the runtime's threads (the shadow worker) stop too
