"""Regression through the real command: scikit-learn's diabetes table (a real table
that ships with a package) trained by `lepton retrain --params FILE`, evaluated with
RMSE/MAE/R² and its plots, registered with its headline figures, and gated against
the champion by the paired t-test on squared errors (its p-value on the version)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

MODEL = "diabetes-reg"


def _client(env: dict[str, str]):
    from mlflow import MlflowClient

    uri = env["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def project(lepton_env):
    from sklearn.datasets import load_diabetes

    base, env = lepton_env
    root = base / "project"
    load_diabetes(as_frame=True).frame.to_csv(root / "diabetes.csv", index=False)
    params = {
        "data": {"format": "csv", "path": "diabetes.csv", "label_column": "target", "task": "regression"},
        "train": {"epochs": 60, "patience": 15, "width": 64, "lr": 0.003},
        "promote": {"min_r2": 0.2},
        "registry": {"model_name": MODEL},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root, env


def retrain(env, *overrides: str) -> dict:
    args = ["retrain", "--params", "params.yaml", "--json", "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    r = run_cli(args, env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)["result"]


@pytest.fixture(scope="module")
def two_versions(project):
    _, env = project
    first = retrain(env)
    second = retrain(env, "train.seed=7")
    return first, second


def test_the_first_version_is_trained_evaluated_and_promoted(two_versions, project):
    first, _ = two_versions
    m = first["metrics"]
    assert set(m) == {"test_rmse", "test_mae", "test_r2"}
    assert first["decision"]["promoted"] and first["decision"]["reason"] == "no champion to beat; floor met"
    assert 0.2 < m["test_r2"] < 1 and 30 < m["test_rmse"] < 80  # diabetes: a linear model gets R² near 0.45
    c = _client(project[1])
    mv = c.get_model_version(MODEL, first["version"])
    assert mv.tags["lepton.task"] == "regression"
    assert float(mv.tags["lepton.test_rmse"]) == pytest.approx(m["test_rmse"], rel=1e-4)
    run = c.get_run(first["run_id"])
    assert run.data.metrics["best_val_rmse"] > 0 and "best_val_accuracy" not in run.data.metrics
    history = c.get_metric_history(first["run_id"], "val_rmse")
    assert len(history) == first["epochs_run"] >= 2
    evaluation = {f.path for f in c.list_artifacts(first["run_id"], "evaluation")}
    assert {"evaluation/predicted_vs_actual.png", "evaluation/residuals.png", "evaluation/metrics.json"} <= evaluation
    assert "evaluation/confusion_matrix.png" not in evaluation


def test_the_second_version_is_judged_by_the_paired_test(two_versions, project):
    first, second = two_versions
    d = second["decision"]
    assert d["champion_rmse"] == pytest.approx(first["metrics"]["test_rmse"])
    assert d["challenger_rmse"] == pytest.approx(second["metrics"]["test_rmse"])
    assert 0.0 <= d["p_value"] <= 1.0 and d["mean_sq_err_diff"] is not None
    worse = d["challenger_rmse"] > d["champion_rmse"] * 1.02
    assert d["promoted"] is (not worse and d["p_value"] >= 0.05)
    mv = _client(project[1]).get_model_version(MODEL, second["version"])
    assert float(mv.tags["lepton.gate.p_value"]) == pytest.approx(d["p_value"])
    assert float(mv.tags["lepton.gate.champion_rmse"]) == pytest.approx(d["champion_rmse"])
    assert mv.tags["lepton.gate.promote"] == str(d["promoted"])


def test_a_float_label_as_classes_is_refused_with_the_fix_and_nothing_registered(two_versions, project):
    _, env = project
    before = len(_client(env).search_model_versions(f"name='{MODEL}'"))
    r = run_cli(["retrain", "--params", "params.yaml", "--set", "data.task=classification", "--no-progress"], env)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "set data.task=regression" in last, r.stderr[-2000:]
    assert len(_client(env).search_model_versions(f"name='{MODEL}'")) == before


def test_regression_on_images_is_refused_before_any_work(project):
    _, env = project
    r = run_cli(["retrain", "--set", "data.format=digits", "--set", "data.task=regression", "--no-progress"], env)
    assert r.returncode == 2 and "needs a table (csv) or a custom loader" in r.stderr


def test_an_installed_librarys_module_trains_and_stock_mlflow_reproduces_its_rmse(two_versions, project, tmp_path):
    """`torch.nn.Linear` by class path (an installed library named in train.requirements):
    trained, registered, and loaded by stock MLflow in a fresh process in another folder,
    predicting the test rows at the version's logged RMSE."""
    import os
    import subprocess
    import sys

    import numpy as np

    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    root, env = project
    linear = retrain(
        env,
        "train.model.class_path=torch.nn.Linear",
        "train.model.init_args.in_features=${in_channels}",
        "train.model.init_args.out_features=${n_outputs}",
        "train.requirements=[torch]",
        "train.lr=0.1",
        "train.weight_decay=0",
        "train.epochs=100",
        "train.patience=20",
        "registry.model_name=diabetes-linear",
    )
    assert linear["version"] == "1" and linear["decision"]["promoted"]
    assert linear["metrics"]["test_r2"] > 0.3
    prepared = read_prepared(dataset_path(linear["data_version"]))
    np.save(tmp_path / "x.npy", prepared.x["test"])
    np.save(tmp_path / "y.npy", prepared.y["test"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    names = prepared.meta["feature_names"]
    script = (
        "import numpy as np, pandas as pd, mlflow\n"
        f"mlflow.set_tracking_uri({env['MLFLOW_TRACKING_URI']!r})\n"
        "m = mlflow.pyfunc.load_model('models:/diabetes-linear@champion')\n"
        f"x = pd.DataFrame(np.load({str(tmp_path / 'x.npy')!r}).astype('float64'), columns={names!r})\n"
        "out = m.predict(x)\n"
        f"err = out['value'].to_numpy() - np.load({str(tmp_path / 'y.npy')!r})\n"
        "print(f'rmse {float(np.sqrt((err ** 2).mean())):.6f}')\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    clean["MLFLOW_DISABLE_TELEMETRY"] = "true"
    r = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=elsewhere, env=clean, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"rmse {linear['metrics']['test_rmse']:.6f}" in r.stdout
