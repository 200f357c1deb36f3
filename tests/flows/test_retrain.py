"""End to end: the retrain flow on real Prefect (test server), real MLflow (SQLite
in tmp) and real DVC (local remote) -- promote, reject, force, rollback, restore,
load the champion with stock MLflow."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import CostParams, DataParams, MonitorParams, PromoteParams, RegistryParams, TrainParams

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=8, width=16, patience=3)
WORSE = TrainParams(epochs=1, width=4, max_train_samples=30, lr=1e-3)
PRICES = CostParams(currency="EUR", cpu_core_hour=0.5, system_metrics_seconds=0.5)  # system metrics twice a second


def _sha(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def runs(lepton_env, prefect_server):
    from flows.retrain import retrain

    # a non-default monitor section: the run must record what it was given, not defaults
    first = retrain(data=DataParams(), train=FAST, monitor=MonitorParams(drift_share=0.3), cost=PRICES, progress=False)
    second = retrain(data=DataParams(), train=WORSE, promote=PromoteParams(min_accuracy=0.0), progress=False)
    return first, second


def test_first_run_promotes_and_second_worse_run_is_rejected(runs):
    from effects.tracking.registry import registry_status

    first, second = runs
    assert first["decision"]["promoted"] is True
    assert first["metrics"]["test_accuracy"] >= 0.9
    assert second["version"] != first["version"]
    assert second["decision"]["promoted"] is False
    assert "champion" in second["decision"]["reason"]
    assert second["metrics"]["test_accuracy"] < first["metrics"]["test_accuracy"]
    st = registry_status("lepton-digits")
    assert st["champion"]["version"] == first["version"]
    assert st["previous"] is None
    assert st["champion"]["data_version"] == first["data_version"]
    assert st["champion"]["metrics"]["accuracy"] == pytest.approx(first["metrics"]["test_accuracy"])


def test_run_and_version_carry_params_metrics_artifacts_and_provenance(runs, lepton_env):
    from effects.tracking.runs import client

    first, second = runs
    c = client()
    run = c.get_run(first["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "8"
    assert run.data.params["registry.model_name"] == "lepton-digits"
    assert run.data.params["monitor.drift_share"] == "0.3"  # the section it was given
    assert run.data.params["deploy.retrain_cron"] == "0 3 * * 1"
    assert second.get("run_id") and c.get_run(second["run_id"]).data.params["monitor.drift_share"] == "0.5"
    # lineage in MLflow's own fields: dataset input, source version, experiment kind
    (inp,) = [
        d
        for d in run.inputs.dataset_inputs
        if {t.key: t.value for t in d.tags}.get("mlflow.data.context") == "training"
    ]
    assert inp.dataset.digest == first["data_version"][:36]
    assert first["data_version"][2:] in inp.dataset.source
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["lepton.git_commit"].removesuffix("-dirty")
    assert run.data.tags["mlflow.source.name"] == "flows/retrain.py"
    assert c.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["lepton.data_version"] == first["data_version"]
    commit = run.data.tags["lepton.git_commit"]
    assert len(commit) >= 40 and commit != "unknown"
    assert run.data.tags["lepton.prefect_flow_run_id"]
    history = c.get_metric_history(first["run_id"], "val_accuracy")
    assert len(history) == int(run.data.metrics["epochs_run"]) >= 2
    for key in ("test_accuracy", "test_f1_macro", "test_precision_macro", "test_recall_macro"):
        assert 0.0 <= run.data.metrics[key] <= 1.0
    artifacts = {a.path for d in ("evaluation", "data", "checkpoint") for a in c.list_artifacts(first["run_id"], d)}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/metrics.json",
        "data/prepared.dvc",
        "checkpoint/model.pt",
    } <= artifacts
    png = Path(c.download_artifacts(first["run_id"], "evaluation/confusion_matrix.png", str(lepton_env[0] / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dvc_text = Path(c.download_artifacts(first["run_id"], "data/prepared.dvc", str(lepton_env[0] / "dl"))).read_text()
    assert first["data_version"] in dvc_text
    mv = c.get_model_version("lepton-digits", second["version"])
    assert mv.tags["lepton.gate.promote"] == "False"
    assert float(mv.tags["lepton.gate.p_value"]) <= 1.0
    assert float(mv.tags["lepton.gate.champion_accuracy"]) == pytest.approx(first["metrics"]["test_accuracy"])
    assert mv.tags["lepton.data_version"] == second["data_version"]
    assert mv.tags["lepton.run_id"] == second["run_id"]


def test_run_records_what_training_used_its_cost_and_system_metrics(runs):
    from effects.tracking.registry import registry_status
    from effects.tracking.runs import client
    from effects.tracking.summaries import retrain_markdown

    first, second = runs
    run = client().get_run(first["run_id"])
    m = run.data.metrics
    assert 0 < m["resources.cpu_seconds"] < 600
    assert 50 < m["resources.peak_rss_mb"] < 64_000
    assert 0 < m["resources.wall_seconds"] and m["resources.wall_seconds"] >= m["train_seconds"]
    assert m["resources.gpu_seconds"] == 0 and m["resources.peak_gpu_mb"] == 0  # trained on the CPU
    assert m["cost"] == pytest.approx(m["resources.cpu_seconds"] / 3600 * 0.5)
    assert run.data.tags["lepton.cost.currency"] == "EUR" and run.data.params["cost.cpu_core_hour"] == "0.5"
    assert first["cost"]["amount"] == pytest.approx(m["cost"]) and first["cost"]["currency"] == "EUR"
    # MLflow's system metrics, sampled while it trained
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(m)
    assert 0 < m["system/system_memory_usage_megabytes"]
    # the default params: a point even for a run shorter than one interval (15 s)
    assert "system/cpu_utilization_percentage" in client().get_run(second["run_id"]).data.metrics
    assert client().get_run(second["run_id"]).data.tags["lepton.cost.currency"] == "USD"
    assert "- training cost: " in retrain_markdown(first, "lepton-digits")
    assert " EUR  (CPU " in retrain_markdown(first, "lepton-digits")
    champion = registry_status("lepton-digits")["champion"]
    assert champion["cost"]["amount"] == pytest.approx(m["cost"])
    assert champion["cost"]["cpu_seconds"] == pytest.approx(m["resources.cpu_seconds"])


def test_prepare_is_cached_when_raw_data_unchanged(runs, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from effects.tracking.runs import client

    first, second = runs
    flow_run_id = client().get_run(second["run_id"]).data.tags["lepton.prefect_flow_run_id"]
    with get_client(sync_client=True) as pc:
        task_runs = pc.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = {tr.name.rsplit("-", 1)[0]: tr.state.name for tr in task_runs}
    assert states["prepare"] == "Cached"
    assert states["train"] == "Completed"


def test_champion_loads_with_stock_mlflow_and_predicts(runs, lepton_env):
    import mlflow

    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    first, _ = runs
    mlflow.set_tracking_uri(lepton_env[1]["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model("models:/lepton-digits@champion")
    prepared = read_prepared(dataset_path(first["data_version"]))
    x = prepared.x["test"]  # raw uint8 digits (N, 1, 8, 8), as the user has them
    assert x.dtype == np.uint8
    out = model.predict(x)
    assert list(out.columns) == ["label", "class_name", "probabilities"]
    probs = np.stack(out["probabilities"].to_numpy())
    assert probs.shape == (len(x), 10) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (out["label"].to_numpy() == probs.argmax(1)).all()
    assert list(out["class_name"]) == [str(k) for k in out["label"]]
    acc = float((out["label"].to_numpy() == prepared.y["test"]).mean())
    assert acc == pytest.approx(first["metrics"]["test_accuracy"], abs=1e-9)
    # the signature says what it reads; pre-scaled floats are refused, not mis-scored
    sig = model.metadata.get_input_schema().inputs[0]
    assert sig.type == np.dtype(np.uint8) and tuple(sig.shape) == (-1, 1, 8, 8)
    with pytest.raises(Exception, match="dtype"):
        model.predict(x.astype(np.float32) / 255.0)


def test_stock_mlflow_loads_the_champion_without_asking_for_type_hints(runs, lepton_env, tmp_path):
    """A load in a new process (another folder) prints none of MLflow's warnings about
    the pyfunc's `predict` (it has type hints MLflow accepts)."""
    import os
    import subprocess
    import sys

    code = (
        "import mlflow, warnings; warnings.simplefilter('always'); "
        f"mlflow.set_tracking_uri({lepton_env[1]['MLFLOW_TRACKING_URI']!r}); "
        "m = mlflow.pyfunc.load_model('models:/lepton-digits@champion'); print('loaded', type(m).__name__)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        # a new process: none of this one's MLflow variables (set_registry_uri exports them)
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "PYTHONWARNINGS": "always"},
    )
    assert r.returncode == 0 and "loaded PyFuncModel" in r.stdout, r.stderr[-2000:]
    assert "type hint" not in r.stderr.lower(), r.stderr[-2000:]


def test_force_promote_then_rollback(runs):
    from effects.tracking.registry import registry_status
    from effects.tracking.runs import client
    from flows.registry import promote_flow, rollback_flow

    first, second = runs
    refused = promote_flow(version=second["version"])
    assert refused["promoted"] is False
    assert registry_status("lepton-digits")["champion"]["version"] == first["version"]

    forced = promote_flow(version=second["version"], force=True)
    assert forced["promoted"] is True and forced["forced"] is True
    st = registry_status("lepton-digits")
    assert st["champion"]["version"] == second["version"]
    assert st["previous"]["version"] == first["version"]
    assert client().get_model_version("lepton-digits", second["version"]).tags["lepton.gate.forced"] == "true"

    back = rollback_flow(registry=RegistryParams())
    assert back == {"champion": first["version"], "demoted": second["version"]}
    st = registry_status("lepton-digits")
    assert st["champion"]["version"] == first["version"]
    assert st["previous"] is None


def test_restored_data_version_is_byte_identical(runs, lepton_env, tmp_path):
    import shutil

    from effects.data.dvc_store import restore_dataset
    from effects.runtime.settings import get_settings

    first, _ = runs
    s = get_settings()
    original = _sha(s.datasets_dir / first["data_version"])
    # Restore from the remote alone: drop the local DVC cache first.
    shutil.rmtree(s.data_repo / ".dvc" / "cache", ignore_errors=True)
    out = restore_dataset(first["data_version"], tmp_path / "restored")
    assert _sha(out) == original
    assert set(original) >= {"x_train.npy", "y_test.npy", "meta.json", "report.json"}
