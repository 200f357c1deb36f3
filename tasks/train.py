"""The train stage: prepared dataset -> lepton_core.train_model -> checkpoint,
tracked as an MLflow run."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from prefect import task
from pydantic import BaseModel

from lepton_core.checkpoint import save_checkpoint
from lepton_core.data.prepare import Prepared, read_prepared
from lepton_core.models import model_config_for
from lepton_core.params import Params, TrainParams, flatten_params
from lepton_core.train import TrainResult, to_model_input, train_model
from tasks import tracking
from tasks.data import DataVersion, dataset_path
from tasks.settings import get_settings


def stratified_slice(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-proportional subset of `n` samples (sorted)."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(n * len(idx) / len(y))))
        picks.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picks))


def train_stage(
    prepared: Prepared,
    params: TrainParams,
    checkpoint_path: str | Path | None = None,
    log=None,
    progress: bool = True,
) -> TrainResult:
    """What `dvc repro`'s train stage and the Prefect task both call."""
    cfg = model_config_for(prepared.meta, params.model, params.width, params.depth, params.dropout)
    scale = float(prepared.meta["x_scale"])
    x_tr, y_tr = prepared.x["train"], prepared.y["train"]
    if params.max_train_samples:
        keep = stratified_slice(y_tr, params.max_train_samples, params.seed)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    kwargs = {"log": log} if log is not None else {}
    return train_model(
        cfg, params,
        to_model_input(x_tr, scale, cfg), torch.from_numpy(y_tr),
        to_model_input(prepared.x["val"], scale, cfg), torch.from_numpy(prepared.y["val"]),
        checkpoint_path=checkpoint_path, progress=progress, **kwargs,
    )


def save_model_checkpoint(result: TrainResult, params: TrainParams, meta: dict, path: str | Path) -> Path:
    """The final, self-describing checkpoint of the best weights."""
    return save_checkpoint(
        {
            "model_config": result.model_config.model_dump(mode="json"),
            "model": result.model.state_dict(),
            "params": params.model_dump(mode="json"),
            "epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "meta_json": json.dumps(meta, sort_keys=True),
        },
        path,
    )


class TrainOutcome(BaseModel):
    run_id: str
    checkpoint: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    resumed_from_epoch: int
    device: str


def work_checkpoint(version: str, params: TrainParams) -> Path:
    """Where an unfinished training of (data version, params) keeps its checkpoint."""
    key = hashlib.sha256((version + params.model_dump_json()).encode()).hexdigest()[:16]
    return get_settings().checkpoints_dir / f"train-{key}.pt"


@task(name="train", retries=1, retry_delay_seconds=2, timeout_seconds=6 * 3600)
def train(data: DataVersion, params: Params, progress: bool = True) -> TrainOutcome:
    """Train on a data version inside a new MLflow run. A retry, or a rerun after a
    crash with the same data and params, resumes from the work checkpoint."""
    s = get_settings()
    c = tracking.client(s)
    exp = tracking.ensure_experiment(c, params.registry.experiment, s)
    tags = {
        tracking.TAG_DATA_VERSION: data.version,
        tracking.TAG_GIT_COMMIT: tracking.git_commit(s.project_dir),
        tracking.TAG_FLOW_RUN: tracking.flow_run_id(),
        "lepton.data_format": data.meta.get("kind", ""),
    }
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run = c.create_run(exp, run_name=f"retrain-{stamp}-data-{data.version[:8]}", tags=tags)
    run_id = run.info.run_id
    try:
        tracking.log_params_and_tags(c, run_id, flatten_params(params), {})
        prepared = read_prepared(dataset_path(data.version, s))
        ckpt = work_checkpoint(data.version, params.train)
        logger = tracking.BatchedMetricLogger(c, run_id)
        t0 = time.perf_counter()
        result = train_stage(prepared, params.train, ckpt, log=logger, progress=progress)
        train_seconds = time.perf_counter() - t0
        logger.flush()
        final = save_model_checkpoint(result, params.train, prepared.meta, s.home / "runs" / run_id / "model.pt")
        c.log_artifact(run_id, str(final), "checkpoint")
        c.log_batch(
            run_id,
            metrics=[
                tracking.Metric("best_val_accuracy", result.best_val_accuracy, 0, result.best_epoch),
                tracking.Metric("epochs_run", result.epochs_run, 0, 0),
                tracking.Metric("train_seconds", train_seconds, 0, 0),
            ],
            tags=[
                tracking.RunTag("lepton.resumed_from_epoch", str(result.resumed_from_epoch)),
                tracking.RunTag("lepton.device", result.device),
            ],
        )
        ckpt.unlink(missing_ok=True)  # finished: the next identical retrain starts fresh
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    return TrainOutcome(
        run_id=run_id, checkpoint=str(final), epochs_run=result.epochs_run,
        best_epoch=result.best_epoch, best_val_accuracy=result.best_val_accuracy,
        resumed_from_epoch=result.resumed_from_epoch, device=result.device,
    )
