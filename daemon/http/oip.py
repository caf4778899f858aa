"""The Open Inference Protocol (KServe V2; Triton's, MLServer's and Seldon's HTTP API) under /v2,
so that tritonclient scripts and KServe pipelines score with modeld unchanged.

One model, named ``api.model_name``: the deployed version, or any loaded version by name
(``/versions/{version}``). Its inputs are one of: a FP32/FP64 tensor ``features`` [N, F] in the
model's feature order; one numeric input per feature name (MLServer's "pd" columns); or a BYTES
input ``records`` of JSON log records, whose features are computed as for /api/v1/score. Its
outputs are ``anomaly_score`` (FP64 [N]) and ``is_anomaly`` (BOOL [N]). Tensors travel as JSON
or, with Triton's binary tensor data extension (tritonclient's default), as raw bytes after the
JSON header.

Handlers run on uvicorn's event loop and score through the one scoring call
(:func:`modeld.daemon.http.scoring.score_batch`), behind the app's bearer token like every
route but the health probes. What the protocol's clients send wrong raises 400; the app's one
error translation answers errors on these paths as ``{"error": ...}``, the protocol's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version as package_version
from typing import Any, Final, cast

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from modeld.core.errors import NoModelDeployed
from modeld.core.features import Batch, FeatureColumns
from modeld.core.loader import Scores, ServableModel
from modeld.daemon.http.body import parse_json, read_body
from modeld.daemon.http.scoring import score_batch
from modeld.daemon.http.views import ORJSONResponse
from modeld.daemon.process.runtime import Runtime

__all__ = ["OPEN_PROTOCOL_PATHS", "is_protocol_path", "oip_router", "protocol_error"]

PREFIX: Final = "/v2"
OPEN_PROTOCOL_PATHS: Final = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Kubernetes probes send no token; they learn nothing but up or down."""

FEATURES: Final = "features"
RECORDS: Final = "records"
SCORE: Final = "anomaly_score"
FLAG: Final = "is_anomaly"
OUTPUTS: Final = (SCORE, FLAG)
EXTENSIONS: Final = ("binary_tensor_data",)
HEADER_LENGTH: Final = "Inference-Header-Content-Length"
INLINE_BODY_BYTES: Final = 64 * 1024

# The protocol's datatypes and their little-endian layout in binary tensor data; BYTES are
# length-prefixed elements instead.
DTYPES: Final[dict[str, np.dtype[Any] | None]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BYTES": None,
}
FLOATS: Final = ("FP32", "FP64")
NUMERIC: Final = tuple(d for d in DTYPES if d not in ("BOOL", "BYTES"))

_JSON_TYPE: Final = {str: "a string", bool: "a boolean", dict: "an object", type(None): "null"}


def is_protocol_path(path: str) -> bool:
    """True for the protocol's routes, whose errors are ``{"error": ...}``."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def protocol_error(status: int, message: str) -> ORJSONResponse:
    """The protocol's error shape; a request the server cannot use is its 400 (not 422)."""
    return ORJSONResponse({"error": message}, status_code=400 if status == 422 else status)


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One input of an inference request, decoded: flat ``values`` of ``shape``. Numeric and
    BOOL values are a numpy array; BYTES values a list of str, bytes or JSON objects."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray | list[object]


@dataclass(frozen=True, slots=True)
class InferRequest:
    """An inference request as the protocol defines it, checked and decoded."""

    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[tuple[str, bool], ...]  # (name, as binary data), in the order asked


def oip_router(runtime: Runtime) -> APIRouter:
    """The /v2 routes for one runtime."""
    router = APIRouter(tags=["Open Inference Protocol"])

    def name() -> str:  # read per request: a reload changes it at once
        return runtime.settings.api.model_name

    def servable(model_name: str, version: str | None) -> ServableModel:
        if model_name != name():
            raise HTTPException(404, f"unknown model {model_name!r}; this server serves "
                                f"{name()!r} (api.model_name)")
        state = runtime.slot.state
        if version is not None:
            return state.find(version)
        if state.deployed is None:
            raise NoModelDeployed()
        return state.deployed

    @router.get(PREFIX, summary="Server metadata: name, version, protocol extensions")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "modeld", "version": package_version("modeld"),
                "extensions": list(EXTENSIONS)}

    @router.get(PREFIX + "/health/live", summary="200 while the server runs")
    async def server_live() -> dict[str, Any]:
        return {"live": True}

    @router.get(PREFIX + "/health/ready", summary="200 when a model is deployed, else 503")
    async def server_ready() -> dict[str, Any]:
        servable(name(), None)
        return {"ready": True}

    def metadata(model_name: str, version: str | None) -> dict[str, Any]:
        model = servable(model_name, version)
        names = list(model.feature_names)
        versions = ([model.version] if version is not None else
                    [s.version for s in runtime.slot.state.loaded()])
        return {
            "name": name(),
            "versions": versions,
            "platform": "sklearn",
            "inputs": [
                {"name": FEATURES, "datatype": "FP64", "shape": [-1, len(names)],
                 "parameters": {"feature_names": names}},
                {"name": RECORDS, "datatype": "BYTES", "shape": [-1]},
                *({"name": n, "datatype": "FP64", "shape": [-1]} for n in names),
            ],
            "outputs": [{"name": SCORE, "datatype": "FP64", "shape": [-1]},
                        {"name": FLAG, "datatype": "BOOL", "shape": [-1]}],
        }

    @router.get(PREFIX + "/models/{model_name}",
                summary="The deployed version's metadata: inputs, outputs, datatypes, shapes")
    async def model_metadata(model_name: str) -> dict[str, Any]:
        return metadata(model_name, None)

    @router.get(PREFIX + "/models/{model_name}/versions/{version}",
                summary="A loaded version's metadata; 404 when it is not loaded")
    async def version_metadata(model_name: str, version: str) -> dict[str, Any]:
        return metadata(model_name, version)

    def ready(model_name: str, version: str | None) -> dict[str, Any]:
        model = servable(model_name, version)
        return {"name": name(), "version": model.version, "ready": True}

    @router.get(PREFIX + "/models/{model_name}/ready",
                summary="200 when a version is deployed, else 503")
    async def model_ready(model_name: str) -> dict[str, Any]:
        return ready(model_name, None)

    @router.get(PREFIX + "/models/{model_name}/versions/{version}/ready",
                summary="200 when that version is loaded, else 404")
    async def version_ready(model_name: str, version: str) -> dict[str, Any]:
        return ready(model_name, version)

    async def infer(request: Request, model_name: str, version: str | None) -> Response:
        model = servable(model_name, version)
        body = await read_body(request, runtime.settings.api.max_request_bytes)
        decode = partial(decode_request, body, request.headers.get(HEADER_LENGTH), model)
        # decoding is Python work per value: a large body is decoded off the event loop
        parsed, batch = (decode() if len(body) <= INLINE_BODY_BYTES else
                         await run_in_threadpool(decode))
        return answer(parsed, await score_batch(runtime, batch, version), name())

    @router.post(PREFIX + "/models/{model_name}/infer", openapi_extra=INFER_SCHEMA,
                 summary="Score with the deployed version (its fallback answers if it fails)")
    async def model_infer(request: Request, model_name: str) -> Response:
        return await infer(request, model_name, None)

    @router.post(PREFIX + "/models/{model_name}/versions/{version}/infer",
                 openapi_extra=INFER_SCHEMA,
                 summary="Score with a loaded version (deployed or fallback); 404 otherwise")
    async def version_infer(request: Request, model_name: str, version: str) -> Response:
        return await infer(request, model_name, version)

    return router


# --------------------------------------------------------------------------- the request

def decode_request(body: bytes, header_length: str | None, model: ServableModel
                   ) -> tuple[InferRequest, Batch]:
    """The request and the batch it describes for ``model``."""
    parsed = parse_request(body, header_length)
    return parsed, batch_of(parsed.inputs, model)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """Check and decode an inference request: its JSON, then any binary tensor data after it.

    ``header_length`` is the request's Inference-Header-Content-Length (binary tensor data
    extension): the JSON's size, the rest of the body being the inputs' raw bytes in order.
    """
    json_size = len(body)
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 <= json_size <= len(body):
            raise _bad(f"{HEADER_LENGTH} is {json_size}; the body has {len(body)} bytes")
    payload = parse_json(body[:json_size])
    if not isinstance(payload, dict):
        raise _bad('the body must be an inference request object {"inputs": [...]}')
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"id must be a string, got {_describe(request_id)}")
    parameters = _parameters(payload.get("parameters"), "the request's parameters")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad('inputs must be a non-empty array of tensors {"name", "datatype", "shape", '
                   '"data"}')
    binary = memoryview(body)[json_size:]
    decoded = []
    for position, spec in enumerate(inputs):
        tensor, used = _input(position, spec, binary)
        decoded.append(tensor)
        binary = binary[used:]
    if len(binary):
        raise _bad(f"{len(binary)} bytes of binary tensor data after the inputs' "
                   "binary_data_size")
    seen: set[str] = set()
    for tensor in decoded:
        if tensor.name in seen:
            raise _bad(f"input {tensor.name!r} is given more than once")
        seen.add(tensor.name)
    binary_default = parameters.get("binary_data_output", False) is True
    return InferRequest(request_id, tuple(decoded),
                        _requested_outputs(payload.get("outputs"), binary_default))


def _parameters(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} must be an object, got {_describe(value)}")
    return value


def _input(position: int, spec: object, binary: memoryview) -> tuple[Tensor, int]:
    """One input and how many bytes of the binary tensor data it took."""
    if not isinstance(spec, dict):
        raise _bad(f"inputs[{position}] must be an object, got {_describe(spec)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"inputs[{position}] has no name")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise _bad(f"input {name!r} has datatype {datatype!r}; the protocol's datatypes are "
                   f"{', '.join(DTYPES)}")
    shape = spec.get("shape")
    if (not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(f"input {name!r} has shape {shape!r}; a shape is an array of sizes >= 0")
    count = math.prod(shape)
    parameters = _parameters(spec.get("parameters"), f"input {name!r}'s parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise _bad(f"input {name!r} has binary_data_size {size!r}")
        if size > len(binary):
            raise _bad(f"input {name!r} has binary_data_size {size}; only {len(binary)} bytes "
                       "of binary tensor data are left")
        values = _binary_values(name, datatype, bytes(binary[:size]), count)
        return Tensor(name, datatype, tuple(shape), values), size
    if "data" not in spec:
        raise _bad(f"input {name!r} has no data (and no binary_data_size)")
    return Tensor(name, datatype, tuple(shape), _json_values(name, datatype, spec["data"],
                                                             count)), 0


def _json_values(name: str, datatype: str, data: object, count: int) -> np.ndarray | list[object]:
    """The tensor's JSON data, flat (the protocol allows nested or flat, row-major)."""
    flat = _flatten(name, data)
    if len(flat) != count:
        raise _bad(f"input {name!r} has {len(flat)} values; its shape holds {count}")
    if datatype == "BYTES":
        return flat
    allowed = {bool} if datatype == "BOOL" else {int, float}
    if not set(map(type, flat)) <= allowed:  # the check runs at C speed; the search only on error
        index, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        wanted = "true or false" if datatype == "BOOL" else "a number"
        raise _bad(f"input {name!r} ({datatype}) value {index} is {_describe(value)}, "
                   f"not {wanted}")
    if datatype == "BOOL":
        return np.array(flat, dtype=bool)
    try:
        return np.array(flat, dtype=np.float64)
    except OverflowError:
        raise _bad(f"input {name!r} holds a number too large for FP64") from None


def _flatten(name: str, data: object) -> list[object]:
    """Nested arrays flattened in row-major order, without recursion (any depth is safe)."""
    if not isinstance(data, list):
        raise _bad(f"input {name!r}'s data must be an array, got {_describe(data)}")
    flat: list[object] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _binary_values(name: str, datatype: str, raw: bytes, count: int
                   ) -> np.ndarray | list[object]:
    dtype = DTYPES[datatype]
    if dtype is None:
        elements = _bytes_elements(name, raw)
        if len(elements) != count:
            raise _bad(f"input {name!r} has {len(elements)} elements; its shape holds {count}")
        return list(elements)
    if len(raw) != count * dtype.itemsize:
        raise _bad(f"input {name!r} has {len(raw)} bytes of {datatype} data; its shape holds "
                   f"{count} values of {dtype.itemsize} bytes")
    return np.frombuffer(raw, dtype=dtype)


def _bytes_elements(name: str, raw: bytes) -> list[bytes]:
    """BYTES in binary tensor data: each element a 4-byte little-endian length, then its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _bad(f"input {name!r}'s BYTES data ends inside an element's length")
        size = int.from_bytes(raw[offset:offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise _bad(f"input {name!r}'s BYTES element {len(elements)} is longer than the data")
        elements.append(raw[offset:offset + size])
        offset += size
    return elements


def _requested_outputs(value: object, binary_default: bool) -> tuple[tuple[str, bool], ...]:
    """The outputs asked for, each with whether it travels as binary data; all when none."""
    if value is None or value == []:
        return tuple((name, binary_default) for name in OUTPUTS)
    if not isinstance(value, list):
        raise _bad(f"outputs must be an array of {{\"name\": ...}}, got {_describe(value)}")
    chosen: list[tuple[str, bool]] = []
    for position, spec in enumerate(value):
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in OUTPUTS:
            raise _bad(f"outputs[{position}] names {name!r}; the model's outputs are "
                       f"{', '.join(OUTPUTS)}")
        if any(name == seen for seen, _ in chosen):
            raise _bad(f"output {name!r} is asked for more than once")
        parameters = _parameters(spec.get("parameters"), f"output {name!r}'s parameters")
        binary = parameters.get("binary_data", binary_default)
        if type(binary) is not bool:
            raise _bad(f"output {name!r}'s binary_data must be true or false")
        chosen.append((name, binary))
    return tuple(chosen)


def _describe(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if type(value) in (int, float):
        return f"the number {value}"
    return _JSON_TYPE.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- the batch

def batch_of(inputs: Sequence[Tensor], model: ServableModel) -> Batch:
    """The scoring batch the inputs describe, for ``model``: a ``features`` tensor, one input
    per feature name, or ``records``."""
    names = model.feature_names
    by_name = {t.name: t for t in inputs}
    for form in (FEATURES, RECORDS):
        if form in by_name and form not in names:
            if len(inputs) > 1:
                others = ", ".join(repr(t.name) for t in inputs if t.name != form)
                raise _bad(f"input {form!r} is the whole batch; it cannot come with {others}")
            return _features(by_name[form], names) if form == FEATURES else _records(
                by_name[form])
    for tensor in inputs:
        if tensor.name not in names:
            raise _bad(f"unknown input {tensor.name!r}; model {model.version} takes "
                       f"{FEATURES!r} [N, {len(names)}] (FP32/FP64), {RECORDS!r} [N] (BYTES), "
                       f"or one input per feature: {', '.join(names)}")
    rows = {_column_rows(tensor) for tensor in inputs}
    for name in names:
        if name not in by_name:
            raise _bad(f"missing input {name!r}: with one input per feature, every feature of "
                       f"model {model.version} is needed ({', '.join(names)})")
    if len(rows) > 1:
        raise _bad(f"the feature inputs have different numbers of rows: {sorted(rows)}")
    return FeatureColumns({n: np.asarray(by_name[n].values, dtype=np.float64) for n in names},
                          rows.pop() if rows else 0)


def _features(tensor: Tensor, names: tuple[str, ...]) -> FeatureColumns:
    if tensor.datatype not in FLOATS:
        raise _bad(f"input {FEATURES!r} must be FP32 or FP64, got {tensor.datatype}")
    if len(tensor.shape) != 2 or tensor.shape[1] != len(names):
        raise _bad(f"input {FEATURES!r} has shape {list(tensor.shape)}; the model takes "
                   f"[N, {len(names)}], its features in this order: {', '.join(names)}")
    matrix = np.asarray(tensor.values, dtype=np.float64).reshape(tensor.shape)
    return FeatureColumns({n: matrix[:, i] for i, n in enumerate(names)}, tensor.shape[0])


def _column_rows(tensor: Tensor) -> int:
    if tensor.datatype not in NUMERIC:
        raise _bad(f"input {tensor.name!r} must be numeric ({', '.join(NUMERIC)}), got "
                   f"{tensor.datatype}")
    if len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1):
        return tensor.shape[0]
    raise _bad(f"input {tensor.name!r} has shape {list(tensor.shape)}; a feature input is "
               "[N] or [N, 1]")


def _records(tensor: Tensor) -> list[object]:
    if tensor.datatype != "BYTES":
        raise _bad(f"input {RECORDS!r} must be BYTES (JSON log records), got {tensor.datatype}")
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
        raise _bad(f"input {RECORDS!r} has shape {list(tensor.shape)}; it is [N] or [N, 1]")
    records: list[object] = []
    for index, element in enumerate(cast("list[object]", tensor.values)):  # BYTES: a list
        if isinstance(element, str | bytes):
            try:
                records.append(orjson.loads(element))
            except orjson.JSONDecodeError as exc:
                raise _bad(f"input {RECORDS!r} element {index} is not JSON: {exc}") from None
        else:  # a JSON object given as is; the feature extractor refuses anything else
            records.append(element)
    return records


# --------------------------------------------------------------------------- the answer

def answer(request: InferRequest, result: Scores, model_name: str) -> Response:
    """The inference response: the outputs asked for, as JSON or binary tensor data."""
    count = len(result.scores)
    arrays = {SCORE: ("FP64", np.ascontiguousarray(result.scores, dtype="<f8")),
              FLAG: ("BOOL", np.ascontiguousarray(result.flags, dtype=bool))}
    outputs = []
    chunks = []
    for name, binary in request.outputs:
        datatype, values = arrays[name]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [count]}
        if binary:
            raw = values.tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = values
        outputs.append(tensor)
    parameters: dict[str, Any] = {"model_version": result.version}
    if result.fallback_reason is not None:
        parameters["fallback_reason"] = result.fallback_reason
    body: dict[str, Any] = {"model_name": model_name, "model_version": result.version}
    if request.id is not None:
        body["id"] = request.id
    body |= {"parameters": parameters, "outputs": outputs}
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *chunks]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


INFER_SCHEMA: Final = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": list(DTYPES)},
                        "parameters": {"type": "object"},
                        "data": {"type": "array"},
                    },
                }},
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "enum": list(OUTPUTS)},
                                   "parameters": {"type": "object"}},
                }},
            },
        }}},
    }
}
