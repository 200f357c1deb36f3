"""Sweep tasks: open the parent run, train one trial (a nested run), close the sweep;
and the task runner the trials run on (threads, or Dask).

A trial is the train task's core on the sweep's one prepared dataset:
effects.training.stages.train_stage (lepton_core.train) with the trial's params, in its own
MLflow run nested under the parent. It does not resume (a sweep's trials are
short and many); a trial that raises leaves a FAILED run with the error as a tag,
and its task run fails, which the flow tells Optuna as a failed trial.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from effects.data.dvc_store import DataVersion, dataset_path
from effects.runtime.settings import get_settings
from effects.tracking import runs, tags
from effects.tracking import sweep as sweep_runs
from effects.tracking.sweep import Search  # noqa: F401  (the flow's ask/tell object)
from effects.training.tracked import train_in_run
from lepton_core.errors import LeptonError
from lepton_core.params import Params, flatten_params
from lepton_core.sweep import LOCAL, Dimension, check_dask_address, objective, with_values  # noqa: F401
from tasks.train import TrainOutcome

if TYPE_CHECKING:  # prefect.task_runners is imported where a runner is made
    from prefect.task_runners import TaskRunner


class TrialOutcome(BaseModel):
    number: int
    values: dict[str, Any]
    run_id: str
    value: float  # the sweep's metric at the trial's best epoch
    params: Params  # the trial's own (base params with `values` set)
    train: TrainOutcome


@contextmanager
def trial_runner(parallel: int, dask: str | None) -> Iterator[TaskRunner[Any]]:
    """The task runner the trials run on: `parallel` threads by default; with
    `dask='local'` a temporary LocalCluster of `parallel` single-threaded worker
    processes; with a scheduler address, that cluster (its workers need Lepton
    installed and the same MLflow/Prefect settings)."""
    import logging

    from prefect.task_runners import ThreadPoolTaskRunner

    if dask is None:
        threads: ThreadPoolTaskRunner[Any]  # its futures' result type: whatever the trials return
        with ThreadPoolTaskRunner(max_workers=parallel) as threads:
            yield threads
        return
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines are for cluster admins
    if dask == LOCAL:
        runner = DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": parallel,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "host": "127.0.0.1",
            },
        )
    else:
        runner = DaskTaskRunner(address=dask)
    with runner:
        try:
            _ = runner.client  # connect (or start the cluster) now, not at the first trial
        except (OSError, TimeoutError) as e:
            raise LeptonError(
                f"no Dask scheduler answers at {dask} ({type(e).__name__}: {e})".splitlines()[0]
            ) from None
        yield runner


@task(name="open-sweep", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=600)
def open_sweep(data: DataVersion, params: Params, dims: tuple[Dimension, ...], runner: str) -> str:
    """The parent MLflow run (params, search space, dataset); returns its id."""
    s = get_settings()
    c = runs.client(s)
    exp = runs.ensure_experiment(c, params.registry.experiment, s)
    runs.end_dead_runs(c, exp)
    return sweep_runs.open_parent_run(
        c, exp, params, dims, data, runner=runner, flow_run_id=str(flow_run.id or ""), s=s
    )


@task(name="trial", task_run_name="trial-{number}", retries=0, cache_policy=NO_CACHE)
def train_trial(
    data: DataVersion, params: Params, values: dict[str, Any], parent_run_id: str, number: int, progress: bool = False
) -> TrialOutcome:
    """Train one trial in a run nested under the sweep's parent run; return its metric."""
    s = get_settings()
    c = runs.client(s)
    exp = runs.ensure_experiment(c, params.registry.experiment, s)
    started = time.perf_counter()
    run_id = sweep_runs.open_trial_run(c, exp, parent_run_id, number, values, data, s)
    final = s.home / "runs" / run_id / "model.pt"
    with runs.failing_run(c, run_id, tag_error=True):
        trial = with_values(params, values)
        runs.log_params_and_tags(c, run_id, flatten_params(trial), {})
        result, cost = train_in_run(
            c, run_id, dataset_path(data.version, s), trial.train, final, None, progress=progress, cost=trial.cost
        )
        value = objective(result, params.sweep.metric)
        c.log_batch(
            run_id,
            metrics=[
                runs.Metric(f"objective_{params.sweep.metric}", value, 0, result.best_epoch),
                runs.Metric("trial_seconds", time.perf_counter() - started, 0, 0),  # the whole task, logging too
            ],
        )
        c.set_terminated(run_id, "FINISHED")
    outcome = TrainOutcome(
        run_id=run_id,
        checkpoint=str(final),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        best_val_accuracy=None if result.best_val_rmse is not None else result.best_val_accuracy,
        resumed_from_epoch=0,
        device=result.device,
        best_val_rmse=result.best_val_rmse,
        cost=cost,
    )
    return TrialOutcome(number=number, values=values, run_id=run_id, value=value, params=trial, train=outcome)


def outcome_of(future) -> Any:
    """A finished trial's outcome, or the exception that ended it (a failed task run,
    or a crash such as a Dask worker that died)."""
    try:
        return future.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001  (one trial's crash must not sink the sweep)
        return e


@task(name="best-checkpoint", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=1800)
def local_checkpoint(outcome: TrainOutcome) -> TrainOutcome:
    """The best trial's checkpoint on this machine: the file a local trial wrote, or
    its run's artifact downloaded (a trial on a remote Dask worker wrote it there)."""
    from effects.tracking.registry import checkpoint_of

    s = get_settings()
    path = checkpoint_of(runs.client(s), outcome.run_id, s)
    return outcome.model_copy(update={"checkpoint": str(path)})


@task(name="close-sweep", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=600, cache_policy=NO_CACHE)
def close_sweep(
    parent_run_id: str,
    search: Search,
    version: str | None = None,
    decision: dict | None = None,
    test_metrics: dict[str, float] | None = None,
) -> dict:
    """The best trial, the counts and the trials' table on the parent run, which ends
    FINISHED (FAILED when no trial finished)."""
    c = runs.client(get_settings())
    return sweep_runs.close_parent_run(
        c, parent_run_id, search, version=version, decision=decision, test_metrics=test_metrics
    )


@task(name="abandon-sweep", retries=1, timeout_seconds=120)
def abandon_sweep(parent_run_id: str, error: str) -> None:
    """The sweep itself failed (not one trial): its parent run ends FAILED."""
    c = runs.client(get_settings())
    runs.fail_run(c, parent_run_id, RuntimeError(error))


@task(name="tag-sweep-version", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=120)
def tag_version(model_name: str, version: str, parent_run_id: str, trial: int) -> None:
    """The registered version names the sweep it came from."""
    c = runs.client(get_settings())
    c.set_model_version_tag(model_name, version, tags.SWEEP_RUN_ID, parent_run_id)
    c.set_model_version_tag(model_name, version, tags.SWEEP_TRIAL, str(trial))


@task(name="publish-summary", retries=2, retry_delay_seconds=[2, 5])
def publish_sweep_summary(result: dict, model_name: str) -> str:
    md = sweep_runs.sweep_markdown(result, model_name)
    create_markdown_artifact(
        markdown=md, key="lepton-sweep-summary", description=f"{model_name} v{result['version']} from a sweep"
    )
    return md
