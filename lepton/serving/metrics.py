"""The model server's Prometheus metrics (one process, or summed over `--workers`)
and the middleware that times every request."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)


class _Metrics:
    """The server's Prometheus metrics. With `multiprocess` (`--workers` > 1; prometheus_client
    reads PROMETHEUS_MULTIPROC_DIR, set by the parent before any worker starts) every worker
    writes its values to files there and a scrape of any worker sums them (`scrape`): counters
    and histograms over all workers, dead ones included; the loaded version per live worker
    (label `pid`); `lepton_model_loaded` 1 only while every live worker has a model."""

    def __init__(self, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lepton_requests", "requests answered, by HTTP status", ["code"], registry=r)
        self.answered = self.requests.labels("200")  # the one every answer counts in
        self._http_children: dict[tuple[str, int], Any] = {}  # `observe_http`
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
        self.shed = Counter("lepton_requests_shed", "requests refused with 503: serve.max_queue was full", registry=r)
        self.aborted = Counter(
            "lepton_requests_aborted", "requests whose client left before its body arrived", registry=r
        )
        self.explain_latency = Histogram(
            "lepton_explain_seconds",
            "explain request latency",
            registry=r,
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.version = Gauge(
            "lepton_model_version",
            "the loaded registry version",
            ["model", "alias"],
            registry=r,
            multiprocess_mode="liveall",  # one series per live worker (label pid)
        )
        self.swaps = Counter("lepton_model_swaps", "model versions swapped in", registry=r)
        # each worker's own totals: summed over the workers, dead ones' last values included
        self.log_dropped = Gauge(
            "lepton_prediction_log_dropped_rows", "rows the prediction log dropped", registry=r, multiprocess_mode="sum"
        )
        self.log_written = Gauge(
            "lepton_prediction_log_written_rows", "rows the prediction log wrote", registry=r, multiprocess_mode="sum"
        )
        self.log_spooled = Gauge(
            "lepton_prediction_log_spooled_rows",
            "rows waiting in the local spool for S3 to answer again",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.loaded = Gauge(
            "lepton_model_loaded",
            "1 while a model version is loaded, else 0",
            registry=r,
            multiprocess_mode="livemin",  # 0 while any live worker has none
        )
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
        if multiprocess:
            self._per_worker(r)

    def _per_worker(self, r: CollectorRegistry) -> None:
        """With workers, process_* describes only the process a scrape reaches: these
        series say it per worker instead."""
        self.worker_requests = Counter(
            "lepton_worker_requests", "HTTP requests each worker answered", ["pid"], registry=r
        )
        self.worker_memory = Gauge(
            "lepton_worker_resident_memory_bytes",
            "resident memory of each live worker",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.worker_cpu = Gauge(
            "lepton_worker_cpu_seconds",
            "CPU seconds each live worker used",
            registry=r,
            multiprocess_mode="liveall",
        )
        self._pid = str(os.getpid())

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """A request's latency into `lepton_http_request_seconds` (its labelled series looked
        up once: a label lookup per request is a visible share of a small one's time)."""
        child = self._http_children.get((route, status))
        if child is None:
            child = self._http_children[(route, status)] = self.http.labels(route, str(status))
        child.observe(seconds)

    def count_worker_request(self) -> None:
        if self.multiprocess:
            self.worker_requests.labels(self._pid).inc()

    def scrape(self) -> bytes:
        """The text of /metrics: this process's registry, or every worker's summed."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        _forget_dead_workers(folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)


def _forget_dead_workers(folder: str) -> None:
    """Drop the live-gauge files of workers that died without cleaning up (killed): their
    version, memory and `loaded` leave the live series; their counts stay in the sums."""
    from prometheus_client import multiprocess

    from effects.runtime.procs import pid_alive

    for f in Path(folder).glob("gauge_live*_*.db"):
        pid = f.stem.rpartition("_")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), folder)


class _Timed:
    """ASGI middleware: each HTTP request's latency and status into `lepton_http_request_seconds`
    (the route as the app declares it, e.g. /v2/models/{model_name}/infer; a path no route
    matches counts as "other", so a scanner cannot add series)."""

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
            route = getattr(scope.get("route"), "path", None) or "other"  # set by the router on a match
            self.metrics.observe_http(route, status[0], time.perf_counter() - t0)
            self.metrics.count_worker_request()
