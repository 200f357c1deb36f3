"""`lepton serve`: the champion behind a batched HTTP endpoint.

FastAPI under uvicorn (one process). Requests are checked on arrival (one-line 4xx
reasons, never a stack trace) and queued; one batcher coroutine gathers up to
`serve.max_batch` instances or waits `serve.max_wait_ms`, scores them in one
forward pass on a worker thread, and answers each request from that pass. A batch
reads the loaded model once, so every answer names the one version that made it.

Hot swap: a thread polls where the alias points every `serve.poll_seconds`
(polling works with any MLflow registry and needs no Prefect; a promotion event
would be faster but is missed while the server restarts). A new version is loaded
beside the old one and swapped in with one reference assignment: requests in
flight finish on the old model, the next batch uses the new one.

    POST /v1/predict   {"instances": [...]} (JSON) or a .npy array (application/x-npy)
    POST /v1/feedback  {"request_id": ..., "labels": [...]}: true labels of an answered request
    POST /v1/explain   {"instances": [...]}: Integrated Gradients attributions, each of its
                       instance's shape (at most `serve.max_explain_instances`, one at a time)
    GET  /v1/model     name, version, alias, data version, run id, task
    GET  /healthz      the process answers
    GET  /readyz       a model is loaded (503 before)
    GET  /metrics      Prometheus text format

A classifier answers labels, class names and probabilities; a regression model
(`/v1/model` says its task) answers `values`, numbers in the target's units, and its
feedback labels are the true numbers.

The /v1/* routes take the bearer token when the server has one (one dependency,
`require_token`); the probes and /metrics stay open.

Explanations cost some 30 forward and backward passes per instance, so they are
bounded and kept apart from predictions: one at a time (a second one meanwhile gets
429), on a thread of their own (the batcher's passes never queue behind them), in
chunks that stop once `serve.explain_timeout_s` is spent (504).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from pydantic import BaseModel, Field, JsonValue, StrictStr, ValidationError

from effects.runtime.settings import Settings
from effects.serving.prediction_log import PredictionLog, open_store
from effects.tracking import runs, tags
from effects.tracking.registry import alias_version, predictor_of
from effects.tracking.variants import variant_predictor
from lepton_core.errors import InputError, LeptonError
from lepton_core.params import ServeParams
from lepton_core.predictor import BasePredictor, Predictor, softmax

JSON_TYPES = ("application/json",)
EXPLAIN_CHUNK = 4  # instances explained between two looks at the deadline
NPY_TYPES = ("application/x-npy", "application/octet-stream")


@dataclass(frozen=True)
class Loaded:
    version: str
    run_id: str
    data_version: str
    predictor: BasePredictor  # PyTorch, or ONNX Runtime for a `lepton optimize` variant


# a queued request: its checked samples, the future its answer goes to (the version
# that scored it and its logits), its request id
_Queued = tuple[np.ndarray, "asyncio.Future[tuple[Loaded, np.ndarray]]", str]


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lepton_requests", "requests answered, by HTTP status", ["code"], registry=r)
        self.latency = Histogram(
            "lepton_request_seconds",
            "predict request latency",
            registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        self.batch = Histogram(
            "lepton_batch_size",
            "instances per forward pass",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
        )
        self.instances = Counter("lepton_instances", "instances scored", registry=r)
        self.explain_latency = Histogram(
            "lepton_explain_seconds",
            "explain request latency",
            registry=r,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.version = Gauge("lepton_model_version", "the loaded registry version", ["model", "alias"], registry=r)
        self.swaps = Counter("lepton_model_swaps", "model versions swapped in", registry=r)
        self.log_dropped = Gauge("lepton_prediction_log_dropped_rows", "rows the prediction log dropped", registry=r)
        self.log_written = Gauge("lepton_prediction_log_written_rows", "rows the prediction log wrote", registry=r)
        self.log_spooled = Gauge(
            "lepton_prediction_log_spooled_rows", "rows waiting in the local spool for S3 to answer again", registry=r
        )
        self.loaded = Gauge("lepton_model_loaded", "1 while a model version is loaded, else 0", registry=r)
        # every request, refusals and errors included (an alert on latency must see a
        # server that fails fast as well as one that answers slowly)
        self.http = Histogram(
            "lepton_http_request_seconds",
            "latency of every request, by route and HTTP status",
            ["route", "code"],
            registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
        )
        # the server's own CPU seconds and memory (process_cpu_seconds_total,
        # process_resident_memory_bytes, ...): what its predictions cost
        ProcessCollector(registry=r)


ROUTES = frozenset(("/v1/predict", "/v1/explain", "/v1/feedback", "/v1/model", "/healthz", "/readyz", "/metrics"))


class _Timed:
    """ASGI middleware: each HTTP request's latency and status into `lepton_http_request_seconds`
    (paths outside ROUTES count as "other", so a scanner cannot add series)."""

    def __init__(self, app, metrics: _Metrics) -> None:  # type: ignore[no-untyped-def]
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def sent(message) -> None:  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.http.labels(route, str(status[0])).observe(time.perf_counter() - t0)


class ModelServer:
    def __init__(
        self,
        model_name: str,
        alias: str,
        params: ServeParams,
        settings: Settings,
        token: str | None = None,
        log_folder: Path | str | None = None,
    ):
        self.model_name, self.alias, self.params, self.settings = model_name, alias, params, settings
        self.token = token or None
        self.current: Loaded | None = None
        self.metrics = _Metrics()
        # a folder or s3://bucket/prefix; parts S3 cannot take wait in the spool
        store = open_store(str(log_folder or settings.prediction_log), settings)
        self.log = PredictionLog(
            store, settings.home / "serve" / "spool", params.log_flush_seconds, params.log_flush_rows
        )
        self._queue: asyncio.Queue[_Queued] | None = None  # made by the app's lifespan, before any request
        self._inflight = 0  # predict requests checked and not yet answered (event loop only)
        # explanations: one worker thread, and whether it is busy (event loop only)
        self._explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")
        self._explaining = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.load_error: str | None = None

    # ------------------------------------------------------------ the model
    def refresh(self) -> bool:
        """Load the alias's version if it moved; True when a new one was swapped in."""
        c_version = self.current.version if self.current else None
        mv = alias_version(runs.client(self.settings), self.model_name, self.alias)
        if mv is None:
            raise LeptonError(f"model {self.model_name!r} has no @{self.alias}; run `lepton retrain` first")
        if str(mv.version) == c_version:
            return False
        # a variant version (`lepton optimize`) is served through ONNX Runtime
        predictor = (
            variant_predictor(mv, self.settings) if mv.tags.get(tags.VARIANT) else predictor_of(mv, self.settings)
        )
        # loaded beside the old one; one assignment swaps it in
        self.current = Loaded(str(mv.version), mv.run_id, mv.tags.get(tags.DATA_VERSION, ""), predictor)
        self.metrics.version.labels(self.model_name, self.alias).set(int(mv.version))
        if c_version is not None:
            self.metrics.swaps.inc()
        return True

    def _poll(self) -> None:
        while not self._stop.wait(self.params.poll_seconds):
            try:
                self.refresh()
                self.load_error = None
            except Exception as e:  # noqa: BLE001 - keep serving the loaded version
                self.load_error = f"{e.__class__.__name__}: {e}"

    def start(self) -> None:
        try:
            self.refresh()
        except Exception as e:  # noqa: BLE001 - /readyz says 503 until a model loads
            self.load_error = f"{e.__class__.__name__}: {e}"
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self._explainer.shutdown(wait=False, cancel_futures=True)
        self.log.close()

    # ------------------------------------------------------------ requests
    def parse(self, content_type: str, body: bytes) -> np.ndarray:
        p = self.params
        if len(body) > p.max_body_mb * 1024 * 1024:
            raise BadRequest(413, f"body of {len(body)} bytes is over the {p.max_body_mb:g} MB cap")
        kind = content_type.split(";")[0].strip().lower()
        if kind in JSON_TYPES:
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise BadRequest(400, f"malformed JSON: {str(e).splitlines()[0]}") from None
            if not isinstance(doc, dict) or "instances" not in doc or not isinstance(doc["instances"], list):
                raise BadRequest(400, 'expected a JSON object {"instances": [...]}')
            try:
                x = np.asarray(doc["instances"])
            except ValueError:
                raise BadRequest(400, "instances are ragged (samples of different shapes)") from None
        elif kind in NPY_TYPES:
            x = _read_npy(body)
        else:
            raise BadRequest(415, f"content type {kind or 'missing'!r}: send application/json or application/x-npy")
        if x.ndim == 0 or len(x) == 0:
            raise BadRequest(400, "no instances")
        if len(x) > p.max_instances:
            raise BadRequest(413, f"{len(x)} instances is over the limit of {p.max_instances}")
        return x

    async def predict(self, x: np.ndarray) -> dict:
        loaded = self.current
        self._inflight += 1  # counted from here until answered (see batcher)
        try:
            return await self._predict(loaded, x)
        finally:
            self._inflight -= 1

    async def _predict(self, loaded: Loaded | None, x: np.ndarray) -> dict:
        if loaded is None:
            raise BadRequest(503, "no model loaded yet")
        try:
            raw = loaded.predictor.check(x)
        except InputError as e:
            raise BadRequest(400, str(e)) from None
        assert self._queue is not None  # the app's lifespan makes it before it takes requests
        fut: asyncio.Future[tuple[Loaded, np.ndarray]] = asyncio.get_running_loop().create_future()
        request_id = uuid.uuid4().hex
        await self._queue.put((raw, fut, request_id))
        answered, logits = await fut  # the version whose batch this request was in
        if answered.predictor.regression:
            return {
                "model": self.model_name,
                "version": answered.version,
                "request_id": request_id,
                "values": answered.predictor.preprocessing.values(logits).tolist(),
            }
        p = softmax(logits)
        labels = p.argmax(1)
        classes = answered.predictor.classes
        return {
            "model": self.model_name,
            "version": answered.version,
            "request_id": request_id,
            "labels": labels.tolist(),
            "class_names": [classes[i] for i in labels],
            "probabilities": p.astype(np.float64).round(6).tolist(),
        }

    async def batcher(self) -> None:
        """Gather queued requests into one forward pass."""
        loop = asyncio.get_running_loop()
        p = self.params
        assert self._queue is not None  # the app's lifespan makes it before it starts the batcher
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + p.max_wait_ms / 1000
            while n < p.max_batch:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                else:
                    # wait (up to max_wait_ms) only for requests already on their way
                    # in; a lone request is scored at once
                    timeout = deadline - loop.time()
                    if timeout <= 0 or self._inflight <= len(items):
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                items.append(item)
                n += len(item[0])
            loaded = self.current  # one version for the whole batch
            try:
                # a request is queued only once a model is loaded, and none is ever unloaded
                assert loaded is not None
                groups = _by_shape(items)
                for group in groups:
                    x = np.concatenate([raw for raw, _, _ in group])
                    t = loaded.predictor.to_input(x)
                    logits = await loop.run_in_executor(None, loaded.predictor.forward, t)
                    self.metrics.batch.observe(len(x))
                    self.metrics.instances.inc(len(x))
                    x_log = loaded.predictor.log_input(t)  # images in [0, 1], tables raw: what the monitor reads
                    pre = loaded.predictor.preprocessing
                    values = pre.values(logits) if pre.regression else None
                    start = 0
                    for raw, fut, request_id in group:
                        end = start + len(raw)
                        if not fut.done():
                            fut.set_result((loaded, logits[start:end]))
                        self.log.add(
                            loaded.version,
                            request_id,
                            x_log[start:end],
                            logits[start:end],
                            pre.kind,
                            list(pre.feature_names),
                            None if values is None else values[start:end],
                        )
                        start = end
            except Exception as e:  # noqa: BLE001 - answer every waiting request
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(e)

    # ------------------------------------------------------------ explanations
    async def explain(self, x: np.ndarray) -> dict:
        """Attributions of each instance (its shape) for the class the model answers
        (regression: its value), off the event loop, within the time limit."""
        p = self.params
        if len(x) > p.max_explain_instances:
            raise BadRequest(413, f"{len(x)} instances is over the explain limit of {p.max_explain_instances}")
        loaded = self.current
        if loaded is None:
            raise BadRequest(503, "no model loaded yet")
        try:
            loaded.predictor.check(x)
        except InputError as e:
            raise BadRequest(400, str(e)) from None
        if not isinstance(loaded.predictor, Predictor):
            raise BadRequest(501, "explanations need the PyTorch model; this server runs an ONNX variant")
        if self._explaining:
            raise BadRequest(429, "another explanation is running; retry in a moment")
        deadline = time.monotonic() + p.explain_timeout_s
        job = asyncio.wrap_future(self._explainer.submit(_explain_until, loaded.predictor, x, deadline))
        self._explaining = True  # until the thread is done, even after a time-out answered
        job.add_done_callback(self._explained)
        try:
            # shielded: on time-out the thread still finishes its chunk, and only then
            # may the next explanation start
            attr, answers = await asyncio.wait_for(asyncio.shield(job), p.explain_timeout_s)
        except (TimeoutError, _Overdue):
            limit = f"{p.explain_timeout_s:g} s (serve.explain_timeout_s)"
            raise BadRequest(504, f"the explanation took over {limit}; send fewer instances") from None
        except InputError as e:
            raise BadRequest(400, str(e)) from None
        return {"model": self.model_name, "version": loaded.version, **answers, "attributions": attr.tolist()}

    def _explained(self, job: asyncio.Future) -> None:
        self._explaining = False
        if not job.cancelled():
            job.exception()  # retrieved: a time-out already answered the request


class _Overdue(Exception):
    """The explanation's time ran out between two chunks."""


def _explain_until(predictor: Predictor, x: np.ndarray, deadline: float) -> tuple[np.ndarray, dict]:
    """Attributions of `x` in chunks, stopping at the first chunk that would start
    after `deadline` (time.monotonic); with what they explain."""
    from lepton_core.explain import attributions  # imports Captum: the first explanation pays for it

    parts = []
    for i in range(0, len(x), EXPLAIN_CHUNK):
        if time.monotonic() > deadline:
            raise _Overdue
        parts.append(attributions(predictor, x[i : i + EXPLAIN_CHUNK]))
    pred = predictor.predict(x)
    if pred.values is not None:
        answers: dict = {"values": pred.values.tolist()}
    else:
        answers = {"labels": pred.labels.tolist(), "class_names": pred.names}
    return np.concatenate(parts), answers


def _read_npy(body: bytes) -> np.ndarray:
    """A .npy body -> array. The header's shape is checked against the bytes that
    follow it before anything is allocated (np.load allocates what the header
    declares), and object arrays are refused."""
    from numpy.lib import format as npy

    f = io.BytesIO(body)
    try:
        version = npy.read_magic(f)
        shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise BadRequest(400, f"not a .npy array ({str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if dtype.hasobject:
        raise BadRequest(400, "not a .npy array of numbers (object arrays are refused)")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    data = memoryview(body)[f.tell() :]
    if count * dtype.itemsize != len(data):
        raise BadRequest(
            400,
            f".npy header declares shape {tuple(shape)} ({count * dtype.itemsize} bytes) "
            f"but the body holds {len(data)}",
        )
    x = np.frombuffer(data, dtype=dtype, count=count)
    return x.reshape(shape, order="F" if fortran else "C")


def _by_shape(items: list) -> list[list]:
    """Requests whose samples share a shape score together ((N,H,W) and (N,1,H,W)
    are both checked to (N,1,H,W), so in practice this is one group)."""
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(item[0].shape[1:], []).append(item)
    return list(groups.values())


# ---------------------------------------------------------------- the HTTP app
class FeedbackBody(BaseModel):
    """POST /v1/feedback: the true labels of an answered request, one per instance in
    the request's order, each a class index or a class name (a regression model: the
    true number). The labels are JSON as sent: which of them are valid depends on the
    loaded model (`label_indices`, `targets`)."""

    request_id: StrictStr = Field(max_length=64)
    labels: list[JsonValue] = Field(min_length=1)

    def _check_count(self, max_labels: int) -> None:
        if len(self.labels) > max_labels:
            raise BadRequest(413, f"{len(self.labels)} labels is over the limit of {max_labels}")

    def targets(self, max_labels: int) -> list[float]:
        """A regression model's true values: finite numbers (JSON ints or floats)."""
        self._check_count(max_labels)
        out = []
        for v in self.labels:
            # bool is an int to Python; NaN and Infinity are tokens Python's JSON reads,
            # and a JSON integer of hundreds of digits is no float at all
            try:
                target = float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan
            except OverflowError:
                target = math.nan
            if not math.isfinite(target):
                shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:40] + "..."
                raise BadRequest(400, f"label {shown} is not a finite number (the model predicts numbers)")
            out.append(target)
        return out

    def label_indices(self, classes: list[str], max_labels: int) -> list[int]:
        self._check_count(max_labels)
        out = []
        for v in self.labels:
            if isinstance(v, str) and v in classes:
                out.append(classes.index(v))
            elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(classes):
                out.append(v)
            else:
                raise BadRequest(400, f"label {v!r} is neither a class index nor a class name")
        return out


async def _server(request: Request) -> ModelServer:
    server: ModelServer = request.app.state.server
    return server


Server = Annotated[ModelServer, Depends(_server)]


async def require_token(server: Server, request: Request) -> None:
    """The one check of every /v1/* route: the bearer token, when the server has one."""
    if not server.token:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
        raise BadRequest(401, "missing or wrong bearer token")


async def _json_body(request: Request) -> JsonValue:
    try:
        doc: JsonValue = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "malformed JSON") from None
    return doc


async def _loaded(server: Server) -> Loaded:
    if server.current is None:
        raise BadRequest(503, "no model loaded yet")
    return server.current


LoadedModel = Annotated[Loaded, Depends(_loaded)]  # one per request: FastAPI caches a dependency's value


async def _feedback_body(doc: Annotated[JsonValue, Depends(_json_body)], _model: LoadedModel) -> FeedbackBody:
    """The body read by these dependencies rather than by FastAPI, so that the token is
    checked first and the refusals keep their order: malformed JSON (400), no model
    loaded yet (503), not the expected object (400)."""
    try:
        return FeedbackBody.model_validate(doc)
    except ValidationError:
        raise BadRequest(400, 'expected {"request_id": "...", "labels": [...]}') from None


protected = APIRouter(dependencies=[Depends(require_token)])
public = APIRouter()


@protected.post("/v1/predict")
async def predict(server: Server, request: Request) -> Response:
    t0 = time.perf_counter()
    x = server.parse(request.headers.get("content-type", ""), await request.body())
    out = await server.predict(x)
    server.metrics.latency.observe(time.perf_counter() - t0)
    server.metrics.requests.labels("200").inc()
    return JSONResponse(out)


@protected.post("/v1/explain")
async def explain(server: Server, request: Request) -> Response:
    """{"instances": [...]} (or a .npy array) -> attributions of each instance's shape."""
    t0 = time.perf_counter()
    x = server.parse(request.headers.get("content-type", ""), await request.body())
    out = await server.explain(x)
    server.metrics.explain_latency.observe(time.perf_counter() - t0)
    server.metrics.requests.labels("200").inc()
    return JSONResponse(out)


@protected.post("/v1/feedback")
async def feedback(
    server: Server, body: Annotated[FeedbackBody, Depends(_feedback_body)], cur: LoadedModel
) -> Response:
    """True labels for an answered request: {"request_id": ..., "labels": [...]}."""
    labels: list[int] | list[float]
    if cur.predictor.regression:
        labels = body.targets(server.params.max_instances)
    else:
        labels = body.label_indices(cur.predictor.classes, server.params.max_instances)
    try:
        await asyncio.get_running_loop().run_in_executor(None, server.log.add_feedback, body.request_id, labels)
    except OSError as e:
        raise BadRequest(503, f"feedback not stored ({e.__class__.__name__})") from None
    server.metrics.requests.labels("200").inc()
    return JSONResponse({"accepted": len(labels)})


@protected.get("/v1/model")
async def model(server: Server) -> Response:
    cur = server.current
    if cur is None:
        raise BadRequest(503, server.load_error or "no model loaded yet")
    pre = cur.predictor.preprocessing
    return JSONResponse(
        {
            "name": server.model_name,
            "alias": server.alias,
            "version": cur.version,
            "run_id": cur.run_id,
            "data_version": cur.data_version,
            "input_shape": list(pre.input_shape),
            "dtype": pre.dtype,
            "classes": list(pre.classes),
            "task": pre.task,
        }
    )


@public.get("/healthz")
async def healthz() -> Response:
    return JSONResponse({"status": "ok"})


@public.get("/readyz")
async def readyz(server: Server) -> Response:
    cur = server.current
    if cur is None:
        return JSONResponse({"ready": False, "reason": server.load_error or "loading"}, status_code=503)
    return JSONResponse({"ready": True, "version": cur.version})


@public.get("/metrics")
async def metrics(server: Server) -> Response:
    server.metrics.log_dropped.set(server.log.dropped)
    server.metrics.log_written.set(server.log.written)
    server.metrics.log_spooled.set(server.log.spooled)
    server.metrics.loaded.set(1 if server.current is not None else 0)
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _error(request: Request, status: int, reason: str) -> JSONResponse:
    """Every refusal: one line in {"error": ...}, counted by status."""
    request.app.state.server.metrics.requests.labels(str(status)).inc()
    return JSONResponse({"error": reason}, status_code=status)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadRequest)
    return _error(request, exc.status, exc.reason)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _error(request, 500, f"internal error ({exc.__class__.__name__})")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The batcher runs for the app's life; the first model loads before it answers."""
    server: ModelServer = app.state.server
    server._queue = asyncio.Queue()
    batcher = asyncio.create_task(server.batcher())
    await asyncio.get_running_loop().run_in_executor(None, server.start)
    try:
        yield
    finally:
        batcher.cancel()
        server.stop()


def create_app(server: ModelServer) -> FastAPI:
    app = FastAPI(title="Lepton model server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan)
    app.state.server = server
    app.add_exception_handler(BadRequest, _refused)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(protected)
    app.include_router(public)
    app.add_middleware(_Timed, metrics=server.metrics)
    return app
