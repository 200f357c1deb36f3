"""What a training run used and cost, on its MLflow run: the figures of
lepton_core.resources as metrics (resources.cpu_seconds, resources.peak_rss_mb,
resources.wall_seconds, resources.gpu_seconds, resources.peak_gpu_mb), `cost` with the
currency as a tag, and MLflow's own system metrics (system/...) sampled meanwhile.

MLflow starts its system-metrics monitor for runs opened with `mlflow.start_run` only;
Lepton opens its runs with `MlflowClient.create_run`, so it starts the monitor itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from effects.tracking import runs, tags
from lepton_core.params import CostParams
from lepton_core.resources import Meter, Usage, cost, priced

_log = logging.getLogger("lepton.resources")


@contextmanager
def metered(c: Any, run_id: str, prices: CostParams, tracking_uri: str) -> Iterator[Meter]:
    """Measure the block (call `meter.trained(...)` in it) with MLflow's system metrics
    sampled every `prices.system_metrics_seconds` (0: none); on the way out, also when
    the block raises, log the figures and their cost on the run. After the block,
    `meter.summary` holds the run's totals (see `record`)."""
    meter = Meter().start()
    monitor = start_system_metrics(run_id, prices.system_metrics_seconds, tracking_uri)
    try:
        yield meter
    except BaseException:
        stop_system_metrics(monitor)
        with suppress(Exception):  # the training's own error is the one to report
            record(c, run_id, meter.stop(), prices)
        raise
    stop_system_metrics(monitor)
    meter.summary = record(c, run_id, meter.stop(), prices)


def record(c: Any, run_id: str, usage: Usage, prices: CostParams) -> dict[str, Any]:
    """Log `usage` and its cost on the run, added to what an earlier attempt of the same
    run logged (a resumed retrain); return the totals (lepton_core.resources.priced)."""
    total = usage.plus(Usage.from_metrics(c.get_run(run_id).data.metrics))
    now = int(time.time() * 1000)  # a later attempt's totals are the run's latest values
    metrics = [runs.Metric(k, v, now, 0) for k, v in total.metrics().items()]
    metrics.append(runs.Metric("cost", cost(total, prices), now, 0))
    c.log_batch(run_id, metrics=metrics, tags=[runs.RunTag(tags.COST_CURRENCY, prices.currency)])
    return priced(total, prices)


def recorded_cost(run: Any) -> dict[str, Any] | None:
    """A run's recorded usage and cost (as `record` returns them), or None for a run
    without them (trained before Lepton recorded them)."""
    m = run.data.metrics
    if "cost" not in m:
        return None
    return {
        **priced(Usage.from_metrics(m), CostParams()),
        "amount": m["cost"],
        "currency": run.data.tags.get(tags.COST_CURRENCY, ""),
    }


def start_system_metrics(run_id: str, seconds: float, tracking_uri: str) -> Any | None:
    """MLflow's SystemMetricsMonitor on the run (machine-wide CPU, memory, disk, network;
    GPUs with nvidia-ml-py installed), or None when off or unavailable."""
    if seconds <= 0:
        return None
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no "started/stopped" lines
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds, tracking_uri=tracking_uri)
        monitor.start()
    except Exception as e:  # noqa: BLE001  (psutil missing, ...: the training goes on without them)
        _log.warning(f"no system metrics for run {run_id}: {type(e).__name__}: {e}")
        return None
    return monitor


def stop_system_metrics(monitor: Any | None) -> None:
    """Stop the monitor and log the samples it took since its last point, so a run
    shorter than one interval has its point too."""
    if monitor is None:
        return
    with suppress(Exception):  # the figures are a courtesy: never fail the training for them
        monitor.finish()
        if any(m.metrics for m in monitor.monitors):
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
