"""Explanations through the platform: `POST /v1/explain` on the real app (a stand-in
model first, fast: limits, the token, a prediction answered while an explanation
runs, the time limit), then `lepton explain` and the endpoint on a real registry
(digits, and a table whose class depends on one column only)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from lepton_core.errors import LeptonError
from lepton_core.models import ModelConfig
from lepton_core.params import DataParams, PromoteParams, RegistryParams, ServeParams, TrainParams
from lepton_core.predictor import Predictor, Preprocessing
from tests.conftest import run_cli

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
IMAGES = Preprocessing(kind="image", input_shape=(1, 2, 2), dtype="uint8", scale=1 / 255, classes=("a", "b", "c"))


class _Held(nn.Module):
    """Logit k is (k - 1) * the pixel sum; while explaining (the input needs its
    gradient) it waits for `release`, after saying so in `started`."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.release = threading.Event(), threading.Event()
        self.release.set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 2, 2) -> (B, 3)
        if x.requires_grad:
            self.started.set()
            assert self.release.wait(60)
        return x.flatten(1).sum(1, keepdim=True) * (torch.arange(3.0) - 1)


def _server(tmp_path, model: nn.Module, token: str | None = None, **params):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    predictor = Predictor(model, ModelConfig(kind="cnn", input_shape=(1, 2, 2), n_classes=3), IMAGES)

    class Stand(ModelServer):
        def refresh(self) -> bool:  # no registry: the stand-in model
            self.current = Loaded("3", "run-3", "data-3", predictor)
            return True

    serve = ServeParams(max_instances=8, max_explain_instances=3, poll_seconds=60, **params)
    return Stand("m", "champion", serve, get_settings(), token, tmp_path / "predictions")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


def _client(server) -> TestClient:
    from lepton.serving.app import create_app

    return TestClient(create_app(server))


def _post(c: TestClient, path: str, x, headers: dict | None = None):
    body = json.dumps({"instances": np.asarray(x).tolist()}).encode()
    return c.post(path, content=body, headers={"Content-Type": "application/json", **(headers or {})})


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 2, 2), dtype=np.uint8)


def test_explain_answers_each_instances_shape_behind_the_token(home):
    model = _Held()
    server = _server(home, model, token=TOKEN)
    x = _pixels(3)
    with _client(server) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = _post(c, "/v1/explain", x, headers)
            assert (r.status_code, r.json()) == (401, {"error": "missing or wrong bearer token"})
        r = _post(c, "/v1/explain", x, BEARER)
        assert r.status_code == 200, r.text
        out = r.json()
        attr = np.array(out["attributions"])
        assert attr.shape == x.shape and out["version"] == "3" and out["model"] == "m"
        # the answered class is explained: logit 2 is the pixel sum, so each pixel's share is itself
        assert out["labels"] == [2, 2, 2] and out["class_names"] == ["c", "c", "c"]
        assert np.allclose(attr, x / 255, atol=1e-5)
        assert np.array(_post(c, "/v1/explain", x[:, None], BEARER).json()["attributions"]).shape == (3, 1, 2, 2)


def test_bad_explain_requests_are_one_line_and_change_nothing(home):
    server = _server(home, _Held())
    with _client(server) as c:
        for x, status, words in [
            (_pixels(4), 413, "4 instances is over the explain limit of 3"),
            (_pixels(9), 413, "9 instances is over the limit of 8"),
            (np.zeros((2, 3, 3), int), 400, "samples of shape (2, 3, 3); the model reads (N, 1, 2, 2)"),
            (np.ones((2, 2, 2)) / 2, 400, "images of dtype float64; the model reads uint8 pixels 0..255"),
        ]:
            r = _post(c, "/v1/explain", x)
            assert (r.status_code, r.json()) == (status, {"error": words})
        r = c.post("/v1/explain", content=b"{", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "\n" not in r.json()["error"]
        metrics = c.get("/metrics").text
        assert "lepton_explain_seconds_count 0.0" in metrics and "lepton_instances_total 0.0" in metrics
        assert _post(c, "/v1/explain", _pixels(3)).status_code == 200  # and the next one is served
    assert not list((home / "predictions").rglob("*.parquet"))  # explanations are not predictions


def test_predictions_are_answered_while_an_explanation_runs(home):
    model = _Held()
    model.release.clear()
    server = _server(home, model)
    answers: dict = {}
    with _client(server) as c:
        first = threading.Thread(target=lambda: answers.update(r=_post(c, "/v1/explain", _pixels(2))))
        first.start()
        try:
            assert model.started.wait(30)  # the explanation is inside the model now
            r = _post(c, "/v1/predict", _pixels(2))
            assert r.status_code == 200 and r.json()["labels"] == [2, 2]
            r = _post(c, "/v1/explain", _pixels(1))  # one at a time
            assert (r.status_code, r.json()) == (429, {"error": "another explanation is running; retry in a moment"})
        finally:
            model.release.set()
            first.join(60)
    assert answers["r"].status_code == 200 and np.array(answers["r"].json()["attributions"]).shape == (2, 2, 2)


def test_an_explanation_over_its_time_is_a_504_then_the_next_one_runs(home):
    model = _Held()
    model.release.clear()
    server = _server(home, model, explain_timeout_s=0.2)
    with _client(server) as c:
        try:
            r = _post(c, "/v1/explain", _pixels(1))
            assert r.status_code == 504 and r.json()["error"].startswith("the explanation took over 0.2 s")
            assert _post(c, "/v1/explain", _pixels(1)).status_code == 429  # its thread is still busy
        finally:
            model.release.set()
        deadline = time.monotonic() + 30
        while server._explaining and time.monotonic() < deadline:
            time.sleep(0.02)
        r = _post(c, "/v1/explain", _pixels(1))
        assert r.status_code == 200, r.text


def test_a_model_without_gradients_gets_a_one_line_501(home):
    from tests.platform.test_serve_app import _server as onnx_like  # a BasePredictor, not PyTorch

    with _client(onnx_like(home)) as c:
        r = _post(c, "/v1/explain", _pixels(1))
    assert (r.status_code, r.json()) == (
        501,
        {"error": "explanations need the PyTorch model; this server runs an ONNX variant"},
    )


# ---------------------------------------------------------------- on a real registry
KEY_COLUMN = "f2"


@pytest.fixture(scope="module")
def trained(lepton_env, prefect_server, tmp_path_factory):
    """A digits champion, and a table model (`keycol`) whose class is the sign of one column."""
    import pandas as pd

    from effects.data.dvc_store import dataset_path
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared

    anyway = PromoteParams(min_accuracy=0.0)  # tiny models: the gate's floor is not what is tested
    digits = retrain(train=TrainParams(epochs=2, width=16), promote=anyway, progress=False)
    assert digits["decision"]["promoted"], digits["decision"]
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(rng.normal(size=(400, 5)), columns=[f"f{i}" for i in range(5)])
    rows["label"] = np.where(rows[KEY_COLUMN] > 0, "pos", "neg")
    table = tmp_path_factory.mktemp("table") / "rows.csv"
    rows.to_csv(table, index=False)
    keycol = retrain(
        data=DataParams(format="csv", path=str(table)),
        train=TrainParams(epochs=20, width=16, lr=0.03, patience=0),
        registry=RegistryParams(model_name="keycol"),
        promote=anyway,
        progress=False,
    )
    assert keycol["metrics"]["test_accuracy"] > 0.85, keycol["metrics"]
    return read_prepared(dataset_path(digits["data_version"])).x["test"], table


@pytest.mark.slow
def test_lepton_explain_writes_a_map_per_digit_of_its_shape(trained, lepton_env, tmp_path):
    from effects.tracking.registry import load_alias
    from lepton_core.explain import attributions

    x = trained[0][:5, 0]  # (5, 8, 8) uint8 digits
    np.save(tmp_path / "digits.npy", x)
    r = run_cli(["explain", str(tmp_path / "digits.npy")], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    out = lepton_env[0] / "project" / "explain-v1"  # named after the champion's version
    assert r.stdout.splitlines() == [
        "explained       5 samples with lepton-digits v1 (Integrated Gradients, 32 steps)",
        "wrote           explain-v1/  (5 maps as PNG, all in attributions.npy)",
    ]
    attr = np.load(out / "attributions.npy")
    _, predictor = load_alias("lepton-digits", "champion")
    assert attr.shape == x.shape and np.allclose(attr, attributions(predictor, x), atol=1e-5)
    names = predictor.predict(x).names
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:04d}-{n}.png" for i, n in enumerate(names)]
    from PIL import Image

    assert Image.open(out / f"0000-{names[0]}.png").size == (128, 128)


@pytest.mark.slow
def test_lepton_explain_finds_the_one_column_a_table_model_reads(trained, lepton_env, tmp_path):
    import pandas as pd

    r = run_cli(["explain", "--model", "keycol", str(trained[1]), "--out", str(tmp_path / "why")], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    attr = pd.read_parquet(tmp_path / "why" / "attributions.parquet")
    assert list(attr.columns) == [f"f{i}" for i in range(5)] and len(attr) == 100  # --limit's default
    assert attr.abs().mean().idxmax() == KEY_COLUMN
    assert r.stdout.splitlines()[0].startswith("explained       the first 100 of 400 samples (--limit) with keycol v1")
    assert r.stdout.splitlines()[1].startswith(f"top features    {KEY_COLUMN} ")


@pytest.mark.slow
def test_lepton_explain_refuses_bad_input_in_one_line_and_writes_nothing(trained, lepton_env, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((2, 7, 7), np.uint8))
    np.save(tmp_path / "digits.npy", trained[0][:2])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        (["wrong.npy"], "error: samples of shape (2, 7, 7); the model reads (N, 1, 8, 8)"),
        (["99", "digits.npy"], "error: model 'lepton-digits' has no version '99'"),
        (["v1", "digits.npy"], "error: 'v1' is not a model version number"),
        (["digits.npy", "--out", str(tmp_path / "taken")], f"error: {tmp_path / 'taken'} already exists;"),
    ]
    for args, line in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
        r = run_cli(["explain", *[str(tmp_path / a) if a.endswith(".npy") else a for a in args], *out], lepton_env[1])
        assert r.returncode != 0 and r.stderr.strip().startswith(line), r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "new").exists()
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_v1_explain_on_the_served_champion(trained, tmp_path):
    from effects.tracking.registry import load_alias
    from lepton_core.explain import attributions
    from tests.platform.test_serve import Running

    x = trained[0][:3, 0]  # (3, 8, 8)
    _, predictor = load_alias("lepton-digits", "champion")
    with Running(tmp_path, ServeParams(max_explain_instances=3), token=TOKEN) as srv:
        body = json.dumps({"instances": x.tolist()}).encode()
        assert srv.request("POST", "/v1/explain", body)[0] == 401
        status, out = srv.request("POST", "/v1/explain", body, headers=BEARER)
        assert status == 200, out
        attr = np.array(out["attributions"])
        assert attr.shape == x.shape and out["version"] == "1"
        assert np.allclose(attr, attributions(predictor, x), atol=1e-5)
        four = json.dumps({"instances": trained[0][:4].tolist()}).encode()
        status, refused = srv.request("POST", "/v1/explain", four, headers=BEARER)
        assert (status, refused) == (413, {"error": "4 instances is over the explain limit of 3"})


def test_core_refusals_reach_the_command_as_lepton_errors():
    """What `lepton explain` turns into its one `error:` line is a LeptonError."""
    from lepton.cli.explain import _version_and_data

    with pytest.raises(LeptonError, match="expected \\[VERSION\\] DATA, got 3 arguments"):
        _version_and_data(["1", "a", "b"])
    assert _version_and_data(["data.npy"])[0] is None and _version_and_data(["7", "d.npy"])[0] == "7"
