"""Lepton's own HTTP API (/v1/*, the probes, /metrics), and the dependencies every
route shares: the server, the bearer token, the loaded model."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
)
from pydantic import BaseModel, Field, JsonValue, StrictStr, ValidationError

from effects.serving.request_ids import RefusedId
from lepton.serving.bodies import BIG_BODY, read_body
from lepton.serving.core import BadRequest, Loaded, json_response
from lepton.serving.server import ModelServer
from lepton_core.params import ServeParams

MAX_TARGET = 1e15  # the largest true value /v1/feedback takes for a regression model


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
            if abs(target) > MAX_TARGET:  # its square, in an RMSE, would be no number either
                raise BadRequest(400, f"label {v!r} is beyond ±{MAX_TARGET:g}: no target of a model is that large")
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
    """The one check of every protected route: the bearer token, when the server has one
    (a dependency of the `protected` routers; the `hot` routes call `check_token` first)."""
    check_token(server, request)


def check_token(server: ModelServer, request: Request) -> None:
    if not server.token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # the scheme is case-insensitive (RFC 9110 section 11.1); the token is compared in constant time
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), server.token.encode()):
        raise BadRequest(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


async def _metrics_token(server: Server, request: Request) -> None:
    """/metrics is open unless `serve.metrics_auth` (then it takes the token as /v1/* does)."""
    if server.params.metrics_auth:
        await require_token(server, request)


def feedback_cap_mb(params: ServeParams) -> float:
    """The largest /v1/feedback body: room for `serve.max_instances` labels of up to a KiB
    each (a class name), within `serve.max_body_mb`; a feedback body needs no more."""
    return min(params.max_body_mb, (64 * 1024 + 1024 * params.max_instances) / 2**20)


async def _json_body(server: Server, request: Request) -> JsonValue:
    """A /v1/feedback body read within the limits (`read_body`, with the feedback cap),
    parsed off the event loop when big."""
    body = await read_body(request, server.params.model_copy(update={"max_body_mb": feedback_cap_mb(server.params)}))
    try:
        if len(body) < BIG_BODY:
            doc: JsonValue = json.loads(body)
        else:
            doc = await asyncio.get_running_loop().run_in_executor(None, json.loads, body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest(400, "malformed JSON") from None
    return doc


async def _loaded(server: Server) -> Loaded:
    if server.current is None:
        raise BadRequest(503, "no model loaded yet")
    return server.current


LoadedModel = Annotated[Loaded, Depends(_loaded)]  # one per request: FastAPI caches a dependency's value


async def _feedback_body(
    server: Server, doc: Annotated[JsonValue, Depends(_json_body)], _model: LoadedModel
) -> FeedbackBody:
    """The body read by these dependencies rather than by FastAPI, so that the token is
    checked first and the refusals keep their order: malformed JSON (400), no model
    loaded yet (503), too many labels (413, counted before they are validated one by
    one), not the expected object (400)."""
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if isinstance(labels, list) and len(labels) > server.params.max_instances:
        raise BadRequest(413, f"{len(labels)} labels is over the limit of {server.params.max_instances}")
    try:
        return FeedbackBody.model_validate(doc)
    except ValidationError:
        raise BadRequest(400, 'expected {"request_id": "...", "labels": [...]}') from None


protected = APIRouter(dependencies=[Depends(require_token)])
public = APIRouter()
# The prediction routes take no dependency: FastAPI resolves dependencies anew on every
# request, a large share of a small request's time. They check the token themselves,
# first.
hot = APIRouter()


@hot.post("/v1/predict")
async def predict(request: Request) -> Response:
    t0 = time.perf_counter()
    server: ModelServer = request.app.state.server
    check_token(server, request)
    x = await server.parse_request(request)
    out = await server.predict(x, request.headers.get("x-request-key"))
    server.metrics.latency.observe(time.perf_counter() - t0)
    server.metrics.answered.inc()
    return json_response(out)


@protected.post("/v1/explain")
async def explain(server: Server, request: Request) -> Response:
    """{"instances": [...]} (or a .npy array) -> attributions of each instance's shape."""
    t0 = time.perf_counter()
    x = await server.parse_request(request)
    out = await server.explain(x)
    server.metrics.explain_latency.observe(time.perf_counter() - t0)
    server.metrics.answered.inc()
    return JSONResponse(out)


@protected.post("/v1/feedback")
async def feedback(
    server: Server, body: Annotated[FeedbackBody, Depends(_feedback_body)], cur: LoadedModel
) -> Response:
    """True labels for an answered request: {"request_id": ..., "labels": [...]}, taken
    only for a request id this server issued (404 otherwise), within
    `serve.feedback_window_hours` of it (410), and at most one label per instance of
    that request (400). Queued for the log's next part: of two labels for one instance,
    the one posted last counts."""
    labels: list[int] | list[float]
    if cur.predictor.regression:
        labels = body.targets(server.params.max_instances)
    else:
        labels = body.label_indices(cur.predictor.classes, server.params.max_instances)
    try:
        server.ids.check(body.request_id, len(labels))
    except RefusedId as e:
        raise BadRequest({"unknown": 404, "expired": 410}.get(e.kind, 400), str(e)) from None
    try:
        server.log.add_feedback(body.request_id, labels)
    except OSError as e:
        raise BadRequest(503, f"feedback not stored ({e.__class__.__name__})") from None
    server.metrics.answered.inc()
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
            # with serve.shadow or serve.canary: its alias, the version it has loaded, and
            # why none is (an alias that does not exist says so here, not by silence)
            **{role: slot.status() for role, slot in server.rollout.slots().items()},
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


@public.get("/metrics", dependencies=[Depends(_metrics_token)])
async def metrics(server: Server) -> Response:
    """Prometheus text; with workers, summed over all of them (any worker answers)."""
    server.publish()
    if server.metrics.multiprocess:  # reads a few files per worker: off the event loop
        text = await asyncio.get_running_loop().run_in_executor(None, server.metrics.scrape)
    else:
        text = server.metrics.scrape()
    return Response(text, media_type=CONTENT_TYPE_LATEST)
