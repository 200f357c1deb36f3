"""The retraining flow: prepare -> train -> evaluate -> register -> promote."""

from __future__ import annotations

from prefect import flow

from lepton_core.params import (
    DataParams,
    DeployParams,
    MonitorParams,
    OptimizeParams,
    PromoteParams,
    RegistryParams,
    ServeParams,
    TrainParams,
    params_of,
)
from tasks.data import prepare_data
from tasks.evaluate import evaluate
from tasks.optimize import optimize as optimize_task
from tasks.registry import promote as promote_task
from tasks.registry import register
from tasks.report import publish_retrain_summary
from tasks.train import train as train_task


@flow(name="retrain", log_prints=True)
def retrain(
    data: DataParams = DataParams(),
    train: TrainParams = TrainParams(),
    promote: PromoteParams = PromoteParams(),
    registry: RegistryParams = RegistryParams(),
    deploy: DeployParams = DeployParams(),
    monitor: MonitorParams = MonitorParams(),
    serve: ServeParams = ServeParams(),
    optimize: OptimizeParams = OptimizeParams(),
    progress: bool = True,
) -> dict:
    """Retrain on the data described by `data` and promote the result if it passes the gate.

    The parameters are the sections of params.yaml (every one, so the MLflow run
    records exactly what was given), and the Prefect UI shows them as forms.
    """
    params = params_of(locals())
    dataset = prepare_data(data)
    outcome = train_task(dataset, params, progress=progress)
    metrics = evaluate(outcome.run_id, outcome.checkpoint, dataset)
    version = register(outcome, dataset, params, metrics)
    decision = promote_task(registry.model_name, version, promote)
    result = {
        "run_id": outcome.run_id,
        "version": version,
        "data_version": dataset.version,
        "metrics": metrics,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "epochs_run": outcome.epochs_run,
        "decision": decision,
    }
    if optimize.enabled and decision["promoted"]:
        result["optimized"] = optimize_task(registry.model_name, version, optimize)
    publish_retrain_summary(result, registry.model_name)
    return result
