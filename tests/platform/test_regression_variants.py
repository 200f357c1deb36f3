"""Regression through `lepton optimize` and `lepton sweep`, on scikit-learn's diabetes
table: the ONNX variant of a regression champion is registered within
optimize.max_rmse_increase and predicts the PyTorch model's values; int8 is reported
either way with its reason; a team model the ONNX exporter cannot export has its
variants refused in one line while its retrain still promotes it; a small sweep
minimises val_rmse, and val_accuracy is refused for regression in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

MODEL, TEAM_MODEL = "diabetes", "diabetes-team"
TRAIN = {"epochs": 40, "patience": 10, "width": 64, "lr": 3e-3}

# A team's model whose forward branches on the data's values: PyTorch trains and
# serves it, torch.export (and so the ONNX exporter) cannot capture it.
GATED = """
import torch
from torch import nn


class GatedMLP(nn.Module):
    def __init__(self, n_features: int, n_outputs: int = 1, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, width), nn.GELU(), nn.Linear(width, n_outputs))

    def forward(self, x):
        z = self.net(x * 10)
        if z.abs().max() > 1e4:
            z = z.clamp(-1e4, 1e4)
        return z
"""


@pytest.fixture(scope="module")
def project(lepton_env, tmp_path_factory):
    """The diabetes table as a CSV and a params file for it (outside the checkout)."""
    from sklearn.datasets import load_diabetes

    folder = tmp_path_factory.mktemp("diabetes")
    load_diabetes(as_frame=True).frame.to_csv(folder / "diabetes.csv", index=False)
    params = {
        "data": {"format": "csv", "path": str(folder / "diabetes.csv"), "label_column": "target", "task": "regression"},
        "train": TRAIN,
        "registry": {"model_name": MODEL},
    }
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def _cli(args: list[str], env: dict, server: str, timeout: float = 300):
    return run_cli(args, {**env, "PREFECT_API_URL": server}, timeout=timeout)


@pytest.fixture(scope="module")
def trained(project, lepton_env, prefect_server):
    r = _cli(
        ["retrain", "--params", str(project / "params.yaml"), "--json", "--no-progress"],
        lepton_env[1],
        prefect_server,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)["result"]
    assert result["decision"]["promoted"] and "test_rmse" in result["metrics"]
    return result


@pytest.fixture(scope="module")
def optimized(trained, project, lepton_env, prefect_server):
    r = _cli(["optimize", "--json", "--params", str(project / "params.yaml")], lepton_env[1], prefect_server)
    out = json.loads(r.stdout)
    refused = [v for v in out["variants"] if not v["registered"]]
    assert r.returncode == (3 if refused else 0), r.stderr[-3000:]  # 3: a variant refused, not an error
    assert "Traceback" not in r.stderr
    return out


def test_the_onnx_variant_is_registered_within_the_rmse_tolerance(trained, optimized):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from effects.tracking.registry import alias_version

    assert optimized["version"] == trained["version"] and optimized["task"] == "regression"
    assert optimized["torch_rmse"] == pytest.approx(trained["metrics"]["test_rmse"], rel=1e-9)
    onnx = {v["variant"]: v for v in optimized["variants"]}["onnx"]
    assert onnx["registered"], onnx["reason"]
    assert onnx["test_rmse"] == pytest.approx(optimized["torch_rmse"], rel=1e-4)
    assert abs(onnx["rmse_increase"]) <= 1e-4 and "accuracy" not in " ".join(onnx)
    assert onnx["reason"].startswith(f"onnx variant registered as v{onnx['version']}: test RMSE ")
    mv = alias_version(runs.client(get_settings()), MODEL, "champion-onnx")
    assert mv is not None and str(mv.version) == onnx["version"]
    t = mv.tags
    assert t["lepton.variant"] == "onnx" and t["lepton.variant_of"] == trained["version"]
    assert t["lepton.task"] == "regression" and "lepton.test_accuracy" not in t
    assert float(t["lepton.test_rmse"]) == pytest.approx(onnx["test_rmse"], rel=1e-5)
    assert float(t["lepton.rmse_increase"]) == pytest.approx(onnx["rmse_increase"], abs=1e-4)


def test_the_onnx_variant_predicts_the_pytorch_models_values(trained, optimized):
    import mlflow

    from effects.data.dvc_store import dataset_path
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from effects.tracking.registry import alias_version, predictor_of
    from effects.tracking.variants import variant_predictor
    from lepton_core.data.prepare import read_prepared

    c = runs.client(get_settings())
    x = read_prepared(dataset_path(trained["data_version"])).x["test"]
    want = predictor_of(alias_version(c, MODEL, "champion")).values(x)
    got = variant_predictor(alias_version(c, MODEL, "champion-onnx")).values(x)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # stock MLflow, no Lepton code: the graph's `value` output is in the target's units
    uri = get_settings().tracking_uri
    with pytest.MonkeyPatch.context() as mp:  # an earlier in-process test may have pointed MLflow elsewhere
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(var, uri)  # set_*_uri export these; the context restores them
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        out = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion-onnx").predict(x)
    assert set(out) == {"value", "output"}
    np.testing.assert_allclose(out["value"], want, rtol=1e-4)


def test_int8_is_reported_with_its_reason_whichever_way_it_goes(optimized):
    int8 = {v["variant"]: v for v in optimized["variants"]}["int8"]
    assert int8["reason"].count("\n") == 0 and np.isfinite(int8["test_rmse"])
    if int8["registered"]:
        assert int8["rmse_increase"] <= 0.02 and int8["reason"].startswith("int8 variant registered as v")
    else:
        assert int8["rmse_increase"] > 0.02
        assert "optimize.max_rmse_increase = 0.02" in int8["reason"] and "above the PyTorch model's" in int8["reason"]


def test_a_team_model_onnx_cannot_export_is_refused_and_still_promoted(project, lepton_env, prefect_server):
    """The retrain flow with optimize.enabled: the team model is promoted, both variants
    refused with the exporter's first error line (tests/effects/test_onnx_regression.py
    holds the export itself), recorded on the version, and the flow succeeds."""
    from effects.runtime.settings import get_settings
    from effects.tracking import runs

    (project / "team" / "gated").mkdir(parents=True)
    (project / "team" / "gated" / "__init__.py").write_text(GATED)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["model"] = {
        "class_path": "gated.GatedMLP",
        "init_args": {"n_features": "${in_channels}", "n_outputs": "${n_outputs}"},
    }
    params["train"]["code"] = [str(project / "team" / "gated")]
    params["registry"]["model_name"] = TEAM_MODEL
    params["optimize"] = {"enabled": True}
    (project / "team.yaml").write_text(yaml.safe_dump(params))
    r = _cli(
        ["retrain", "--params", str(project / "team.yaml"), "--json", "--no-progress"],
        lepton_env[1],
        prefect_server,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)["result"]
    assert result["decision"]["promoted"]  # the refusal below does not stand in its way
    rows = {v["variant"]: v for v in result["optimized"]["variants"]}
    assert not rows["onnx"]["registered"] and not rows["int8"]["registered"]
    onnx_reason = rows["onnx"]["reason"]
    assert onnx_reason.startswith("onnx variant refused: the ONNX exporter cannot export this model (")
    assert "GuardOnDataDependentSymNode" in onnx_reason and "\n" not in onnx_reason
    assert rows["int8"]["reason"].startswith("int8 variant refused: no ONNX graph to quantise (")
    c = runs.client(get_settings())
    versions = c.search_model_versions(f"name='{TEAM_MODEL}'")
    assert [str(v.version) for v in versions] == [result["version"]]  # no variant registered
    assert versions[0].tags["lepton.variant_refused.onnx"] == onnx_reason


def test_a_regression_sweep_minimises_val_rmse(trained, project, lepton_env, prefect_server):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs

    r = _cli(
        [
            "sweep",
            "--params",
            str(project / "params.yaml"),
            "--trials",
            "2",
            "--parallel",
            "2",
            "--json",
            "--set",
            "sweep.metric=val_rmse",
            "--set",
            "train.epochs=15",
            "--set",
            "registry.experiment=diabetes-sweep",
            "--set",
            "sweep.space={train.lr: {choices: [0.0003, 0.01]}}",
        ],
        lepton_env[1],
        prefect_server,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.index("{") :])
    assert result["metric"] == "val_rmse" and result["failed"] == 0 and len(result["trials"]) == 2
    values = [t["value"] for t in result["trials"]]
    best = min(result["trials"], key=lambda t: t["value"])  # minimised
    assert result["best"]["number"] == best["number"] and result["run_id"] == best["run_id"]
    assert all(np.isfinite(values)) and max(values) > min(values)
    assert 20 < best["value"] < 200  # an RMSE in the target's units (diabetes: std about 77)
    c = runs.client(get_settings())
    run = c.get_run(best["run_id"])
    assert run.data.metrics["best_val_rmse"] == pytest.approx(best["value"])
    assert run.data.metrics["objective_val_rmse"] == pytest.approx(best["value"])
    assert "test_rmse" in result["metrics"] and "test_accuracy" not in result["metrics"]
    parent = c.get_run(result["parent_run_id"])
    assert parent.data.metrics["best_val_rmse"] == pytest.approx(best["value"])
    assert parent.data.metrics["best_test_rmse"] == pytest.approx(result["metrics"]["test_rmse"])


def test_a_regression_sweep_on_val_accuracy_is_refused_in_one_line(project, lepton_env):
    r = run_cli(
        ["sweep", "--params", str(project / "params.yaml"), "--set", "sweep.metric=val_accuracy"], lepton_env[1]
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    assert "sweep.metric=val_accuracy" in r.stderr and "set sweep.metric=val_rmse" in r.stderr
