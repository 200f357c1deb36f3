"""The plain stage functions: what `dvc repro`'s commands (lepton/stages.py) and
the Prefect tasks both call, so the two paths cannot drift apart. No tracker and
no orchestrator here: files in, files out.

    prepare   lepton_core.data.prepare.prepare_from_params (core, no wrapper needed)
    train     prepared dataset -> final checkpoint (with the predictor's preprocessing)
    evaluate  checkpoint + prepared test split -> metrics.json, confusion_matrix.png
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from effects.plots import save_confusion_matrix
from lepton_core.data.prepare import Prepared
from lepton_core.evaluate import evaluate_predictor
from lepton_core.fileio import atomic_write
from lepton_core.params import TrainParams
from lepton_core.predictor import Predictor, Preprocessing
from lepton_core.train import LogFn, TrainResult, save_trained_model, train_on_prepared


def train_stage(prepared: Prepared, params: TrainParams, model_path: str | Path,
                work_checkpoint: str | Path | None = None, log: LogFn | None = None,
                progress: bool = True) -> TrainResult:
    """Train on the prepared splits and write the final checkpoint to `model_path`."""
    pre = Preprocessing.from_meta(prepared.meta)
    kwargs = {"log": log} if log is not None else {}
    result = train_on_prepared(prepared, params, pre, work_checkpoint, progress=progress, **kwargs)
    save_trained_model(result, params, pre, prepared.meta, model_path)
    return result


def evaluate_stage(prepared: Prepared, checkpoint_path: str | Path, out_dir: str | Path) -> dict:
    """Write metrics.json and confusion_matrix.png for a checkpoint on the frozen
    test split, read through the model's own predictor; return the metrics."""
    out = Path(out_dir)
    predictor = Predictor.from_checkpoint(checkpoint_path)
    metrics = evaluate_predictor(predictor, prepared.x["test"], prepared.y["test"])
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    save_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), predictor.classes, out / "confusion_matrix.png",
        title=f"test split: accuracy {metrics['accuracy']:.3f}",
    )
    return metrics
