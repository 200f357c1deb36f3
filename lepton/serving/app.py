"""The FastAPI app of `lepton serve`: every router, the refusals in one shape, the
lifespan (batcher and model), and the app of one worker of `--workers N`."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from lepton.serving import protocols, routes
from lepton.serving.core import BadRequest, ClientGone, _InstanceQueue
from lepton.serving.metrics import _Timed
from lepton.serving.routes import hot, protected, public
from lepton.serving.server import ModelServer
from lepton_core.params import ServeParams

WORKER_ENV = "LEPTON_SERVE_WORKER"  # with workers: what each process serves (JSON), from `lepton serve`


def _error(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every refusal: one line in {"error": ...}, counted by status."""
    request.app.state.server.metrics.requests.labels(str(status)).inc()
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BadRequest)
    if isinstance(exc, ClientGone):  # nobody to answer; counted apart, so no alert on 5xx sees it
        request.app.state.server.metrics.aborted.inc()
        return JSONResponse({"error": exc.reason}, status_code=exc.status)
    return _error(request, exc.status, exc.reason, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _error(request, 500, f"internal error ({exc.__class__.__name__})")


@dataclass(frozen=True)
class _HotRoute:
    path: str  # what the latency metric labels it with, as the router would


# the Open Inference Protocol's infer, with and without a version
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_V2_ROUTES = (_HotRoute("/v2/models/{name}/infer"), _HotRoute("/v2/models/{name}/versions/{version}/infer"))


@functools.lru_cache(maxsize=64)  # the few paths clients call, each matched once (any other path only costs a miss)
def _v2_infer_route(path: str) -> tuple[Callable[[Request], Awaitable[Response]], _HotRoute] | None:
    m = _V2_INFER.fullmatch(path)
    if m is None:
        return None
    return functools.partial(protocols.v2_infer, name=m[1], version=m[2]), _V2_ROUTES[m[2] is not None]


class _App(FastAPI):
    """The server's FastAPI app, with the POSTs to the prediction routes (/v1/predict,
    /invocations, /v2's infer) sent straight to their endpoint, ahead of Starlette's
    routing and middleware stack and FastAPI's request handling (in a profile of the
    server under load, the largest share of a one-instance request's time, beside the
    HTTP parsing any server pays). The endpoints are the routers' own; their refusals go
    through the app's own handlers, and their latency and status into the same series
    `_Timed` records for every other request."""

    # path -> its endpoint and the route its latency is labelled with (set by create_app)
    hot_routes: dict[str, tuple[Callable[[Request], Awaitable[Response]], _HotRoute]]

    def _match(self, path: str) -> tuple[Callable[[Request], Awaitable[Response]], _HotRoute] | None:
        hit = self.hot_routes.get(path)
        if hit is not None:
            return hit
        return _v2_infer_route(path) if path.startswith("/v2/models/") else None

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        hit = self._match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hit is None:
            await super().__call__(scope, receive, send)
            return
        t0 = time.perf_counter()
        endpoint, route = hit
        scope["app"], scope["route"] = self, route
        request = Request(scope, receive)
        status = 500
        try:
            try:
                response = await endpoint(request)
            except BadRequest as e:
                response = await _refused(request, e)
            except Exception as e:  # noqa: BLE001 - a one-line 500, as the app's handler answers
                response = await _unexpected(request, e)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            metrics = self.state.server.metrics
            metrics.observe_http(route.path, status, time.perf_counter() - t0)
            metrics.count_worker_request()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The batcher and the shadow's scorer run for the app's life; the first model loads
    before it answers."""
    server: ModelServer = app.state.server
    server._queue = _InstanceQueue()
    tasks = [asyncio.create_task(server.batcher()), asyncio.create_task(server.rollout.run())]
    await asyncio.get_running_loop().run_in_executor(None, server.start)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        server.stop()


def create_app(server: ModelServer) -> FastAPI:
    app = _App(title="Lepton model server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan)
    app.state.server = server
    app.hot_routes = {
        path: (endpoint, _HotRoute(path))
        for path, endpoint in (("/v1/predict", routes.predict), ("/invocations", protocols.invocations))
    }
    app.add_exception_handler(BadRequest, _refused)
    app.add_exception_handler(Exception, _unexpected)

    async def _routing(request: Request, exc: Exception) -> JSONResponse:  # unknown path or method: 404, 405
        assert isinstance(exc, StarletteHTTPException)
        return _error(request, exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)

    app.add_exception_handler(StarletteHTTPException, _routing)
    app.include_router(hot)
    app.include_router(protected)
    app.include_router(public)
    # the Open Inference Protocol (/v2) and MLflow's /invocations, through the same predict
    app.include_router(protocols.hot)
    app.include_router(protocols.protected)
    app.include_router(protocols.public)
    app.add_middleware(_Timed, metrics=server.metrics)  # every request but the hot ones, which _App times
    return app


def _end_with(supervisor: int) -> None:
    """This worker gets SIGTERM when its parent dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG), rather than serving on as an orphan that holds the port; and
    ends at once when the parent is already gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        return
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)


def app_from_env() -> FastAPI:
    """The app of one worker of `lepton serve --workers N`: uvicorn starts each worker
    afresh and calls this (`factory=True`); what to serve comes from `WORKER_ENV`, set by
    `lepton serve` before the workers start (the token too: the environment is readable
    only by its user, unlike the command line)."""
    from effects.runtime.settings import configure_environment

    spec = json.loads(os.environ[WORKER_ENV])
    if spec.get("supervisor"):
        _end_with(int(spec["supervisor"]))
    server = ModelServer(
        spec["model"],
        spec["alias"],
        ServeParams.model_validate(spec["params"]),
        configure_environment(),
        spec.get("token"),
        spec.get("log_folder"),
        multiprocess=True,
    )
    return create_app(server)
