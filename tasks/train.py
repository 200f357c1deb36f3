"""The train task: a data version -> effects.training.stages.train_stage -> checkpoint,
tracked as an MLflow run that records exactly the params it was given."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from effects.data.dvc_store import DataVersion, dataset_path
from effects.runtime.locks import first_free_slot
from effects.runtime.procs import process_identity
from effects.runtime.retry import not_user_error
from effects.runtime.settings import get_settings
from effects.state import monitor_state
from effects.tracking import runs, tags
from effects.tracking.registry import init_weights_of
from effects.training.tracked import train_in_run
from lepton_core.checkpoint import load_work_checkpoint, remove_partial_writes
from lepton_core.params import Params, TrainParams, flatten_params


class TrainOutcome(BaseModel):
    run_id: str
    checkpoint: str
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float | None  # None for regression
    resumed_from_epoch: int
    device: str
    init_from: str = ""  # a warm start's source (models:/NAME/VERSION, or a file and its hash)
    best_val_rmse: float | None = None  # regression
    cost: dict[str, Any] = {}  # what the training used and cost (lepton_core.resources.priced)


def work_key(version: str, params: TrainParams) -> str:
    """What identifies a training: (data version, train params)."""
    return "train-" + hashlib.sha256((version + params.model_dump_json()).encode()).hexdigest()[:16]


def work_checkpoint(checkpoints_dir: Path, version: str, params: TrainParams, slot: int = 0) -> Path:
    """Where an unfinished training of (data version, params) keeps its checkpoint;
    identical trainings running at once each hold a slot of their own."""
    key = work_key(version, params)
    return checkpoints_dir / (f"{key}.pt" if slot == 0 else f"{key}.{slot}.pt")


def _slots_with_checkpoints(checkpoints_dir: Path, key: str) -> list[int]:
    found = []
    for p in checkpoints_dir.glob(f"{key}*.pt"):
        mid = p.name[len(key) : -3]  # "" for slot 0, ".N" for slot N
        if mid == "" or (mid.startswith(".") and mid[1:].isdigit()):
            found.append(int(mid[1:] or 0))
    return sorted(found)


@task(name="train", retries=1, retry_delay_seconds=2, timeout_seconds=6 * 3600, retry_condition_fn=not_user_error)
def train(data: DataVersion, params: Params, progress: bool = True) -> TrainOutcome:
    """Train on a data version inside an MLflow run. A retry, or a rerun after a
    crash with the same data and params, resumes from the work checkpoint and
    continues the MLflow run that checkpoint belongs to (one run, all epochs).

    Identical trainings running at once each hold their own checkpoint slot (a
    flock), so none resumes another live one's epochs; a killed one's slot is free
    again and the next identical training takes it over. Runs left RUNNING by a
    killed process are marked KILLED."""
    s = get_settings()
    log = _logger()
    c = runs.client(s)
    exp = runs.ensure_experiment(c, params.registry.experiment, s)
    init_source = ""
    if params.train.init_from:  # a warm start: from here on, the weights' file
        path, init_source = init_weights_of(c, params.train.init_from, params.registry.model_name, s)
        params = params.model_copy(update={"train": params.train.model_copy(update={"init_from": str(path)})})
    key = work_key(data.version, params.train)
    with first_free_slot(s.locks_dir, key, prefer=_slots_with_checkpoints(s.checkpoints_dir, key)) as slot:
        ckpt = work_checkpoint(s.checkpoints_dir, data.version, params.train, slot)
        remove_partial_writes(ckpt)  # a killed writer's temporaries: this slot is ours alone now
        state, moved = load_work_checkpoint(ckpt, mmap=True)
        if moved:
            log.warning(moved)
        prior = str(state.get("mlflow_run_id") or "") if state else ""
        history = list(state.get("history", [])) if state else []
        del state
        run_id = prior if prior and runs.continue_run(c, prior, history) else ""
        runs.end_dead_runs(c, exp, keep=run_id or None)
        if run_id:
            log.warning(f"resuming MLflow run {run_id} from its work checkpoint")
        else:
            run_id = _new_run(c, exp, data, params, s, init_source)
        outcome = _train_in_run(c, run_id, data, params, ckpt, progress, log.warning, s)
        return outcome.model_copy(update={"init_from": init_source})


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # called as a plain function (train.fn), outside a run
        return get_logger("lepton.train")


def _new_run(c, exp: str, data: DataVersion, params: Params, s, init_source: str = "") -> str:
    run_flow = str(flow_run.id or "")
    commit = runs.git_commit(s.project_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    run = c.create_run(
        exp,
        run_name=f"retrain-{stamp}-data-{data.version[:8]}",
        tags={
            tags.DATA_VERSION: data.version,
            tags.GIT_COMMIT: commit,
            tags.OWNER: process_identity(),
            tags.DATA_FORMAT: data.meta.get("kind", ""),
            **({tags.INIT_FROM: init_source} if init_source else {}),
        },
    )
    run_id = run.info.run_id
    with runs.failing_run(c, run_id):
        runs.log_params_and_tags(c, run_id, flatten_params(params), {})
        batches = set(data.meta.get("monitored_batches", []))
        runs.log_run_lineage(
            c,
            run_id,
            data,
            s,
            git_commit=commit,
            source_name="flows/retrain.py",
            flow_run_id=run_flow,
            monitored=[b for b in monitor_state.accepted_batches(s) if b["id"] in batches],
        )
    return run_id


def _train_in_run(
    c, run_id: str, data: DataVersion, params: Params, ckpt: Path, progress: bool, note, s
) -> TrainOutcome:
    final = s.home / "runs" / run_id / "model.pt"
    with runs.failing_run(c, run_id):
        result, cost = train_in_run(
            c,
            run_id,
            dataset_path(data.version, s),
            params.train,
            final,
            ckpt,
            progress=progress,
            cost=params.cost,
            extra_state={"mlflow_run_id": run_id},
            note=note,
        )
        c.log_batch(
            run_id,
            tags=[
                runs.RunTag(tags.RESUMED_FROM_EPOCH, str(result.resumed_from_epoch)),
                runs.RunTag(tags.WORLD_SIZE, str(result.world_size)),
            ],
        )
        ckpt.unlink(missing_ok=True)  # finished: the next identical retrain starts fresh
    return TrainOutcome(
        run_id=run_id,
        checkpoint=str(final),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_accuracy=None if result.best_val_rmse is not None else result.best_val_accuracy,
        resumed_from_epoch=result.resumed_from_epoch,
        device=result.device,
        best_val_rmse=result.best_val_rmse,
        cost=cost,
    )
