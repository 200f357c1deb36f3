"""The train task: a data version -> effects.stages.train_stage -> checkpoint,
tracked as an MLflow run that records exactly the params it was given."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from prefect import task
from prefect.runtime import flow_run
from pydantic import BaseModel

from effects import monitor_state, tracking
from effects.dvc_store import DataVersion, dataset_path
from effects.settings import get_settings
from effects.stages import train_stage
from lepton_core.data.prepare import read_prepared
from lepton_core.params import Params, TrainParams, flatten_params


class TrainOutcome(BaseModel):
    run_id: str
    checkpoint: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    resumed_from_epoch: int
    device: str


def work_checkpoint(checkpoints_dir: Path, version: str, params: TrainParams) -> Path:
    """Where an unfinished training of (data version, params) keeps its checkpoint."""
    key = hashlib.sha256((version + params.model_dump_json()).encode()).hexdigest()[:16]
    return checkpoints_dir / f"train-{key}.pt"


@task(name="train", retries=1, retry_delay_seconds=2, timeout_seconds=6 * 3600)
def train(data: DataVersion, params: Params, progress: bool = True) -> TrainOutcome:
    """Train on a data version inside a new MLflow run. A retry, or a rerun after a
    crash with the same data and params, resumes from the work checkpoint."""
    s = get_settings()
    c = tracking.client(s)
    exp = tracking.ensure_experiment(c, params.registry.experiment, s)
    run_flow = str(flow_run.id or "")
    commit = tracking.git_commit(s.project_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run = c.create_run(exp, run_name=f"retrain-{stamp}-data-{data.version[:8]}", tags={
        tracking.TAG_DATA_VERSION: data.version,
        tracking.TAG_GIT_COMMIT: commit,
        "lepton.data_format": data.meta.get("kind", ""),
    })
    run_id = run.info.run_id
    try:
        tracking.log_params_and_tags(c, run_id, flatten_params(params), {})
        batches = set(data.meta.get("monitored_batches", []))
        tracking.log_lineage(
            c, run_id, data_version=data.version, meta=data.meta, dvc_remote=s.dvc_remote,
            git_commit=commit, source_name="flows/retrain.py",
            flow_run_id=run_flow, flow_run_url=tracking.flow_run_url(s.prefect_ui_api_url, run_flow),
            monitored=[b for b in monitor_state.accepted_batches(s) if b["id"] in batches],
        )
        prepared = read_prepared(dataset_path(data.version, s))
        ckpt = work_checkpoint(s.checkpoints_dir, data.version, params.train)
        final = s.home / "runs" / run_id / "model.pt"
        logger = tracking.BatchedMetricLogger(c, run_id)
        t0 = time.perf_counter()
        result = train_stage(prepared, params.train, final, ckpt, log=logger, progress=progress)
        train_seconds = time.perf_counter() - t0
        logger.flush()
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
