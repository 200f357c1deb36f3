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
    # (and none of this test process's MLflow variables: mlflow.set_registry_uri in an
    # earlier in-process test exports MLFLOW_REGISTRY_URI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    r = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"accuracy {result['metrics']['test_accuracy']:.6f}" in r.stdout


def test_two_versions_of_the_package_gated_in_one_process_and_hot_swapped_under_load(lepton_env, tmp_path):
    """v1 from the example package; v2 from an edited copy of the same package (its
    forward adds 10,000 to class 0's logit, so it answers 0 to everything). The gate
    scores both in one process, each through its own code (the champion's score is its
    logged accuracy); the server swaps from v1 to v2 under load with zero errors and
    then answers with v2's code."""
    import threading

    from effects.data.dvc_store import dataset_path
    from flows.registry import promote_flow
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared
    from lepton_core.params import DataParams, PromoteParams, RegistryParams, ServeParams, TrainParams
    from tests.platform.test_serve import Running

    def package(where, edit: bool):
        shutil.copytree(EXAMPLE, where / "my_models")
        if edit:
            init = where / "my_models" / "__init__.py"
            text = init.read_text().replace(
                "return self.head(self.blocks(torch.relu(self.stem(x))))",
                "z = self.head(self.blocks(torch.relu(self.stem(x))))\n"
                "        return z + torch.nn.functional.one_hot(torch.zeros(len(z), dtype=torch.long), z.shape[1]) * 1e4",
            )
            assert text != init.read_text()
            init.write_text(text)
        return str(where / "my_models")

    def train(code: str) -> TrainParams:
        spec = {
            "class_path": "my_models.TinyResNet",
            "init_args": {"in_channels": "${in_channels}", "n_outputs": "${n_outputs}", "width": 12},
        }
        return TrainParams(model=spec, code=[code], epochs=4, lr=0.01, patience=0)

    registry = RegistryParams(model_name="team-swap")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = retrain(data=DataParams(), train=train(package(tmp_path / "a", False)), registry=registry, progress=False)
    assert first["decision"]["promoted"]
    x = read_prepared(dataset_path(first["data_version"])).x["test"]
    with Running(tmp_path, ServeParams(poll_seconds=0.3), model="team-swap") as srv:
        seen, errors, stop = [], [], threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                status, out = srv.predict(x[i % len(x)][None])
                (seen.append((out["version"], out["labels"][0])) if status == 200 else errors.append((status, out)))
                i += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            # no floor, so the gate compares the two (v2 answers 0 to everything: it loses)
            second = retrain(
                data=DataParams(),
                train=train(package(tmp_path / "b", True)),
                registry=registry,
                promote=PromoteParams(min_accuracy=0.0),
                progress=False,
            )
            # the gate scored the champion through v1's code: its logged test accuracy
            assert second["decision"]["champion_accuracy"] == pytest.approx(first["metrics"]["test_accuracy"])
            if not second["decision"]["promoted"]:
                assert promote_flow(version=second["version"], force=True, registry=registry)["promoted"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and srv.request("GET", "/v1/model")[1]["version"] != second["version"]:
                time.sleep(0.1)
            time.sleep(1.0)  # more traffic on the new version
        finally:
            stop.set()
            for t in threads:
                t.join(60)
    assert not errors, errors[:3]
    versions = [v for v, _ in seen]
    assert set(versions) == {first["version"], second["version"]}
    after = [label for v, label in seen if v == second["version"]]
    assert after and set(after) == {0}  # v2's own code answered
    before = [label for v, label in seen if v == first["version"]]
    assert len(set(before)) > 1  # v1's code did not
