"""The evaluate stage: the frozen test split -> metrics, confusion matrix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from prefect import task

from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint
from lepton_core.data.prepare import Prepared, read_prepared
from lepton_core.evaluate import classification_metrics, predict
from lepton_core.train import to_model_input
from tasks import tracking
from tasks.data import DataVersion, dataset_path
from tasks.plots import save_confusion_matrix
from tasks.settings import get_settings

SUMMARY_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


def test_predictions(prepared: Prepared, checkpoint_path: str | Path) -> np.ndarray:
    """Predicted classes (N,) of a checkpointed model on the prepared test split."""
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint_path))
    if tuple(cfg.input_shape) != tuple(to_model_input(prepared.x["test"][:1], 1.0, cfg).shape[1:]):
        raise ValueError(f"model input {cfg.input_shape} does not fit this dataset")
    x = to_model_input(prepared.x["test"], float(prepared.meta["x_scale"]), cfg)
    return predict(model, x).argmax(1)


def evaluate_stage(prepared: Prepared, checkpoint_path: str | Path, out_dir: str | Path) -> dict:
    """Write metrics.json and confusion_matrix.png for a checkpoint; return the metrics.
    What `dvc repro`'s evaluate stage and the Prefect task both call."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_pred = test_predictions(prepared, checkpoint_path)
    metrics = classification_metrics(prepared.y["test"], y_pred, prepared.meta["classes"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    save_confusion_matrix(
        np.asarray(metrics["confusion_matrix"]), prepared.meta["classes"], out / "confusion_matrix.png",
        title=f"test split: accuracy {metrics['accuracy']:.3f}",
    )
    return metrics


@task(name="evaluate", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=3600)
def evaluate(run_id: str, checkpoint: str, data: DataVersion) -> dict[str, float]:
    """Evaluate on the test split; log metrics and artifacts to the run."""
    s = get_settings()
    c = tracking.client(s)
    prepared = read_prepared(dataset_path(data.version, s))
    out = s.home / "runs" / run_id / "evaluation"
    metrics = evaluate_stage(prepared, checkpoint, out)
    summary = {f"test_{k}": float(metrics[k]) for k in SUMMARY_KEYS}
    per_class = {
        f"test_f1_class_{name}": v["f1"] for name, v in metrics["per_class"].items() if name.isidentifier() or name.isalnum()
    }
    c.log_batch(
        run_id, metrics=[tracking.Metric(k, v, 0, 0) for k, v in {**summary, **per_class}.items()]
    )
    c.log_artifact(run_id, str(out / "metrics.json"), "evaluation")
    c.log_artifact(run_id, str(out / "confusion_matrix.png"), "evaluation")
    # What the drift monitor compares new batches with (features + outputs on the test split).
    from tasks.monitor import REFERENCE_ARTIFACT, reference_profile

    ref = out / "reference.parquet"
    reference_profile(prepared, checkpoint).to_parquet(ref, index=False)
    c.log_artifact(run_id, str(ref), REFERENCE_ARTIFACT.rsplit("/", 1)[0])
    # Provenance: the .dvc content that pins this data version, and its validation report.
    c.log_text(run_id, data.dvc_file, "data/prepared.dvc")
    c.log_text(run_id, json.dumps(data.report, indent=2, sort_keys=True), "data/report.json")
    return summary
