"""The retraining flow: prepare -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from prefect import flow

from lepton_core.params import RETRAIN_SECTIONS, Params, takes_sections
from tasks.data import prepare_data
from tasks.evaluate import evaluate
from tasks.optimize import optimize as optimize_task
from tasks.registry import promote as promote_task
from tasks.registry import register
from tasks.report import publish_retrain_summary
from tasks.train import train as train_task


@flow(name="retrain", log_prints=True)
@takes_sections(RETRAIN_SECTIONS)
def retrain(params: Params, progress: bool = True) -> dict:
    """Retrain on the data described by `data` and promote the result if it passes the gate.

    The parameters are the sections of params.yaml (every one but `sweep`, so the
    MLflow run records exactly what was given), and the Prefect UI shows them as forms.
    """
    data, registry, promote, optimize = params.data, params.registry, params.promote, params.optimize
    dataset = prepare_data(data)
    outcome = train_task(dataset, params, progress=progress)
    metrics = evaluate(outcome.run_id, outcome.checkpoint, dataset, params.evaluate)
    version = register(outcome, dataset, params, metrics)
    # promote.mode shadow: a version that passes becomes @challenger (`lepton promote` judges it live)
    decision = promote_task(registry.model_name, version, promote, challenger_only=promote.mode == "shadow")
    result = {
        "run_id": outcome.run_id,
        "version": version,
        "data_version": dataset.version,
        "metrics": metrics,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "epochs_run": outcome.epochs_run,
        "cost": outcome.cost,  # what the training used and cost (lepton_core.resources.priced)
        "decision": decision,
    }
    if optimize.enabled and decision["promoted"]:
        result["optimized"] = optimize_task(registry.model_name, version, optimize)
    publish_retrain_summary(result, registry.model_name)
    return result
