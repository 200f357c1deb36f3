"""The sweep flow: prepare once -> N trials (Optuna TPE, ask/tell; `parallel` at a
time on threads or Dask) -> evaluate, register and gate the best trial only."""

from __future__ import annotations

from prefect import flow
from prefect.futures import PrefectFuture, as_completed

from lepton_core.errors import LeptonError
from lepton_core.params import SECTIONS, Params, takes_sections
from lepton_core.sweep import search_space
from tasks.data import prepare_data
from tasks.evaluate import evaluate
from tasks.registry import promote as promote_task
from tasks.registry import register
from tasks.sweep import (
    Search,
    TrialOutcome,
    abandon_sweep,
    check_dask_address,
    close_sweep,
    local_checkpoint,
    open_sweep,
    outcome_of,
    publish_sweep_summary,
    tag_version,
    train_trial,
    trial_runner,
)


@flow(name="sweep", log_prints=True)
@takes_sections(SECTIONS)
def sweep(params: Params, dask: str | None = None, progress: bool = False) -> dict:
    """Search `sweep.space` around the `train` params: every trial is an MLflow run
    nested under one parent run; only the best is registered, through the gate.

    `dask`: none (threads), 'local' (a temporary LocalCluster of `sweep.parallel`
    worker processes) or a Dask scheduler address. A failed trial is recorded
    (FAILED run, failed Optuna trial) and the sweep goes on.
    """
    data, registry, promote, sweep = params.data, params.registry, params.promote, params.sweep
    dims = search_space(sweep, params)
    dask = check_dask_address(dask)
    dataset = prepare_data(data)
    parent = open_sweep(dataset, params, dims, dask or "threads")
    search = Search(dims, sweep)
    try:
        with trial_runner(sweep.parallel, dask) as runner:
            running: dict[PrefectFuture[TrialOutcome], int] = {}  # a trial's future -> its number
            while search.more or running:
                while search.more and len(running) < sweep.parallel:
                    s = search.ask()
                    running[
                        runner.submit(
                            train_trial,
                            {
                                "data": dataset,
                                "params": params,
                                "values": s.values,
                                "parent_run_id": parent,
                                "number": s.number,
                                "progress": progress,
                            },
                        )
                    ] = s.number
                done = next(as_completed(list(running)))
                search.tell(running.pop(done), outcome_of(done))
        best = search.best_outcome()
        if best is None:
            report = close_sweep(parent, search)
            raise LeptonError(f"all {sweep.trials} trials failed (trial 0: {report['trials'][0]['error']})")
        trained = local_checkpoint(best.train)
        metrics = evaluate(trained.run_id, trained.checkpoint, dataset, best.params.evaluate)
        version = register(trained, dataset, best.params, metrics)
        tag_version(registry.model_name, version, parent, best.number)
        decision = promote_task(registry.model_name, version, promote, challenger_only=promote.mode == "shadow")
        report = close_sweep(parent, search, version, decision, metrics)
    except BaseException as e:
        abandon_sweep(parent, f"{type(e).__name__}: {e}")
        raise
    result = {
        "parent_run_id": parent,
        "runner": dask or "threads",
        "data_version": dataset.version,
        "metric": sweep.metric,
        "best": report["best"],
        "trials": report["trials"],
        "failed": report["failed"],
        "cost": report["cost"],  # the trials' usage and cost, all together
        "run_id": best.run_id,
        "version": version,
        "metrics": metrics,
        "decision": decision,
    }
    publish_sweep_summary(result, registry.model_name)
    return result
