"""One training inside an MLflow run, as the retrain and the sweep's trials both run
it: the prepared dataset -> `train_stage` with a batched metric logger -> the final
checkpoint as the run's artifact, with the figures every training run carries: what
it used and cost (effects.tracking.resources) among them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from effects.runtime.settings import get_settings
from effects.tracking import runs, tags
from effects.tracking.resources import metered
from effects.training.stages import train_stage
from lepton_core.checkpoint import remove_partial_writes
from lepton_core.data.prepare import read_prepared
from lepton_core.params import CostParams, TrainParams
from lepton_core.train import TrainResult


def train_in_run(
    c: Any,
    run_id: str,
    prepared_dir: Path,
    params: TrainParams,
    final: Path,
    work_checkpoint: Path | None,
    *,
    progress: bool,
    cost: CostParams | None = None,
    **train_kwargs: Any,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train on the dataset at `prepared_dir`, logging each epoch to `run_id`; write the
    final checkpoint to `final` and log it, with what the training used, priced at
    `cost` (and MLflow's system metrics meanwhile). Returns the result and the run's
    usage and cost (lepton_core.resources.priced). `train_kwargs`: extra_state, note
    (see effects.training.stages)."""
    prepared = read_prepared(prepared_dir)
    remove_partial_writes(final)  # a killed writer's temporaries
    logger = runs.BatchedMetricLogger(c, run_id)
    with metered(c, run_id, cost or CostParams(), get_settings().tracking_uri) as meter:
        t0 = time.perf_counter()
        result = train_stage(
            prepared,
            params,
            final,
            work_checkpoint,
            log=logger,
            progress=progress,
            prepared_dir=prepared_dir,
            **train_kwargs,
        )
        seconds = time.perf_counter() - t0
        meter.trained(result.device, result.world_size, result.ranks)
    logger.flush()
    c.log_artifact(run_id, str(final), "checkpoint")
    if result.warm_start is not None:  # what a warm start left out (a new head), for the reviewer
        c.log_dict(run_id, result.warm_start, "warm_start.json")
    c.log_batch(
        run_id,
        metrics=[
            best_metric(result),
            runs.Metric("epochs_run", result.epochs_run, 0, 0),
            runs.Metric("train_seconds", seconds, 0, 0),
        ],
        tags=[runs.RunTag(tags.DEVICE, result.device)],
    )
    return result, meter.summary


def best_metric(result: TrainResult) -> runs.Metric:
    """The best epoch's validation figure: accuracy, or RMSE for regression."""
    if result.best_val_rmse is not None:
        return runs.Metric("best_val_rmse", result.best_val_rmse, 0, result.best_epoch)
    return runs.Metric("best_val_accuracy", result.best_val_accuracy, 0, result.best_epoch)
