"""The plain stage functions: what `dvc repro`'s commands (lepton/stages.py) and
the Prefect tasks both call, so the two paths cannot drift apart. No tracker and
no orchestrator here: files in, files out.

    prepare   lepton_core.data.prepare.prepare_from_params (core, no wrapper needed)
    train     prepared dataset -> final checkpoint (with the predictor's preprocessing)
    evaluate  checkpoint + prepared test split -> metrics.json, confusion_matrix.png
              (regression: predicted_vs_actual.png, residuals.png)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from effects.tracking.plots import save_confusion_matrix, save_regression_plots
from lepton_core.data.prepare import Prepared
from lepton_core.evaluate import evaluate_predictor
from lepton_core.fileio import atomic_write
from lepton_core.params import TrainParams
from lepton_core.predictor import Predictor, Preprocessing
from lepton_core.train import LogFn, TrainResult, save_trained_model, train_on_prepared


def train_stage(
    prepared: Prepared,
    params: TrainParams,
    model_path: str | Path,
    work_checkpoint: str | Path | None = None,
    log: LogFn | None = None,
    progress: bool = True,
    prepared_dir: str | Path | None = None,
    **train_kwargs,
) -> TrainResult:
    """Train on the prepared splits and write the final checkpoint to `model_path`
    (`train_kwargs`: extra_state, note; see lepton_core.train.train_on_prepared).
    With `train.devices` x `train.nodes` > 1 the training runs data-parallel under
    torchrun (effects/training/ddp.py); its rank 0 logs to the MLflow run named by
    `extra_state["mlflow_run_id"]` instead of `log`. The folders of `train.code` are
    taken from the project (absolute from here on, so torchrun's ranks find them)."""
    from effects.runtime.settings import get_settings
    from effects.training import ddp

    if params.code:
        base = get_settings().project_dir
        params = params.model_copy(update={"code": [str((base / c).resolve()) for c in params.code]})
    if ddp.world_size(params) > 1:
        return ddp.launch(
            prepared,
            params,
            model_path,
            work_checkpoint,
            prepared_dir=prepared_dir,
            progress=progress,
            extra_state=train_kwargs.get("extra_state"),
        )
    pre = Preprocessing.from_meta(prepared.meta)
    kwargs = {"log": log, **train_kwargs} if log is not None else train_kwargs
    result = train_on_prepared(prepared, params, pre, work_checkpoint, progress=progress, **kwargs)
    save_trained_model(result, params, pre, prepared.meta, model_path)
    return result


def evaluate_stage(prepared: Prepared, checkpoint_path: str | Path, out_dir: str | Path) -> dict:
    """Write metrics.json and the plots (confusion_matrix.png, or for regression
    predicted_vs_actual.png and residuals.png) for a checkpoint on the frozen test
    split, read through the model's own predictor; return the metrics."""
    out = Path(out_dir)
    predictor = Predictor.from_checkpoint(checkpoint_path)
    metrics = evaluate_predictor(predictor, prepared.x["test"], prepared.y["test"])
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if predictor.regression:
        title = f"test split: RMSE {metrics['rmse']:.4g}, R² {metrics['r2']:.3f}"
        save_regression_plots(prepared.y["test"], predictor.values(prepared.x["test"]), out, title)
        return metrics
    save_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]),
        predictor.classes,
        out / "confusion_matrix.png",
        title=f"test split: accuracy {metrics['accuracy']:.3f}",
    )
    return metrics
