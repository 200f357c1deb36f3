"""What the model server's parts share: the loaded version, the refusals, the
batcher's queue, and where the model runs."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi.responses import Response

from effects.serving.prediction_log import PredictionLog
from effects.tracking import tags
from effects.tracking.onnx_variants import onnx_runner
from effects.tracking.registry import predictor_of
from effects.tracking.variants import variant_predictor
from lepton_core.errors import LeptonError
from lepton_core.predictor import BasePredictor, Predictor


def serve_device(pref: str) -> str:
    """`serve.device` -> the torch device of the PyTorch model: auto is CUDA when torch
    sees a GPU; cuda without one is a one-line error."""
    import torch

    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise LeptonError(
                "serve.device=cuda but torch sees no CUDA device on this machine; use serve.device=auto or cpu"
            )
        return "cuda"
    return "cpu"


def serve_threads(threads: int) -> int:
    """Intra-op threads of each worker's forward passes: `serve.threads`, or one. A
    server's passes are small, and torch's default (a thread per core) makes its
    threads spin-wait for each other around every one of them, spending CPU the
    requests need. More cores are better used by more workers (`--workers`); a big
    model may want more."""
    return threads or 1


def serving_predictor(mv: Any, settings: Any, device: str, threads: int | None, max_batch: int) -> BasePredictor:
    """A model version loaded to serve: a variant (`lepton optimize`) through ONNX
    Runtime on the CPU with `threads`; a PyTorch model on `device`, Lepton's own
    networks on the CPU run through ONNX Runtime (`onnx_runner`, the quickest on a
    server's small passes) or else TorchScript (`Predictor.compile_for_serving`), each
    kept only when it gives the eager model's logits, for passes of up to `max_batch`
    instances."""
    if mv.tags.get(tags.VARIANT):
        return variant_predictor(mv, settings, threads)
    predictor = predictor_of(mv, settings, device)
    if isinstance(predictor, Predictor) and predictor.compilable:
        run = onnx_runner(predictor, threads)
        if run is None or not predictor.serve_through(run, max_batch):
            predictor.compile_for_serving(max_batch)
    return predictor


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class Loaded:
    version: str
    run_id: str
    data_version: str
    predictor: BasePredictor  # PyTorch, or ONNX Runtime for a `lepton optimize` variant


# a queued request: its checked samples, the future its answer goes to (the version
# that scored it and its rows of the batch's answers, `server.Scored`), its request id,
# and the version that checked it
_Queued = tuple[np.ndarray, "asyncio.Future[tuple[Loaded, tuple[np.ndarray, np.ndarray]]]", str, "Loaded"]


class _InstanceQueue(asyncio.Queue[_Queued]):
    """The batcher's queue, counting the instances it holds (`serve.max_queue` bounds them)."""

    def __init__(self) -> None:
        super().__init__()
        self.instances = 0

    def _put(self, item: _Queued) -> None:
        self.instances += len(item[0])
        super()._put(item)

    def _get(self) -> _Queued:
        item: _Queued = super()._get()
        self.instances -= len(item[0])
        return item


class BadRequest(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, headers


class ClientGone(BadRequest):
    """The client closed the connection before its body arrived: no answer reaches it, and
    it is no server error (`lepton_requests_aborted_total`, not a 5xx)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the connection before its body arrived")


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer rendered by orjson (the prediction routes' answers: compact, as
    Starlette's JSONResponse writes them, in a fraction of its time)."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def log_answers(
    log: PredictionLog, loaded: Loaded, t: Any, logits: np.ndarray, requests: list[tuple[int, str]]
) -> None:
    """The rows of one forward pass into a prediction log (off the answers' path: the
    log's own thread writes them): `t` the pass's input, `requests` its requests in
    order, as (instances, request id)."""
    x_log = loaded.predictor.log_input(t)  # images in [0, 1], tables raw: what the monitor reads
    pre = loaded.predictor.preprocessing
    values = pre.values(logits) if pre.regression else None
    log.add_many(loaded.version, requests, x_log, logits, pre.kind, list(pre.feature_names), values)


def by_shape(items: list) -> list[list]:
    """Requests (tuples, their samples first) grouped by the shape of one sample: those
    that share it score together ((N,H,W) and (N,1,H,W) are both checked to (N,1,H,W),
    so in practice this is one group)."""
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(item[0].shape[1:], []).append(item)
    return list(groups.values())
