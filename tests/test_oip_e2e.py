"""End-to-end: the real tritonclient[http] package scores with a real `modeld run` process over
the Open Inference Protocol, with its defaults (binary tensor data) and with JSON tensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import DaemonProcess, artifact_files, records, stamp, write_renamed

pytestmark = pytest.mark.e2e

TOKEN = "oip-s3cret"
MODEL = "wifi-anomaly"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon with a token, serving v2 with v1 loaded as its fallback."""
    daemon = DaemonProcess(tmp_path, overrides={"api": {"token": TOKEN}})
    daemon.models_dir.mkdir(parents=True)
    write_renamed(daemon.models_dir, "one", artifact_files("v1", seed=1, created_at=stamp(2)))
    daemon.start()
    daemon.wait_deployed("v1")
    write_renamed(daemon.models_dir, "two", artifact_files("v2", seed=2, created_at=stamp(1)))
    daemon.wait_deployed("v2")
    yield daemon
    daemon.stop()


@pytest.fixture
def client(served: DaemonProcess) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{served.port}")
    yield triton
    triton.close()


def auth() -> dict[str, str]:
    """A new headers dict per call: tritonclient adds its Inference-Header-Content-Length to the
    dict it is given, and a shared one would carry that into the next request."""
    return {"Authorization": f"Bearer {TOKEN}"}


def own_scores(daemon: DaemonProcess, batch: list[dict]) -> list[float]:
    answer = daemon.post("/api/v1/score", {"records": batch}).json()
    assert answer["model_version"] == "v2"
    return [r["score"] for r in answer["results"]]


def test_tritonclient_scores_with_numpy_inputs_as_api_v1_does(
    served: DaemonProcess, client: httpclient.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()  # the probes are open, like /healthz and /readyz
    assert client.is_model_ready(MODEL, headers=auth())
    server = client.get_server_metadata(headers=auth())
    assert server["name"] == "modeld" and "binary_tensor_data" in server["extensions"]

    meta = client.get_model_metadata(MODEL, headers=auth())
    assert meta["name"] == MODEL and meta["versions"] == ["v2", "v1"]
    features = meta["inputs"][0]
    assert features == {"name": "features", "datatype": "FP64", "shape": [-1, 4],
                        "parameters": {"feature_names": ["x0", "x1", "x2", "x3"]}}
    assert meta["outputs"] == [{"name": "anomaly_score", "datatype": "FP64", "shape": [-1]},
                               {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]}]

    batch = records(8, seed=5)
    expected = own_scores(served, batch)
    matrix = np.array([[r["features"][n] for n in features["parameters"]["feature_names"]]
                       for r in batch])
    # tritonclient's defaults: binary tensor data in, every output back as binary data
    tensor = httpclient.InferInput("features", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    result = client.infer(MODEL, [tensor], headers=auth(), request_id="req-7")
    scores = result.as_numpy("anomaly_score")
    assert scores.dtype == np.float64 and scores.shape == (8,)
    assert np.allclose(scores, expected, rtol=0, atol=1e-12)
    assert result.as_numpy("is_anomaly").dtype == np.bool_
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "v2"
    assert response["parameters"]["model_version"] == "v2"

    # FP32 as JSON, one output asked for as JSON
    tensor32 = httpclient.InferInput("features", list(matrix.shape), "FP32")
    tensor32.set_data_from_numpy(matrix.astype(np.float32), binary_data=False)
    only = client.infer(MODEL, [tensor32], headers=auth(),
                        outputs=[httpclient.InferRequestedOutput("is_anomaly",
                                                                 binary_data=False)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["is_anomaly"]
    assert only.as_numpy("anomaly_score") is None and only.as_numpy("is_anomaly").shape == (8,)

    # BYTES records, features computed by the daemon as for /api/v1/score
    lines = np.array([json.dumps(r).encode() for r in batch], dtype=np.object_)
    raw = httpclient.InferInput("records", [len(batch)], "BYTES")
    raw.set_data_from_numpy(lines)
    from_records = client.infer(MODEL, [raw], headers=auth())
    assert np.allclose(from_records.as_numpy("anomaly_score"), expected, rtol=0, atol=1e-12)

    metrics = served.get("/metrics").text  # one scoring path: the same counters
    assert 'modeld_records_scored_total{version="v2"} 32.0' in metrics


def test_tritonclient_names_a_version_and_needs_the_token(
    served: DaemonProcess, client: httpclient.InferenceServerClient,
) -> None:
    batch = records(5, seed=9)
    matrix = np.array([[r["features"][n] for n in ("x0", "x1", "x2", "x3")] for r in batch])
    tensor = httpclient.InferInput("features", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)

    fallback = client.infer(MODEL, [tensor], model_version="v1", headers=auth())
    assert fallback.get_response()["model_version"] == "v1"
    assert fallback.get_response()["parameters"] == {"model_version": "v1"}
    deployed = client.infer(MODEL, [tensor], headers=auth())
    assert not np.allclose(fallback.as_numpy("anomaly_score"),
                           deployed.as_numpy("anomaly_score"))
    assert client.get_model_metadata(MODEL, "v1", headers=auth())["versions"] == ["v1"]
    assert client.is_model_ready(MODEL, "v1", headers=auth())
    assert not client.is_model_ready(MODEL, "v0", headers=auth())

    with pytest.raises(InferenceServerException) as unknown:
        client.infer(MODEL, [tensor], model_version="v0", headers=auth())
    assert unknown.value.status() == "404" and "'v0' is not loaded" in unknown.value.message()
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [tensor])
    assert refused.value.status() == "401" and "bearer token" in refused.value.message()
    with pytest.raises(InferenceServerException) as bad:
        client.infer("other-model", [tensor], headers=auth())
    assert bad.value.status() == "404" and "wifi-anomaly" in bad.value.message()
