"""The standard protocols beside /v1, so that clients written for other model servers
call Lepton by changing only the URL.

The Open Inference Protocol (KServe v2, as Triton, KServe, MLServer and Seldon speak it)
over HTTP/REST, with its binary tensor extension:

    GET  /v2/health/live                       {"live": true} (open, like /healthz)
    GET  /v2/health/ready                      {"ready": true}, 503 before a model loads (open)
    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/models/{name}[/versions/{v}]      model metadata: versions, platform, inputs, outputs
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/repository/index                  [{"name", "version", "state"}]: Triton's, to learn the name
    POST /v2/models/{name}[/versions/{v}]/infer

One input tensor, "input": the raw samples, shape [-1, *the sample's shape], UINT8 for
uint8 images (any integer datatype is read), FP32 otherwise (integers or floats read).
Outputs: a classifier answers "label" (INT64 [N]), "class_name" (BYTES [N]) and
"probabilities" (FP32 [N, K]); a regression model "value" (FP64 [N]). The answer's
model_version is the version whose batch scored the request, and its parameters carry
the request_id that /v1/feedback takes. Refusals are {"error": "..."}: 400 for a
malformed tensor, 404 for an unknown model or version, 413 over the limits, 503 before
a model loads.

MLflow's scoring protocol, as `mlflow models serve` answers it:

    POST /invocations   {"dataframe_split": ...}, {"dataframe_records": [...]},
                        {"instances": [...]} or {"inputs": ...} (JSON); text/csv for tables
    GET  /ping, /health  200 (open)

The answer is {"predictions": [...]}, one record per instance, with the columns of the
logged pyfunc: label, class_name, probabilities (regression: value). Refusals are
MLflow's {"error_code": ..., "message": "..."} (BAD_REQUEST for a body without exactly one
of the formats, INVALID_PARAMETER_VALUE for data the model cannot read). A table's columns must be the
model's feature names: an unknown or a missing column is a 400 (MLflow drops an
unknown one silently, so a misspelt feature would go unnoticed). Rows without names
(`inputs` or `instances` as lists) are read in the training feature order, where MLflow
refuses them for a model whose signature names its columns.

Every route goes through `ModelServer.predict` (the batcher, the prediction log, the
metrics; the canary's X-Request-Key header too), and all but the open probes take the
bearer token of /v1/* (`require_token`). Bodies are read within the limits of /v1
(`read_body`), and from `BIG_BODY` up decoded on a worker thread, off the event loop;
nesting, types and counts are checked while the numbers are gathered, before any array
is made.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import struct
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from lepton.serving.bodies import BIG_BODY, loads_json, read_body
from lepton.serving.core import BadRequest, ClientGone, Loaded, json_response
from lepton.serving.routes import Server, check_token, require_token
from lepton.serving.server import ModelServer
from lepton_core.predictor import Predictor

MAX_DIMS = 16  # nesting deeper than any sample's shape plus the batch is refused
HEADER_LENGTH = "inference-header-content-length"
MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CSV_TYPES = ("text/csv",)

# the v2 datatypes as numpy reads them (little-endian, as the binary extension sends them)
V2_DTYPES = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
V2_INTEGERS = frozenset(("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"))
V2_FLOATS = frozenset(("FP16", "FP32", "FP64"))
INPUT = "input"

T = TypeVar("T")

public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_token)])
hot = APIRouter()  # the inference routes: no dependency, the token checked first in each (see routes.hot)


# ---------------------------------------------------------------- shared pieces
_NUMBER_TYPES = frozenset((int, float))  # bool is neither: type(True) is bool
_INT_TYPE = frozenset((int,))


def _numbers(value: Any, what: str) -> tuple[list, tuple[int, ...], bool]:
    """Nested JSON lists of numbers -> (the numbers in row-major order, the nesting's
    shape, whether all are integers). Level by level, without recursion; a ragged
    nesting, a string, a bool or null is refused before anything is allocated beyond
    the lists the JSON already holds."""
    shape: list[int] = []
    v = value
    while isinstance(v, list):
        shape.append(len(v))
        if len(shape) > MAX_DIMS:
            raise BadRequest(400, f"{what} nested deeper than {MAX_DIMS} levels")
        if not v:
            break
        v = v[0]
    level = [value]
    for size in shape:
        nxt: list = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                raise BadRequest(400, f"{what} are ragged (rows of different lengths or depths)")
            nxt.extend(item)
        level = nxt
    kinds = set(map(type, level))  # the types present, gathered at C speed (no loop in Python per number)
    if not kinds <= _NUMBER_TYPES:
        odd = next(x for x in level if type(x) not in _NUMBER_TYPES)  # the first one, for the refusal
        shown = repr(odd) if len(repr(odd)) <= 40 else repr(odd)[:40] + "..."
        raise BadRequest(400, f"{what} must be numbers, not {shown}")
    return level, tuple(shape), float not in kinds


def _array(flat: list, dtype: np.dtype, what: str) -> np.ndarray:
    try:
        return np.array(flat, dtype=dtype)
    except OverflowError:
        raise BadRequest(400, f"{what} hold a value out of range for {dtype}") from None


_loads = loads_json


async def _off_loop(size: int, fn: Callable[[], T]) -> T:
    """`fn()` on a worker thread when the body is large, so that decoding it never holds
    up the event loop (and the other requests on it)."""
    if size < BIG_BODY:
        return fn()
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def _check_count(server: ModelServer, x: np.ndarray) -> None:
    if x.ndim == 0 or len(x) == 0:
        raise BadRequest(400, "no instances")
    if len(x) > server.params.max_instances:
        raise BadRequest(413, f"{len(x)} instances is over the limit of {server.params.max_instances}")


def _answered(server: ModelServer, t0: float) -> None:
    server.metrics.latency.observe(time.perf_counter() - t0)
    server.metrics.answered.inc()


# ---------------------------------------------------------------- Open Inference Protocol
def _model(server: ModelServer, name: str, version: str | None = None) -> Loaded:
    if name != server.model_name:
        raise BadRequest(404, f"unknown model {name!r}; this server serves {server.model_name!r}")
    cur = server.current
    if cur is None:
        raise BadRequest(503, server.load_error or "no model loaded yet")
    if version is not None and version != cur.version:
        canary = server.rollout.canary_loaded(version)  # the canary's version answers when asked for by name
        if canary is None:
            raise BadRequest(404, f"model {name!r} version {version!r} is not loaded; this server serves {cur.version}")
        return canary
    return cur


def _input_datatype(cur: Loaded) -> str:
    return "UINT8" if cur.predictor.preprocessing.dtype == "uint8" else "FP32"


def _outputs_of(cur: Loaded) -> list[dict]:
    pre = cur.predictor.preprocessing
    if pre.regression:
        return [{"name": "value", "datatype": "FP64", "shape": [-1]}]
    return [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(pre.classes)]},
    ]


def _platform(cur: Loaded) -> str:
    if isinstance(cur.predictor, Predictor):
        return "pytorch"
    # a `lepton optimize` variant (effects.tracking.onnx_variants, not imported here: it loads ONNX Runtime)
    return "onnxruntime" if type(cur.predictor).__name__ == "OnnxPredictor" else "python"


def _metadata(server: ModelServer, cur: Loaded) -> dict:
    pre = cur.predictor.preprocessing
    return {
        "name": server.model_name,
        "versions": [cur.version],
        "platform": _platform(cur),
        "inputs": [{"name": INPUT, "datatype": _input_datatype(cur), "shape": [-1, *pre.input_shape]}],
        "outputs": _outputs_of(cur),
    }


@public.get("/v2/health/live")
async def v2_live() -> Response:
    return JSONResponse({"live": True})


@public.get("/v2/health/ready")
async def v2_ready(server: Server) -> Response:
    ready = server.current is not None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@protected.get("/v2")
async def v2_server() -> Response:
    return JSONResponse({"name": "lepton", "version": _version(), "extensions": ["binary_tensor_data"]})


@protected.post("/v2/repository/index")
async def v2_index(server: Server) -> Response:
    """Triton's model repository index (tritonclient's get_model_repository_index): the
    one model this server serves, so a client can learn its name."""
    cur = server.current
    state = {"state": "READY", "version": cur.version} if cur else {"state": "UNAVAILABLE"}
    return JSONResponse([{"name": server.model_name, **state}])


@protected.get("/v2/models/{name}")
@protected.get("/v2/models/{name}/versions/{version}")
async def v2_model(server: Server, name: str, version: str | None = None) -> Response:
    return JSONResponse(_metadata(server, _model(server, name, version)))


@protected.get("/v2/models/{name}/ready")
@protected.get("/v2/models/{name}/versions/{version}/ready")
async def v2_model_ready(server: Server, name: str, version: str | None = None) -> Response:
    cur = _model(server, name, version)
    return JSONResponse({"name": name, "versions": [cur.version], "ready": True})


class _InferRequest:
    """A decoded v2 inference request: the samples, the outputs asked for (name, binary),
    and the request's id."""

    def __init__(self, x: np.ndarray, outputs: list[tuple[str, bool]] | None, binary_default: bool, rid: Any):
        self.x, self.outputs, self.binary_default, self.id = x, outputs, binary_default, rid


def _infer_request(body: bytes, header_length: str | None, cur: Loaded) -> _InferRequest:
    """Body (JSON, or JSON then binary tensors) -> the checked request."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise BadRequest(400, f"Inference-Header-Content-Length {header_length!r} is not within the body")
        head, binary = memoryview(body)[:n], memoryview(body)[n:]
    else:
        head, binary = memoryview(body), memoryview(b"")
    doc = _loads(head)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise BadRequest(400, 'expected a JSON object {"inputs": [...]}')
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest(400, "the request's id must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, "the request's parameters must be an object")
    inputs = doc["inputs"]
    if len(inputs) != 1:
        raise BadRequest(400, f"expected 1 input ({INPUT!r}), got {len(inputs)}")
    x, used = _tensor(inputs[0], binary, cur)
    if used != len(binary):
        raise BadRequest(400, f"the body holds {len(binary) - used} bytes past the tensors' binary data")
    outputs = doc.get("outputs")
    asked = None
    if outputs is not None:
        known = [o["name"] for o in _outputs_of(cur)]
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BadRequest(400, 'outputs must be a list of {"name": ...}')
        asked = []
        for o in outputs:
            if not isinstance(o.get("name"), str) or o["name"] not in known:
                raise BadRequest(400, f"unknown output {_shown(o.get('name'))}; the model answers {', '.join(known)}")
            p = o.get("parameters") or {}
            if not isinstance(p, dict):
                raise BadRequest(400, f"the parameters of output {o['name']!r} must be an object")
            if p.get("classification"):
                raise BadRequest(400, "the classification extension is not served; ask for label and probabilities")
            asked.append((o["name"], bool(p.get("binary_data", False))))
    return _InferRequest(x, asked, bool(params.get("binary_data_output", False)), rid)


def _shown(value: Any) -> str:
    """A client's value in an error line: its repr, cut short."""
    r = repr(value)
    return r if len(r) <= 60 else r[:60] + "..."


def _tensor(inp: Any, binary: memoryview, cur: Loaded) -> tuple[np.ndarray, int]:
    """One v2 input tensor -> (the samples, the bytes of the binary section it used)."""
    if not isinstance(inp, dict):
        raise BadRequest(400, 'an input must be an object {"name", "shape", "datatype", "data"}')
    name, shape, datatype = inp.get("name"), inp.get("shape"), inp.get("datatype")
    if not isinstance(name, str) or name != INPUT:
        raise BadRequest(400, f"unexpected input {_shown(name)}; the model reads {INPUT!r}")
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > MAX_DIMS
        or set(map(type, shape)) != _INT_TYPE  # ints only (not bools, floats or strings)
        or min(shape) < 0
    ):
        raise BadRequest(400, f"input shape {_shown(shape)} is not a list of sizes with the batch first")
    want = _input_datatype(cur)
    if not isinstance(datatype, str) or (datatype not in V2_DTYPES and datatype not in ("BYTES", "BF16")):
        raise BadRequest(400, f"unknown datatype {_shown(datatype)}")
    readable = V2_INTEGERS if want == "UINT8" else V2_INTEGERS | V2_FLOATS
    if datatype not in readable:
        raise BadRequest(400, f"input datatype {datatype}; the model reads {want}")
    dtype = V2_DTYPES[datatype]
    count = math.prod(shape)  # Python ints: no overflow
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, "an input's parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in inp:
            raise BadRequest(400, "an input has both data and binary_data_size")
        if type(size) is not int or not 0 <= size <= len(binary):
            raise BadRequest(400, f"binary_data_size {size!r} is not within the body's binary data")
        if size != count * dtype.itemsize:
            raise BadRequest(
                400, f"shape {shape} of {datatype} takes {count * dtype.itemsize} bytes; binary_data_size is {size}"
            )
        flat = np.frombuffer(binary[:size], dtype=dtype)
        used = size
    else:
        if "data" not in inp:
            raise BadRequest(400, "an input without data (or binary_data_size)")
        numbers, _, all_int = _numbers(inp["data"], "input data")
        if len(numbers) != count:
            raise BadRequest(400, f"shape {shape} holds {count} values; the data has {len(numbers)}")
        if datatype in V2_INTEGERS and not all_int:
            raise BadRequest(400, f"input data of datatype {datatype} must be integers")
        flat = _array(numbers, dtype, "input data")
        used = 0
    return flat.reshape(shape), used


def _bytes_tensor(names: list[str]) -> bytes:
    """BYTES as the binary extension sends them: each element's length (uint32, little
    endian), then its UTF-8 bytes."""
    out = bytearray()
    for s in names:
        b = s.encode()
        out += struct.pack("<I", len(b)) + b
    return bytes(out)


def _infer_response(server: ModelServer, req: _InferRequest, answer: dict) -> Response:
    n = len(req.x)
    if "values" in answer:
        tensors: dict[str, tuple[str, list[int], Any]] = {"value": ("FP64", [n], answer["values"])}
    else:
        k = len(answer["probabilities"][0]) if n else 0
        tensors = {
            "label": ("INT64", [n], answer["labels"]),
            "class_name": ("BYTES", [n], answer["class_names"]),
            "probabilities": ("FP32", [n, k], answer["probabilities"]),
        }
    asked = req.outputs if req.outputs is not None else [(name, req.binary_default) for name in tensors]
    outputs, chunks = [], []
    for name, binary in asked:
        datatype, shape, data = tensors[name]
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            if datatype == "BYTES":
                raw = _bytes_tensor(data)
            else:
                raw = np.asarray(data, dtype=V2_DTYPES[datatype]).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # the answer's rows, flattened row-major as the protocol sends a tensor's data
            out["data"] = [v for row in data for v in row] if len(shape) == 2 else data
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": server.model_name, "model_version": answer["version"]}
    if req.id is not None:
        doc["id"] = req.id
    doc["parameters"] = {"request_id": answer["request_id"]}
    doc["outputs"] = outputs
    try:
        head = orjson.dumps(doc)
    except TypeError:  # what orjson will not write (a lone surrogate in the client's id): escaped
        head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        b"".join([head, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


@hot.post("/v2/models/{name}/infer")
@hot.post("/v2/models/{name}/versions/{version}/infer")
async def v2_infer(request: Request, name: str, version: str | None = None) -> Response:
    t0 = time.perf_counter()
    server: ModelServer = request.app.state.server
    check_token(server, request)  # first, as the protected routes' dependency does
    cur = _model(server, name, version)
    body = await read_body(request, server.params)  # within serve.max_body_mb and serve.body_timeout_s
    headers = request.headers
    header_length = headers.get(HEADER_LENGTH)
    if len(body) < BIG_BODY:  # decoded here: a coroutine and a closure would cost more than a small body's decoding
        req = _infer_request(body, header_length, cur)
    else:
        req = await _off_loop(len(body), lambda: _infer_request(body, header_length, cur))
    _check_count(server, req.x)
    answer = await server.predict(req.x, headers.get("x-request-key"), version)  # a version in the URL pins it
    response = _infer_response(server, req, answer)
    _answered(server, t0)
    return response


def _version() -> str:
    try:
        return metadata.version("lepton")
    except metadata.PackageNotFoundError:
        return "0"


# ---------------------------------------------------------------- MLflow's scoring protocol
_ERROR_CODES = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    413: "RESOURCE_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",  # MLflow answers these in plain text; one JSON shape here
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


class _NoFormat(BadRequest):
    """A body without exactly one of MLflow's formats: MLflow's BAD_REQUEST."""

    def __init__(self, reason: str):
        super().__init__(400, reason)


def _feature_names(cur: Loaded) -> list[str]:
    pre = cur.predictor.preprocessing
    return list(pre.feature_names) or [str(i) for i in range(pre.n_features)]


def _columns(columns: Any, names: list[str]) -> list[int]:
    """The request's column names -> where each model feature is among them; an unknown,
    repeated or missing column is refused."""
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise BadRequest(400, "columns must be a list of names")
    unknown = [c for c in columns if c not in names]
    if unknown:
        raise BadRequest(400, f"unknown column {unknown[0]!r}; the model reads {', '.join(names)}")
    if len(set(columns)) != len(columns):
        raise BadRequest(400, "a column is named twice")
    missing = [n for n in names if n not in columns]
    if missing:
        raise BadRequest(400, f"missing columns: {', '.join(missing[:5])}")
    return [columns.index(n) for n in names]


def _rows(data: Any, what: str) -> np.ndarray:
    numbers, shape, all_int = _numbers(data, what)
    return _array(numbers, np.dtype(np.int64 if all_int else np.float64), what).reshape(shape)


def _table(rows: np.ndarray, order: list[int] | None, width: int, what: str) -> np.ndarray:
    if rows.ndim >= 1 and len(rows) == 0:
        raise BadRequest(400, "no instances")
    if rows.ndim != 2 or rows.shape[1] != width:
        raise BadRequest(400, f"{what}: rows of shape {tuple(rows.shape[1:])}; the model reads {width} columns")
    return rows if order is None else rows[:, order]


def _records(records: list, names: list[str], what: str) -> np.ndarray:
    """[{"a": 1, "b": 2}, ...] -> (N, F) in the model's feature order."""
    if not all(isinstance(r, dict) for r in records):
        raise BadRequest(400, f"{what} must be a list of records (objects of column: value)")
    keys = list(records[0])
    order = _columns(keys, names)
    rows = []
    for r in records:
        if set(r) != set(keys):
            raise BadRequest(400, f"{what}: every record must hold the same columns")
        rows.append([r[k] for k in keys])
    return _table(_rows(rows, what), order, len(names), what)


def _split(doc: Any, names: list[str]) -> np.ndarray:
    if not isinstance(doc, dict) or "data" not in doc or set(doc) - {"columns", "data", "index"}:
        raise BadRequest(400, "dataframe_split must be an object with data and optionally columns and index")
    order = None if doc.get("columns") is None else _columns(doc["columns"], names)
    return _table(_rows(doc["data"], "dataframe_split data"), order, len(names), "dataframe_split")


def _mlflow_samples(doc: Any, cur: Loaded) -> np.ndarray:
    """An /invocations JSON body -> raw samples, as `mlflow models serve` reads the
    logged pyfunc's signature: a table's columns by name, an image model's tensor."""
    if not isinstance(doc, dict):
        raise _NoFormat(f"the input must be a JSON object with exactly one of {', '.join(MLFLOW_FORMATS)}")
    found = [k for k in MLFLOW_FORMATS if k in doc]
    if len(found) != 1:
        raise _NoFormat(
            f"the input must be a JSON object with exactly one of {', '.join(MLFLOW_FORMATS)}; got {list(doc)[:8]}",
        )
    key, value = found[0], doc[found[0]]
    tabular = cur.predictor.preprocessing.kind == "tabular"
    if not tabular:
        if key not in ("instances", "inputs"):
            raise BadRequest(400, f"{key} is for table models; send an image model's pixels as inputs or instances")
        return _rows(value, key)
    names = _feature_names(cur)
    if key == "dataframe_split":
        return _split(value, names)
    if key == "dataframe_records":
        if not isinstance(value, list) or not value:
            raise BadRequest(400, "dataframe_records must be a list of records")
        return _records(value, names, key)
    if isinstance(value, dict):  # inputs (or instances) by column: {"a": [1, 2], "b": [3, 4]}
        order = _columns(list(value), names)
        columns = [_rows(value[c], f"{key} column {c!r}") for c in value]
        if any(c.ndim != 1 or len(c) != len(columns[0]) for c in columns):
            raise BadRequest(400, f"{key}: every column must be a list of numbers of the same length")
        return _table(np.stack(columns, axis=1), order, len(names), key)
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return _records(value, names, key)
    return _table(_rows(value, key), None, len(names), key)


def _csv_samples(body: bytes, cur: Loaded) -> np.ndarray:
    """text/csv (a header row, then numbers) -> (N, F), for table models."""
    if cur.predictor.preprocessing.kind != "tabular":
        raise BadRequest(415, "text/csv is for table models; send an image model's pixels as JSON")
    try:
        lines = list(csv.reader(io.StringIO(body.decode().removeprefix("\ufeff"))))  # a BOM, as Excel writes
    except (UnicodeDecodeError, csv.Error) as e:
        raise BadRequest(400, f"malformed CSV: {e}") from None
    if len(lines) < 2:
        raise BadRequest(400, "CSV needs a header row and at least one row")
    order = _columns([c.strip() for c in lines[0]], _feature_names(cur))
    try:
        rows = np.array([[float(v) for v in line] for line in lines[1:] if line], dtype=np.float64)
    except ValueError:
        raise BadRequest(400, "CSV rows must hold numbers, one per column") from None
    return _table(rows, order, len(order), "CSV")


def _predictions(answer: dict) -> list[dict]:
    """The pyfunc's DataFrame as MLflow writes it: one record per instance."""
    if "values" in answer:
        return [{"value": v} for v in answer["values"]]
    return [
        {"label": label, "class_name": name, "probabilities": p}
        for label, name, p in zip(answer["labels"], answer["class_names"], answer["probabilities"], strict=True)
    ]


def _mlflow_error(server: ModelServer, e: BadRequest) -> JSONResponse:
    server.metrics.requests.labels(str(e.status)).inc()
    code = "BAD_REQUEST" if isinstance(e, _NoFormat) else _ERROR_CODES.get(e.status, "INTERNAL_ERROR")
    return JSONResponse({"error_code": code, "message": e.reason}, e.status, headers=e.headers)


@hot.post("/invocations")
async def invocations(request: Request) -> Response:
    t0 = time.perf_counter()
    server: ModelServer = request.app.state.server
    check_token(server, request)  # first, and in Lepton's error shape, as on every protected route
    try:
        cur = server.current
        if cur is None:
            raise BadRequest(503, server.load_error or "no model loaded yet")
        body = await read_body(request, server.params)
        parts = [p.strip().lower() for p in request.headers.get("content-type", "").split(";")]
        charset = next((p.partition("=")[2] for p in parts[1:] if p.startswith("charset=")), "utf-8")
        if charset.strip('"') != "utf-8":
            raise BadRequest(415, "the scoring server only supports UTF-8")
        if parts[0] == "application/json":
            x = await _off_loop(len(body), lambda: _mlflow_samples(_loads(body), cur))
        elif parts[0] in CSV_TYPES:
            x = await _off_loop(len(body), lambda: _csv_samples(body, cur))
        else:
            raise BadRequest(415, f"content type {parts[0] or 'missing'!r}: send application/json or text/csv")
        _check_count(server, x)
        answer = await server.predict(x, request.headers.get("x-request-key"))
    except ClientGone:
        raise  # nobody to answer: counted as aborted by the app's handler
    except BadRequest as e:
        return _mlflow_error(server, e)
    _answered(server, t0)
    return json_response(
        {"predictions": _predictions(answer)},
        headers={"X-Request-Id": answer["request_id"], "X-Model-Version": answer["version"]},
    )


@public.get("/ping")
@public.get("/health")
async def ping() -> Response:
    """`mlflow models serve`'s probes: 200 once the process answers."""
    return Response("\n", media_type="application/json")
