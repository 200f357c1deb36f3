"""A regression model downstream of training: the MLflow pyfunc, `lepton serve`
(values out, numeric feedback, the prediction log) and `lepton predict` (a `value`
column) answer numbers in the target's units.

The first tests are fast: a regression Predictor made in-process (an MLP over the
diabetes table's features) behind the real pyfunc class, server app and batch
scorer. The last ones are slow and end to end: the diabetes CSV through
`lepton retrain --params FILE`, then `lepton serve`, stock MLflow in a fresh process
and `lepton predict` against the registered champion."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from lepton_core.models import ModelConfig, build_model
from lepton_core.params import ServeParams
from lepton_core.predictor import Predictor, Preprocessing
from tests.conftest import run_cli

MODEL = "diabetes"


def _diabetes() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    frame: pd.DataFrame = load_diabetes(as_frame=True).frame
    return frame


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return _diabetes()


@pytest.fixture(scope="module")
def predictor(table) -> Predictor:
    """An (untrained) MLP over the ten features whose outputs are standardised targets
    (mean 150, std 75, about the diabetes target's): its answers are values, not classes."""
    features = tuple(c for c in table.columns if c != "target")
    pre = Preprocessing(
        kind="tabular",
        input_shape=(len(features),),
        dtype="float32",
        scale=1.0,
        classes=(),
        feature_names=features,
        label_column="target",
        task="regression",
        target_mean=150.0,
        target_std=75.0,
    )
    cfg = ModelConfig(kind="mlp", input_shape=(len(features),), n_classes=1, width=16)
    torch.manual_seed(0)
    return Predictor(build_model(cfg), cfg, pre)


def test_the_pyfunc_answers_one_value_column_for_a_regression_model(predictor, table):
    from effects.tracking.pyfunc_model import LeptonClassifier

    pyfunc = LeptonClassifier()
    pyfunc.predictor = predictor
    out = pyfunc.predict(None, table.head(20))  # the target column is ignored, as a table's extra columns are
    assert list(out.columns) == ["value"] and out["value"].dtype == np.float64
    np.testing.assert_allclose(out["value"].to_numpy(), predictor.values(table.head(20)), rtol=1e-12)
    assert out["value"].std() > 0  # numbers in the target's units, not one class index


# ---------------------------------------------------------------- the server app, in-process
def _server(tmp_path, predictor: Predictor):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:  # no registry: the regression predictor made above
            self.current = Loaded("4", "run-4", "data-4", predictor)
            return True

    return Stand(
        MODEL, "champion", ServeParams(max_instances=8, poll_seconds=60), get_settings(), None, tmp_path / "predictions"
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


def _post(c: TestClient, path: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = c.post(path, content=data, headers={"Content-Type": "application/json"})
    return r.status_code, r.json()


def test_the_server_answers_values_logs_them_and_stores_numeric_feedback(home, predictor, table):
    from lepton.serving.app import create_app

    features = table.drop(columns="target").to_numpy()
    server = _server(home, predictor)
    with TestClient(create_app(server)) as c:
        status, out = _post(c, "/v1/predict", {"instances": features[:5].tolist()})
        assert status == 200, out
        assert set(out) == {"model", "version", "request_id", "values"}
        assert out["model"] == MODEL and out["version"] == "4"
        np.testing.assert_allclose(out["values"], predictor.values(features[:5]), rtol=1e-6)
        model = c.get("/v1/model").json()
        assert model["task"] == "regression" and model["classes"] == []
        # the true targets arrive later: ints and floats alike, stored as floats
        truth = [151.0, 75, 141.5, 206, 135.25]
        assert _post(c, "/v1/feedback", {"request_id": out["request_id"], "labels": truth}) == (200, {"accepted": 5})
        second = _post(c, "/v1/predict", {"instances": features[5:8].tolist()})[1]
    log = home / "predictions"  # the log was flushed when the app closed
    df = pd.concat([pd.read_parquet(p) for p in sorted(log.glob("*.parquet"))], ignore_index=True)
    assert len(df) == 8 and "value" in df and df["value"].dtype == np.float64
    assert not {"prediction", "confidence", "label", "class_name", "probabilities"} & set(df)
    assert {f"f_{n}" for n in predictor.preprocessing.feature_names} <= set(df)
    mine = df[df["request_id"] == out["request_id"]].sort_values("instance")
    np.testing.assert_allclose(mine["value"], out["values"], rtol=1e-12)
    fb = pd.read_parquet(next((log / "feedback").glob("*.parquet")))
    assert fb["label"].dtype == np.float64 and fb["label"].tolist() == [float(v) for v in truth]
    # the monitor joins the feedback onto the logged rows by request id and instance
    from effects.monitoring.monitor import _with_feedback

    joined = _with_feedback(df, log / "feedback")
    assert joined.loc[joined["request_id"] == out["request_id"], "label"].tolist() == [float(v) for v in truth]
    assert joined.loc[joined["request_id"] == second["request_id"], "label"].isna().all()


BAD_TARGETS = [
    ("a class name", ["high"], "label 'high' is not a finite number"),
    ("a boolean", [True], "label True is not a finite number"),
    ("null", [1.0, None], "label None is not a finite number"),
    ("a list", [[1.0]], "label [1.0] is not a finite number"),
    ("a number whose square overflows", [1e200], "label 1e+200 is beyond ±1e+15"),
    ("a huge negative", [-1e308], "label -1e+308 is beyond ±1e+15"),
]


@pytest.mark.parametrize("labels, words", [b[1:] for b in BAD_TARGETS], ids=[b[0] for b in BAD_TARGETS])
def test_feedback_for_a_regression_model_refuses_anything_but_finite_numbers(home, predictor, labels, words):
    from lepton.serving.app import create_app

    with TestClient(create_app(_server(home, predictor))) as c:
        status, out = _post(c, "/v1/feedback", {"request_id": "r", "labels": labels})
        assert status == 400 and set(out) == {"error"} and words in out["error"] and "\n" not in out["error"]


def test_feedback_refuses_non_finite_targets_and_too_many(home, predictor):
    from lepton.serving.app import create_app

    with TestClient(create_app(_server(home, predictor))) as c:
        # tokens Python's JSON reader accepts, a float over the double range, an integer no float holds
        for token in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 400):
            status, out = _post(c, "/v1/feedback", b'{"request_id": "r", "labels": [1.0, ' + token + b"]}")
            assert status == 400 and "is not a finite number" in out["error"], out
        status, out = _post(c, "/v1/feedback", {"request_id": "r", "labels": [1.0] * 9})
        assert (status, out) == (413, {"error": "9 labels is over the limit of 8"})
    assert not (home / "predictions" / "feedback").exists()  # nothing refused was stored


# ---------------------------------------------------------------- lepton predict, in-process
def test_batch_scoring_writes_values_and_the_rmse_against_the_tables_targets(
    home, predictor, table, monkeypatch, tmp_path
):
    from effects.serving import batch_scoring

    monkeypatch.setattr(batch_scoring, "load_alias", lambda *a, **k: (SimpleNamespace(version=4), predictor))
    table.to_csv(tmp_path / "with.csv", index=False)
    r = batch_scoring.score_data(tmp_path / "with.csv", None, tmp_path / "a.parquet", MODEL, progress=False)
    df = pd.read_parquet(tmp_path / "a.parquet")
    assert list(df.columns) == ["value", "true_value"] and len(df) == len(table) == r["rows"]
    expected = predictor.values(table)
    np.testing.assert_allclose(df["value"], expected, rtol=1e-6)
    assert df["true_value"].tolist() == table["target"].astype(float).tolist()
    assert r["rmse"] == pytest.approx(math.sqrt(np.mean((expected - table["target"].to_numpy()) ** 2)), rel=1e-5)
    assert r["mae"] == pytest.approx(np.mean(np.abs(expected - table["target"].to_numpy())), rel=1e-5)
    # samples without the target column (here a parquet file): values alone, no RMSE
    table.drop(columns="target").head(10).to_parquet(tmp_path / "without.parquet")
    r = batch_scoring.score_data(tmp_path / "without.parquet", None, tmp_path / "b.parquet", MODEL, progress=False)
    df = pd.read_parquet(tmp_path / "b.parquet")
    assert list(df.columns) == ["value"] and "rmse" not in r
    np.testing.assert_allclose(df["value"], expected[:10], rtol=1e-6)


def test_the_predict_line_names_the_rmse_for_a_regression_model():
    from lepton.cli import render

    r = {"rows": 442, "model": MODEL, "version": "1", "quarantined": 0, "out": "/o.parquet"}
    assert render.predict_line({**r, "rmse": 54.44123, "mae": 44.3712}) == (
        "scored 442 samples with diabetes v1 (0 quarantined), RMSE 54.44 and MAE 44.37 against the targets "
        "in the data -> /o.parquet"
    )
    assert render.predict_line(r) == "scored 442 samples with diabetes v1 (0 quarantined) -> /o.parquet"


# ---------------------------------------------------------------- end to end (slow)
@pytest.fixture(scope="module")
def trained(lepton_env, tmp_path_factory):
    """The diabetes CSV, trained, registered and promoted by `lepton retrain --params FILE`."""
    import yaml

    where = tmp_path_factory.mktemp("diabetes")
    csv = where / "diabetes.csv"
    _diabetes().to_csv(csv, index=False)
    params = {
        "data": {"format": "csv", "path": str(csv), "label_column": "target", "task": "regression"},
        "train": {"epochs": 50, "patience": 10, "width": 64, "lr": 3e-3},
        "registry": {"model_name": MODEL},
    }
    (where / "params.yaml").write_text(yaml.safe_dump(params))
    r = run_cli(["retrain", "--params", str(where / "params.yaml"), "--json", "--no-progress"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)["result"]
    assert result["version"] == "1" and result["decision"]["promoted"], result
    return csv, result


def _test_rows(result: dict) -> tuple[np.ndarray, np.ndarray]:
    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    prepared = read_prepared(dataset_path(result["data_version"]))
    return prepared.x["test"], prepared.y["test"]


def _stock_pyfunc(lepton_env, tmp_path, x: np.ndarray, names: list[str]) -> subprocess.Popen:
    """Stock `mlflow.pyfunc.load_model` in a fresh process, with none of this process's
    MLflow variables (an in-process test may have exported MLFLOW_REGISTRY_URI); it
    writes the champion's values for `x` to values.npy."""
    pd.DataFrame(x.astype(np.float64), columns=names).to_parquet(tmp_path / "x.parquet")
    script = (
        "import numpy as np, pandas as pd, mlflow\n"
        f"mlflow.set_tracking_uri({lepton_env[1]['MLFLOW_TRACKING_URI']!r})\n"
        f"m = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        f"out = m.predict(pd.read_parquet({str(tmp_path / 'x.parquet')!r}))\n"
        "assert list(out.columns) == ['value'], list(out.columns)\n"
        f"np.save({str(tmp_path / 'values.npy')!r}, out['value'].to_numpy())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return subprocess.Popen(
        [sys.executable, "-I", "-c", script], cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _call(url: str, path: str, body: dict | None = None, token: str = "") -> tuple[int, dict]:
    req = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_lepton_serve_answers_the_values_stock_mlflow_gives_and_takes_feedback(trained, lepton_env, tmp_path):
    from effects.runtime.procs import free_port
    from effects.runtime.settings import get_settings

    _, result = trained
    x, y = _test_rows(result)
    names = [c for c in _diabetes().columns if c != "target"]
    pyfunc = _stock_pyfunc(lepton_env, tmp_path, x, names)  # runs while the server starts
    port, token = free_port(), "reg-token"
    cmd = ["serve", "--model", MODEL, "--port", str(port), "--token", token]
    server = subprocess.Popen(
        [sys.executable, "-c", "from lepton.cli import main; main()", *cmd],
        env={**os.environ, **lepton_env[1]},
        cwd=lepton_env[1]["LEPTON_PROJECT_DIR"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _call(url, "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        status, out = _call(url, "/v1/predict", {"instances": x.tolist()}, token)
        assert status == 200, out
        assert out["version"] == "1" and "labels" not in out and len(out["values"]) == len(x)
        truth = [float(v) for v in y]
        ok = _call(url, "/v1/feedback", {"request_id": out["request_id"], "labels": truth}, token)
        assert ok == (200, {"accepted": len(y)})
        bad = _call(url, "/v1/feedback", {"request_id": out["request_id"], "labels": ["high"]}, token)
        assert bad[0] == 400 and "not a finite number" in bad[1]["error"]
    finally:
        server.terminate()
        server.wait(30)
    _, err = pyfunc.communicate(timeout=120)
    assert pyfunc.returncode == 0, err.decode()[-3000:]
    stock = np.load(tmp_path / "values.npy")
    np.testing.assert_allclose(out["values"], stock, rtol=1e-5, atol=1e-3)
    rmse = math.sqrt(np.mean((np.asarray(out["values"]) - y) ** 2))
    assert rmse == pytest.approx(result["metrics"]["test_rmse"], rel=1e-4)
    feedback = get_settings().prediction_log_dir / "feedback"
    stored = pd.concat([pd.read_parquet(p) for p in feedback.glob("*.parquet")])
    assert stored["label"].dtype == np.float64 and sorted(stored["label"]) == sorted(truth)


@pytest.mark.slow
def test_lepton_predict_writes_values_at_the_logged_test_rmse(trained, lepton_env, tmp_path):
    csv, result = trained
    out = tmp_path / "preds.parquet"
    r = run_cli(["predict", str(csv), "--model", MODEL, "--out", str(out), "--no-progress"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_parquet(out)
    table = _diabetes()
    assert list(df.columns) == ["value", "true_value"] and len(df) == len(table)
    assert f"RMSE {math.sqrt(np.mean((df['value'] - df['true_value']) ** 2)):.4g}" in r.stdout
    # the test split's rows of the CSV, found by their features
    features = table.drop(columns="target").to_numpy(dtype=np.float32)
    row_of = {row.tobytes(): i for i, row in enumerate(features)}
    x, y = _test_rows(result)
    rows = [row_of[row.tobytes()] for row in x]
    assert df["true_value"].to_numpy()[rows].tolist() == y.tolist()
    rmse = math.sqrt(np.mean((df["value"].to_numpy()[rows] - y) ** 2))
    assert rmse == pytest.approx(result["metrics"]["test_rmse"], rel=1e-4)
