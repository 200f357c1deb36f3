"""The model server: the loaded version and its hot swap, the batcher, the
prediction log, shadow and canary, explanations."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request

from effects.runtime.settings import Settings
from effects.serving import log_upkeep
from effects.serving.prediction_log import PredictionLog, open_store
from effects.serving.request_ids import RequestIds, server_key
from effects.tracking import runs, tags
from effects.tracking.registry import alias_version
from lepton.serving.bodies import BIG_BODY, JSON_TYPES, NPY_TYPES, _read_npy, instances_array, loads_json, read_body
from lepton.serving.core import (
    BadRequest,
    Loaded,
    _InstanceQueue,
    _Queued,
    _rss_bytes,
    by_shape,
    log_answers,
    serve_device,
    serve_threads,
    serving_predictor,
)
from lepton.serving.metrics import _Metrics
from lepton.serving.rollout import Rollout
from lepton_core.errors import InputError, LeptonError
from lepton_core.params import ServeParams
from lepton_core.predictor import Predictor, softmax

EXPLAIN_CHUNK = 4  # instances explained between two looks at the deadline
# a forward pass runs on the event loop itself when the last pass's time per instance
# says it takes less than this (the loop must stay free for probes and other requests
# otherwise)
INLINE_PASS_S = 0.005
PUBLISH_SECONDS = 1.0  # with workers: how often each sets its own gauges for a scrape to read


class ModelServer:
    def __init__(
        self,
        model_name: str,
        alias: str,
        params: ServeParams,
        settings: Settings,
        token: str | None = None,
        log_folder: Path | str | None = None,
        multiprocess: bool = False,
    ):
        self.model_name, self.alias, self.params, self.settings = model_name, alias, params, settings
        self.token = token or None
        self.current: Loaded | None = None
        # where the PyTorch model runs ("cuda" without a GPU: one line, before any work)
        self.device = serve_device(params.device)
        self.metrics = _Metrics(multiprocess)
        # a folder or s3://bucket/prefix; parts S3 cannot take wait in the spool
        store = open_store(str(log_folder or settings.prediction_log), settings)
        self.log = PredictionLog(
            store,
            settings.home / "serve" / "spool",
            params.log_flush_seconds,
            params.log_flush_rows,
            sample_rate=params.log_sample_rate,
            # compaction and retention, on the log's own thread (effects/serving/log_upkeep.py)
            upkeep=functools.partial(log_upkeep.upkeep, store, settings, params.log_retention_days),
        )
        # the request ids feedback must name: signed with the server's key, checked without a lookup
        self.ids = RequestIds(server_key(settings.home, self.token), params.feedback_window_hours)
        # serve.shadow and serve.canary: a second version beside the one that answers
        self.rollout = Rollout(self, str(log_folder or settings.prediction_log))
        self._queue: _InstanceQueue | None = None  # made by the app's lifespan, before any request
        self._inflight = 0  # predict requests checked and not yet answered (event loop only)
        self._canary_waiting = 0  # instances the canary is scoring (event loop only)
        # explanations: one worker thread, and whether it is busy (event loop only)
        self._explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")
        self._explaining = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.load_error: str | None = None
        self._torch_threads = 0  # torch's threads before start, put back by stop
        # the last forward pass's seconds and instances (a pass expected to be short runs inline)
        self._last_pass_s, self._last_pass_n = 1.0, 1

    # ------------------------------------------------------------ the model
    def refresh(self) -> bool:
        """Load the alias's version if it moved; True when a new one was swapped in."""
        c_version = self.current.version if self.current else None
        mv = alias_version(runs.client(self.settings), self.model_name, self.alias)
        if mv is None:
            raise LeptonError(f"model {self.model_name!r} has no @{self.alias}; run `lepton retrain` first")
        if str(mv.version) == c_version:
            return False
        # a variant version (`lepton optimize`) is served through ONNX Runtime (on the CPU)
        predictor = serving_predictor(mv, self.settings, self.device, self.threads, self.params.max_batch)
        # loaded beside the old one; one assignment swaps it in
        self._last_pass_s, self._last_pass_n = 1.0, 1  # the new model's first pass runs off the loop
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
            self.rollout.refresh()

    @property
    def threads(self) -> int:
        """Intra-op threads of this process's forward passes (`serve.threads`, or one)."""
        return serve_threads(self.params.threads)

    def start(self) -> None:
        import torch

        self._torch_threads = torch.get_num_threads()  # put back by stop (a server inside another program)
        torch.set_num_threads(self.threads)
        if self.metrics.multiprocess:
            threading.Thread(target=self._publish_loop, name="metrics", daemon=True).start()
        try:
            self.refresh()
        except Exception as e:  # noqa: BLE001 - /readyz says 503 until a model loads
            self.load_error = f"{e.__class__.__name__}: {e}"
        self.rollout.start()
        self._poller = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self._explainer.shutdown(wait=False, cancel_futures=True)
        self.rollout.stop()
        self.log.close()
        if self._torch_threads:
            import torch

            torch.set_num_threads(self._torch_threads)
        if self.metrics.multiprocess:
            self.publish()  # the log's last totals
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    def publish(self) -> None:
        """The prediction log's counts and the model's state into the gauges (a scrape
        reads them; with workers, every worker's own, so each worker sets them itself)."""
        m = self.metrics
        m.log_dropped.set(self.log.dropped)
        m.log_written.set(self.log.written)
        m.log_spooled.set(self.log.spooled)
        m.loaded.set(1 if self.current is not None else 0)
        if m.multiprocess:
            from lepton_core.resources import process_cpu_seconds

            m.worker_cpu.set(process_cpu_seconds())
            m.worker_memory.set(_rss_bytes())

    def _publish_loop(self) -> None:
        self.publish()
        while not self._stop.wait(PUBLISH_SECONDS):
            self.publish()

    # ------------------------------------------------------------ requests
    def parse(self, content_type: str, body: bytes) -> np.ndarray:
        p = self.params
        if len(body) > p.max_body_mb * 1024 * 1024:
            raise BadRequest(413, f"body of {len(body)} bytes is over the {p.max_body_mb:g} MB cap")
        kind = content_type.split(";")[0].strip().lower()
        if kind in JSON_TYPES:
            doc = loads_json(body)
            if not isinstance(doc, dict) or "instances" not in doc or not isinstance(doc["instances"], list):
                raise BadRequest(400, 'expected a JSON object {"instances": [...]}')
            x = instances_array(doc["instances"], p.max_instances)
        elif kind in NPY_TYPES:
            x = _read_npy(body)
        else:
            raise BadRequest(415, f"content type {kind or 'missing'!r}: send application/json or application/x-npy")
        if x.ndim == 0 or len(x) == 0:
            raise BadRequest(400, "no instances")
        if len(x) > p.max_instances:
            raise BadRequest(413, f"{len(x)} instances is over the limit of {p.max_instances}")
        return x

    async def parse_request(self, request: Request) -> np.ndarray:
        """A /v1/predict or /v1/explain request -> its samples: the body read within the
        limits (`read_body`), then parsed here, or on a worker thread when it is big (so
        that the event loop keeps answering other requests meanwhile)."""
        body = await read_body(request, self.params)
        content_type = request.headers.get("content-type", "")
        if len(body) < BIG_BODY:
            return self.parse(content_type, body)
        return await asyncio.get_running_loop().run_in_executor(None, self.parse, content_type, body)

    async def predict(self, x: np.ndarray, key: str | None = None, version: str | None = None) -> dict:
        """The answer for `x`; `key` (the X-Request-Key header) keeps a client on one
        version while a canary answers a share of the requests; `version` pins the
        answer to that loaded version (the champion's or the canary's; else 404)."""
        if version is not None:
            canary = self.rollout.canary_loaded(version)
            if canary is None and (self.current is None or self.current.version != version):
                serving = self.current.version if self.current else "none"
                raise BadRequest(404, f"version {version!r} is not loaded; this server serves {serving}")
        else:
            canary = self.rollout.canary_for(key)
        if canary is not None:
            self._make_room(len(x))  # the canary's requests count against serve.max_queue too
            self._canary_waiting += len(x)
            try:
                return await self._predict_alone(canary, x)
            finally:
                self._canary_waiting -= len(x)
        loaded = self.current
        self._inflight += 1  # counted from here until answered (see batcher)
        try:
            return await self._predict(loaded, x)
        finally:
            self._inflight -= 1

    async def _predict_alone(self, loaded: Loaded, x: np.ndarray) -> dict:
        """A canary's answer: a forward pass of its own (not in the champion's batch),
        logged under the canary's version in the main log (it is served traffic)."""
        try:
            raw = loaded.predictor.check(x)
        except InputError as e:
            raise BadRequest(400, str(e)) from None
        request_id = self.ids.issue(len(raw))  # feedback on a canary's answer is taken too
        predictor = loaded.predictor
        t = predictor.checked_input(raw)
        logits = await asyncio.get_running_loop().run_in_executor(None, predictor.forward, t)
        log_answers(self.log, loaded, t, logits, [(len(raw), request_id)])
        self.metrics.instances.inc(len(raw))
        self.rollout.canary_answers.inc()
        return self._answer(loaded, _scored(loaded, logits), request_id)

    async def _predict(self, loaded: Loaded | None, x: np.ndarray) -> dict:
        if loaded is None:
            raise BadRequest(503, "no model loaded yet")
        try:
            raw = loaded.predictor.check(x)
        except InputError as e:
            raise BadRequest(400, str(e)) from None
        assert self._queue is not None  # the app's lifespan makes it before it takes requests
        fut: asyncio.Future[tuple[Loaded, Scored]] = asyncio.get_running_loop().create_future()
        request_id = self.ids.issue(len(raw))
        self._enqueue((raw, fut, request_id, loaded))
        answered, scored = await fut  # the version whose batch this request was in, its rows
        self.rollout.submit(raw, request_id)  # the shadow scores it after the answer, off its path
        return self._answer(answered, scored, request_id)

    def _answer(self, answered: Loaded, scored: Scored, request_id: str) -> dict:
        out: dict[str, Any] = {"model": self.model_name, "version": answered.version, "request_id": request_id}
        if not np.isfinite(scored[1]).all():  # JSON has no such number: an error, as it always was
            raise ValueError("the model's answer is not a finite number")
        if answered.predictor.regression:
            out["values"] = scored[0].tolist()
            return out
        labels, p = scored[0].tolist(), scored[1]
        classes = answered.predictor.classes
        out["labels"] = labels
        out["class_names"] = [classes[i] for i in labels]
        out["probabilities"] = p.tolist()
        return out

    def _enqueue(self, item: _Queued) -> None:
        """Into the batcher's queue, if there is room (`_make_room`)."""
        q = self._queue
        assert q is not None  # the app's lifespan makes it before it takes requests
        self._make_room(len(item[0]))
        q.put_nowait(item)

    def _make_room(self, n: int) -> None:
        """503 with Retry-After while `serve.max_queue` instances wait already (in the
        batcher's queue or for the canary; a lone request over the bound still goes in):
        overload answers at once instead of as ever longer waits."""
        q = self._queue
        waiting = (q.instances if q is not None else 0) + self._canary_waiting
        if waiting and waiting + n > self.params.max_queue:
            self.metrics.shed.inc()
            raise BadRequest(
                503,
                f"overloaded: {waiting} instances wait already (serve.max_queue {self.params.max_queue}); retry",
                {"Retry-After": "1"},
            )

    async def batcher(self) -> None:
        """Gather queued requests into one forward pass."""
        loop = asyncio.get_running_loop()
        p = self.params
        assert self._queue is not None  # the app's lifespan makes it before it starts the batcher
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            if self._last_pass_n > 1 and self._queue.empty():
                # the last pass was a batch: let the requests whose bytes have arrived
                # meanwhile (tasks ready to run) reach the queue before this one is scored
                await asyncio.sleep(0)
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
                groups = by_shape(_checked_by(loaded, items))
                for group in groups:
                    x = np.concatenate([raw for raw, *_ in group]) if len(group) > 1 else group[0][0]
                    t = loaded.predictor.checked_input(x)  # each request was checked by this version
                    t0 = time.perf_counter()
                    inline = self._last_pass_s * len(x) / self._last_pass_n < INLINE_PASS_S
                    if inline:
                        # a quick pass (as the last one's time per instance says): scored
                        # here, on the event loop, without the hop to a thread and back,
                        # whose cost and whose contention for the interpreter lock are
                        # larger than such a pass
                        logits = loaded.predictor.forward(t)
                    else:
                        logits = await loop.run_in_executor(None, loaded.predictor.forward, t)
                    self._last_pass_s, self._last_pass_n = time.perf_counter() - t0, len(x)
                    self.metrics.batch.observe(len(x))
                    self.metrics.instances.inc(len(x))
                    scored = _scored(loaded, logits)  # for the whole batch: each request gets its rows
                    start = 0
                    for raw, fut, *_ in group:
                        end = start + len(raw)
                        if not fut.done():
                            fut.set_result((loaded, (scored[0][start:end], scored[1][start:end])))
                        start = end
                    log_answers(self.log, loaded, t, logits, [(len(raw), rid) for raw, _, rid, _ in group])
                    if inline:
                        # the answers go out, and other requests are read, before the next pass
                        await asyncio.sleep(0)
            except Exception as e:  # noqa: BLE001 - answer every waiting request
                for _, fut, *_ in items:
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


# a batch's answers, row by row: (labels, probabilities rounded to 6 digits) of a
# classifier, (values, values) of a regression model
Scored = tuple[np.ndarray, np.ndarray]


def _scored(loaded: Loaded, logits: np.ndarray) -> Scored:
    """The answers of a forward pass's rows (row-wise, so a request's rows of a batch's
    answers are its own answers)."""
    pre = loaded.predictor.preprocessing
    if pre.regression:
        values = pre.values(logits)
        return values, values
    p = softmax(logits)
    return p.argmax(1), p.astype(np.float64).round(6)


def _checked_by(loaded: Loaded, items: list[_Queued]) -> list[_Queued]:
    """The requests checked by `loaded` (all but those that arrived before a swap); those
    checked by the version before are checked again by this one, and a request this one
    refuses gets its 400 alone."""
    out = []
    for raw, fut, rid, checker in items:
        if checker is not loaded:
            try:
                raw = loaded.predictor.check(raw)
            except InputError as e:
                if not fut.done():
                    fut.set_exception(BadRequest(400, str(e)))
                continue
        out.append((raw, fut, rid, loaded))
    return out
