"""The team's own model through the real commands: a model package in a folder
outside the checkout, trained with `lepton retrain --params FILE`, registered and
promoted, served by `lepton serve`, scored by `lepton predict`, and loaded by stock
MLflow in a fresh process after the folder is deleted, at its logged test accuracy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "examples" / "team_model" / "my_models"
MODEL = "team-tinyresnet"


@pytest.fixture(scope="module")
def trained(lepton_env, tmp_path_factory):
    team = tmp_path_factory.mktemp("team")  # not inside the checkout
    shutil.copytree(EXAMPLE, team / "my_models")
    params = {
        "data": {"format": "digits"},
        "train": {
            "model": {
                "class_path": "my_models.TinyResNet",
                "init_args": {"in_channels": "${in_channels}", "n_outputs": "${n_outputs}", "width": 12, "blocks": 1},
            },
            "code": [str(team / "my_models")],
            "epochs": 6,
            "lr": 0.01,
            "patience": 0,
        },
        "registry": {"model_name": MODEL},
    }
    (team / "params.yaml").write_text(yaml.safe_dump(params))
    r = run_cli(
        ["retrain", "--params", str(team / "params.yaml"), "--json", "--no-progress"], lepton_env[1], timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)["result"]
    return team, result


def test_it_is_registered_and_promoted_with_its_test_accuracy(trained):
    _, result = trained
    assert result["version"] == "1" and result["decision"]["promoted"]
    assert result["metrics"]["test_accuracy"] > 0.8


def test_lepton_serve_answers_with_the_team_model(trained, lepton_env, tmp_path):
    from effects.data.dvc_store import dataset_path
    from effects.runtime.procs import free_port
    from lepton_core.data.prepare import read_prepared

    _, result = trained
    x = read_prepared(dataset_path(result["data_version"])).x["test"][:8]
    port, token = free_port(), "team-token"
    env = {**os.environ, **lepton_env[1]}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lepton.cli import main; main()",
            "serve",
            "--model",
            MODEL,
            "--port",
            str(port),
            "--token",
            token,
        ],
        env=env,
        cwd=lepton_env[1]["LEPTON_PROJECT_DIR"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        body = json.dumps({"instances": x.tolist()}).encode()
        req = urllib.request.Request(
            url + "/v1/predict",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(30)
    from effects.tracking.registry import load_alias

    mv, predictor = load_alias(MODEL, "champion")
    assert answer["version"] == str(mv.version) == "1"
    assert answer["labels"] == predictor.predict(x).labels.tolist()


def test_lepton_predict_scores_with_it(trained, lepton_env, tmp_path):
    import pandas as pd

    from effects.monitoring.monitor import write_drift_batch

    batch = write_drift_batch("rotate", "none", tmp_path / "batch")["path"]
    out = tmp_path / "preds.parquet"
    r = run_cli(["predict", batch, "--model", MODEL, "--out", str(out), "--no-progress"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out)
    assert len(df) == 359 and float((df["label"] == df["true_label"]).mean()) > 0.8


def test_stock_mlflow_in_a_fresh_process_reproduces_its_accuracy_with_the_folder_gone(trained, lepton_env, tmp_path):
    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    team, result = trained
    prepared = read_prepared(dataset_path(result["data_version"]))
    np.save(tmp_path / "x.npy", prepared.x["test"])
    np.save(tmp_path / "y.npy", prepared.y["test"])
    shutil.rmtree(team / "my_models")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import sys, numpy as np, mlflow\n"
        f"mlflow.set_tracking_uri({lepton_env[1]['MLFLOW_TRACKING_URI']!r})\n"
        f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        f"out = m.predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"acc = float((out['label'].to_numpy() == np.load({str(tmp_path / 'y.npy')!r})).mean())\n"
        "print(f'accuracy {acc:.6f}')\n"
    )
    # a clean sys.path: neither the checkout nor the team's folder (MLflow puts the
    # model's own code, lepton_core, on it at load)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"accuracy {result['metrics']['test_accuracy']:.6f}" in r.stdout
