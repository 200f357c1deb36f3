"""The evaluate task: the frozen test split -> metrics, plots (confusion matrix, or
predicted-vs-actual and residuals), the monitor's reference profile and (with
`evaluate.report`) the model report `report/model.html`, all logged to the training run."""

from __future__ import annotations

import json

from prefect import task

from effects.data.dvc_store import DataVersion, dataset_path
from effects.monitoring.monitor import REFERENCE_ARTIFACT, reference_profile
from effects.runtime.settings import get_settings
from effects.tracking import runs
from effects.tracking.model_report import REPORT_DIR, history_of, write_model_report
from effects.training.stages import evaluate_stage
from lepton_core.data.prepare import Prepared, read_prepared
from lepton_core.evaluate import logged_test_metrics, summary_keys
from lepton_core.params import EvaluateParams
from lepton_core.predictor import Predictor


@task(name="evaluate", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=3600)
def evaluate(run_id: str, checkpoint: str, data: DataVersion, params: EvaluateParams | None = None) -> dict[str, float]:
    """Evaluate on the test split; log metrics and artifacts to the run (and the model
    report, unless `params.report` is off)."""
    s = get_settings()
    c = runs.client(s)
    prepared = read_prepared(dataset_path(data.version, s))
    out = s.home / "runs" / run_id / "evaluation"
    metrics = evaluate_stage(prepared, checkpoint, out)
    summary = {f"test_{k}": float(metrics[k]) for k in summary_keys(metrics)}
    # the headlines and each class's F1: what `lepton reproduce` compares too
    c.log_batch(run_id, metrics=[runs.Metric(k, v, 0, 0) for k, v in logged_test_metrics(metrics).items()])
    c.log_artifact(run_id, str(out / "metrics.json"), "evaluation")
    for plot in ("predicted_vs_actual.png", "residuals.png", "confusion_matrix.png"):
        if (out / plot).exists():
            c.log_artifact(run_id, str(out / plot), "evaluation")
    # What the drift monitor compares new batches with (features + outputs on the test split).
    ref = out / "reference.parquet"
    reference_profile(prepared, checkpoint).to_parquet(ref, index=False)
    c.log_artifact(run_id, str(ref), REFERENCE_ARTIFACT.rsplit("/", 1)[0])
    # Provenance: the .dvc content that pins this data version, and its validation report.
    c.log_text(run_id, data.dvc_file, "data/prepared.dvc")
    c.log_text(run_id, json.dumps(data.report, indent=2, sort_keys=True), "data/report.json")
    params = params or EvaluateParams()
    if params.report:
        _log_report(c, run_id, prepared, checkpoint, metrics, data.version, params, out)
    return summary


def _log_report(
    c, run_id: str, prepared: Prepared, checkpoint: str, metrics: dict, version: str, params: EvaluateParams, out
) -> None:
    """The model report (effects/tracking/model_report.py) as the run's `report/`
    artifacts; its calibration error and baseline scores as run metrics."""
    report = write_model_report(
        prepared,
        Predictor.from_checkpoint(checkpoint),
        metrics,
        out / REPORT_DIR,
        data_version=version,
        history=history_of(c, run_id),
        explain_per_class=params.explain_per_class,
        figures_dir=out,
        heading=f"MLflow run {run_id}, data version {version}",
    )
    c.log_artifacts(run_id, str(report.html.parent), REPORT_DIR)  # the page and its PNGs, nothing else
    if report.metrics:
        c.log_batch(run_id, metrics=[runs.Metric(k, v, 0, 0) for k, v in report.metrics.items()])
