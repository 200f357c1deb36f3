"""The team's own model on the live stack: a run of the `retrain/lepton` deployment
started the way the dashboard's form does, with the team's class path and a code
folder outside the checkout, trains, registers and promotes that model, with the run linked to the flow run."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

MODEL = "team-live"


def test_a_deployment_run_with_the_teams_class_path_from_the_form(live_sqlite, tmp_path):
    live = live_sqlite
    shutil.copytree(ROOT / "examples" / "team_model" / "my_models", tmp_path / "my_models")
    r = live.cli("deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    dep = live.get(f"{live.prefect_api}/deployments/name/retrain/lepton")
    train = {
        **dep["parameters"]["train"],
        "model": {
            "class_path": "my_models.TinyResNet",
            "init_args": {"in_channels": "${in_channels}", "n_outputs": "${n_outputs}", "width": 8, "blocks": 1},
        },
        "code": [str(tmp_path / "my_models")],
        "epochs": 3,
        "lr": 0.01,
        "patience": 0,
    }
    params = {
        "train": train,
        "registry": {**dep["parameters"]["registry"], "model_name": MODEL},
        "promote": {**dep["parameters"]["promote"], "min_accuracy": 0.5},
    }
    fr = live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {"parameters": params})
    done = live.wait_flow_run(fr["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
    found = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/alias?name={MODEL}&alias=champion")
    mv = found["model_version"]
    assert mv["version"] == "1"
    run = live.get(f"{live.mlflow}/api/2.0/mlflow/runs/get?run_id={mv['run_id']}")["run"]
    logged = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert "my_models.TinyResNet" in logged["train.model"]
    assert float(next(m["value"] for m in run["data"]["metrics"] if m["key"] == "test_accuracy")) > 0.5
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags.get("lepton.prefect_flow_run_id") == fr["id"]
