"""Shadow and canary rollout for `lepton serve`: a second version beside the one that
answers.

- `serve.shadow: ALIAS` keeps that alias's version loaded (hot-swapped like the
  champion) and scores every answered request again with it, or a share of them
  (`serve.shadow_share`), after the answer has gone: the request only hands its
  checked samples to a bounded queue and never waits on it. A task of the event loop
  scores what came, every SHADOW_GATHER_S, and writes the shadow's answers into the
  `shadow/` part of the prediction log, with the champion's request id and instance,
  so `lepton compare --live` pairs the two versions on the same requests. The forward
  pass runs on a thread of the shadow's own, the rest on the loop (a thread that also
  ran the Python code around the pass would make the answers wait for Python's
  interpreter lock, milliseconds at a time). A shadow that fails to load, raises or is
  slow costs the answers nothing: its queue is bounded (a full queue drops the
  shadow's copy and counts it), its errors are counted.
- `serve.canary: {alias, share}` answers a share of requests with that alias's
  version instead. With a request key (the `X-Request-Key` header) the choice is
  sticky: the same key always gets the same version while the share stays the same.
  A canary request is scored in a forward pass of its own and logged in the main log
  under the canary's version (it is real served traffic: the monitor sees it).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import queue
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from prometheus_client import Counter

from effects.serving.prediction_log import PredictionLog, open_store
from effects.tracking import runs, tags
from effects.tracking.registry import alias_version
from lepton.serving.core import Loaded, by_shape, log_answers, serving_predictor
from lepton_core.params import ServeParams

if TYPE_CHECKING:
    from effects.runtime.settings import Settings
    from lepton.serving.metrics import _Metrics


class _Server(Protocol):
    """What of the model server the rollout uses (lepton.serving.server.ModelServer)."""

    model_name: str
    params: ServeParams
    settings: Settings
    metrics: _Metrics
    device: str

    @property
    def threads(self) -> int | None: ...


SHADOW_PASS = 64  # instances per shadow pass at most
SHADOW_GATHER_S = 0.005  # the shadow scores what came meanwhile this often (not once per request)
SHADOW_QUEUE = 4096  # requests waiting for the shadow at most; beyond, the shadow's copy is dropped
SHADOW_LOG = "shadow"  # the shadow's rows: <log>/shadow/


def load_alias(server: _Server, alias: str, current: Loaded | None) -> Loaded | None:
    """The alias's version, loaded, when it is not `current`'s; None when unchanged.
    LookupError when the alias points nowhere."""
    mv = alias_version(runs.client(server.settings), server.model_name, alias)
    if mv is None:
        raise LookupError(f"model {server.model_name!r} has no @{alias}")
    if current is not None and str(mv.version) == current.version:
        return None
    # where and how the champion runs: serve.device, serve.threads
    predictor = serving_predictor(mv, server.settings, server.device, server.threads, server.params.max_batch)
    return Loaded(str(mv.version), mv.run_id, mv.tags.get(tags.DATA_VERSION, ""), predictor)


@dataclass
class Slot:
    """One more alias the server keeps loaded and follows."""

    alias: str
    current: Loaded | None = None
    load_error: str | None = None

    role: str = "shadow"  # serve.shadow or serve.canary: what the warnings name

    def refresh(self, server: _Server) -> None:
        before = self.load_error
        try:
            new = load_alias(server, self.alias, self.current)
            if new is not None:
                self.current = new
            self.load_error = None
        except LookupError as e:  # the alias is gone (promoted, removed): nothing to score with until it is back
            self.current = None
            self.load_error = str(e)
        except Exception as e:  # noqa: BLE001 - the registry unreachable: keep what is loaded
            self.load_error = f"{e.__class__.__name__}: {e}"
        if self.load_error != before:  # said once per change, on the server's stderr
            if self.load_error:
                print(f"warning: serve.{self.role} @{self.alias}: {self.load_error}", file=sys.stderr, flush=True)
            else:
                print(
                    f"serve.{self.role} @{self.alias}: v{self.current.version if self.current else '?'} loaded",
                    file=sys.stderr,
                    flush=True,
                )

    def status(self) -> dict:
        """What /v1/model says of it."""
        return {
            "alias": self.alias,
            "version": self.current.version if self.current else None,
            "error": self.load_error,
        }


def _share_of(key: str) -> float:
    """A request key's fixed place in [0, 1)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


class Rollout:
    def __init__(self, server: _Server, log_folder: Path | str):
        p = server.params
        self.server = server
        self.shadow = Slot(p.shadow) if p.shadow else None
        self.shadow_share = p.shadow_share
        self.canary = Slot(p.canary.alias, role="canary") if p.canary else None
        self.canary_share = p.canary.share if p.canary else 0.0
        self._random = random.Random()
        r = server.metrics.registry
        self.canary_answers = Counter("lepton_canary_answers", "requests the canary version answered", registry=r)
        self.shadow_scored = Counter("lepton_shadow_instances", "instances the shadow version scored", registry=r)
        self.shadow_dropped = Counter(
            "lepton_shadow_dropped_requests", "requests the shadow skipped because its queue was full", registry=r
        )
        self.shadow_errors = Counter("lepton_shadow_errors", "shadow batches that raised", registry=r)
        self.shadow_log: PredictionLog | None = None
        # what waits for the shadow (`run` scores it); set on the event loop
        self._waiting: collections.deque[tuple[np.ndarray, str]] = collections.deque()
        self._wake: asyncio.Event | None = None  # set by the first request of a round (made by `run`)
        self._thread: _Runner | None = None  # the shadow's forward passes (made by `run`)
        if self.shadow is not None:
            store = open_store(f"{str(log_folder).rstrip('/')}/{SHADOW_LOG}", server.settings)
            self.shadow_log = PredictionLog(
                store,
                server.settings.home / "serve" / "spool-shadow",
                p.log_flush_seconds,
                p.log_flush_rows,
                # the same instances as the main log's (sampled by request id and instance),
                # so that every logged champion row has its shadow row to pair with
                sample_rate=p.log_sample_rate,
                features=False,  # its answers only: the monitor reads the champion's rows
            )

    def slots(self) -> dict[str, Slot]:
        """The configured ones, by role."""
        return {role: slot for role, slot in (("shadow", self.shadow), ("canary", self.canary)) if slot is not None}

    def refresh(self) -> None:
        """Load what the shadow and canary aliases point at (the server's poller calls this)."""
        for slot in (self.shadow, self.canary):
            if slot is not None:
                slot.refresh(self.server)

    def start(self) -> None:
        self.refresh()

    def stop(self) -> None:
        """After the app has cancelled `run`: what still waits is not scored."""
        self._waiting.clear()
        if self.shadow_log is not None:
            self.shadow_log.close()

    # ------------------------------------------------------------ canary
    def canary_loaded(self, version: str) -> Loaded | None:
        """The canary's loaded version when it is `version` (a request pinned to it)."""
        cur = self.canary.current if self.canary is not None else None
        return cur if cur is not None and cur.version == version else None

    def canary_for(self, key: str | None) -> Loaded | None:
        """The canary's version when this request goes to it, else None."""
        if self.canary is None or self.canary.current is None or self.canary_share <= 0:
            return None
        place = _share_of(key) if key else self._random.random()
        return self.canary.current if place < self.canary_share else None

    # ------------------------------------------------------------ shadow
    def submit(self, raw: np.ndarray, request_id: str) -> None:
        """Hand an answered request's samples to the shadow; never blocks."""
        if self.shadow is None or self.shadow.current is None:
            return
        if self.shadow_share < 1 and _share_of(request_id) >= self.shadow_share:
            return
        if len(self._waiting) >= SHADOW_QUEUE:
            self.shadow_dropped.inc()
        else:
            self._waiting.append((raw, request_id))
            if len(self._waiting) == 1 and self._wake is not None:
                self._wake.set()  # the first of a round

    async def run(self) -> None:
        """The shadow's scorer, a task on the event loop for the app's life (none
        without serve.shadow): every SHADOW_GATHER_S, what came meanwhile, in passes of
        at most SHADOW_PASS instances. Short, frequent rounds: a round's forward pass
        shares the machine with the answers, and a long one would slow every answer
        that overlaps it. The input is made and the rows logged here, on the loop; the
        forward pass runs on the shadow's own thread, with Python's interpreter lock
        released, so a slow shadow never holds the loop."""
        if self.shadow is None:
            return
        max_batch = min(SHADOW_PASS, self.server.params.max_batch)
        self._wake = asyncio.Event()
        # never the threads the champion's long passes and big bodies use: a slow shadow
        # holds only its own
        self._thread = _Runner("shadow")
        try:
            await self._rounds(max_batch)
        finally:
            self._thread.close()

    async def _rounds(self, max_batch: int) -> None:
        assert self.shadow is not None and self._wake is not None
        while True:
            if not self._waiting:  # an idle server does not wake every round
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(SHADOW_GATHER_S)
            todo = len(self._waiting)  # what came meanwhile (what comes during its passes waits)
            while todo and self._waiting:
                items, n = [], 0
                while todo and self._waiting and n < max_batch:
                    items.append(self._waiting.popleft())
                    n, todo = n + len(items[-1][0]), todo - 1
                loaded = self.shadow.current
                if loaded is None:
                    continue
                try:
                    await self._score(loaded, items)
                except Exception:  # noqa: BLE001 - a shadow that raises costs the answers nothing
                    self.shadow_errors.inc()

    async def _score(self, loaded: Loaded, items: list[tuple[np.ndarray, str]]) -> None:
        """One pass of the shadow over `items`, logged."""
        assert self.shadow_log is not None
        for group in by_shape(items):
            x = np.concatenate([raw for raw, _ in group]) if len(group) > 1 else group[0][0]
            t = loaded.predictor.to_input(x)
            assert self._thread is not None  # made by `run`, which alone calls this
            logits = await self._thread.call(loaded.predictor.forward, t)
            log_answers(self.shadow_log, loaded, t, logits, [(len(raw), rid) for raw, rid in group])
            self.shadow_scored.inc(len(x))


class _Runner:
    """One daemon thread that runs calls for the event loop (the shadow's forward
    passes). Unlike a ThreadPoolExecutor's thread, it never keeps the process from
    exiting: a shadow whose pass hangs cannot hold up the server's shutdown."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """`fn(*args)` on the thread; the future is settled on the calling loop."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._calls.put((loop, fut, fn, args))
        return fut

    def close(self) -> None:
        """The thread ends after the call it is running (what is queued is not run)."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, fut, fn, args = item
            if fut.cancelled():
                continue
            try:
                result, error = fn(*args), None
            except Exception as e:  # noqa: BLE001 - handed to the caller
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for it
                return


def _settle(fut: asyncio.Future, result: Any, error: Exception | None) -> None:
    if fut.done():  # cancelled meanwhile (the app stopping)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
