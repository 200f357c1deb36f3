"""The standard protocols of the model server: the Open Inference Protocol (/v2) and
MLflow's scoring protocol (/invocations), on stand-in models behind the real
`create_app`. In process for the shapes and the refusals; live (uvicorn on 127.0.0.1)
for the stock clients: tritonclient's HTTP client, and the request bodies of
`mlflow models serve --help` posted as they are."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lepton_core.errors import LeptonError
from lepton_core.params import ServeParams
from lepton_core.predictor import BasePredictor, Preprocessing

TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BLACK = [[0, 0], [0, 0]]
WHITE = [[255, 255], [255, 255]]


class _Sums(BasePredictor):
    """Three classes "a", "b", "c" over 2x2 uint8 images; logit k is k * the pixel sum."""

    preprocessing = Preprocessing(
        kind="image", input_shape=(1, 2, 2), dtype="uint8", scale=1 / 255, classes=("a", "b", "c")
    )

    def to_input(self, x):
        return torch.from_numpy(np.ascontiguousarray(self.check(x))).float() * self.preprocessing.scale

    def log_input(self, t):
        return t.numpy()

    def forward(self, t):
        s = t.flatten(1).sum(1, keepdim=True)  # (N, 1)
        return (s * torch.arange(3.0)).numpy().astype(np.float32)  # (N, 3)


class _Larger(BasePredictor):
    """A table of features "a" and "b"; the class is the name of the larger one (logits:
    the features themselves), so a column order mix-up shows in the labels."""

    preprocessing = Preprocessing(
        kind="tabular", input_shape=(2,), dtype="float32", scale=1.0, classes=("a", "b"), feature_names=("a", "b")
    )

    def to_input(self, x):
        return torch.from_numpy(np.ascontiguousarray(self.check(x)))

    def log_input(self, t):
        return t.numpy()

    def forward(self, t):
        return (t * 10).numpy().astype(np.float32)  # (N, 2)


class _Total(_Larger):
    """Regression over the same table: the value is a + b."""

    preprocessing = Preprocessing(
        kind="tabular",
        input_shape=(2,),
        dtype="float32",
        scale=1.0,
        classes=(),
        feature_names=("a", "b"),
        task="regression",
        target_mean=1.0,
        target_std=2.0,
    )

    def forward(self, t):
        return ((t.sum(1, keepdim=True) - 1.0) / 2.0).numpy().astype(np.float32)  # standardised (N, 1)


def _server(tmp_path, predictor: BasePredictor | None = None, token: str | None = None, **params):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:  # no registry: the stand-in model, or none at all
            if predictor is None:
                raise LeptonError("model 'm' has no @champion; run `lepton retrain` first")
            self.current = Loaded("3", "run-3", "data-3", predictor)
            return True

    serve = ServeParams(**{"max_instances": 4, "poll_seconds": 60, **params})
    return Stand("m", "champion", serve, get_settings(), token, tmp_path / "predictions")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


def _client(server) -> TestClient:
    from lepton.serving.app import create_app

    return TestClient(create_app(server))


def _post(c: TestClient, path: str, body, headers: dict | None = None, ctype: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post(path, content=data, headers={"Content-Type": ctype, **(headers or {})})


def _tensor(data, shape, datatype="UINT8", name="input") -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


# ---------------------------------------------------------------- /v2 in process
def test_v2_health_metadata_and_readiness(home):
    with _client(_server(home, _Sums(), token=TOKEN)) as c:
        # the health probes stay open, like /healthz and /readyz
        assert (c.get("/v2/health/live").status_code, c.get("/v2/health/live").json()) == (200, {"live": True})
        assert c.get("/v2/health/ready").json() == {"ready": True}
        # everything else takes the token
        for path in ("/v2", "/v2/models/m", "/v2/models/m/ready"):
            r = c.get(path)
            assert (r.status_code, r.json()) == (401, {"error": "missing or wrong bearer token"})
        assert c.get("/v2", headers=BEARER).json()["extensions"] == ["binary_tensor_data"]
        meta = c.get("/v2/models/m", headers=BEARER).json()
        assert meta == {
            "name": "m",
            "versions": ["3"],
            "platform": "python",
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 2, 2]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            ],
        }
        assert c.get("/v2/models/m/versions/3", headers=BEARER).json() == meta
        assert c.get("/v2/models/m/ready", headers=BEARER).json() == {"name": "m", "versions": ["3"], "ready": True}
        for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/m/versions/2"):
            r = c.get(path, headers=BEARER)
            assert r.status_code == 404 and set(r.json()) == {"error"}, r.text
        assert c.get("/v2/models/m/versions/2/ready", headers=BEARER).json() == {
            "error": "model 'm' version '2' is not loaded; this server serves 3"
        }
    with _client(_server(home, None)) as c:  # no model loads
        assert c.get("/v2/health/live").status_code == 200
        r = c.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})
        r = c.get("/v2/models/m/ready")
        assert r.status_code == 503 and "has no @champion" in r.json()["error"]
        assert c.post("/v2/repository/index").json() == [{"name": "m", "state": "UNAVAILABLE"}]


def test_v2_infer_answers_labels_names_and_probabilities_through_the_batcher(home):
    server = _server(home, _Sums())
    with _client(server) as c:
        body = {"id": "req-7", "inputs": [_tensor([0, 0, 0, 0, 255, 255, 255, 255], [2, 1, 2, 2])]}
        r = _post(c, "/v2/models/m/infer", body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model_name"] == "m" and out["model_version"] == "3" and out["id"] == "req-7"
        # the request's id for /v1/feedback
        fb = {"request_id": out["parameters"]["request_id"], "labels": [0, 2]}
        assert _post(c, "/v1/feedback", fb).json() == {"accepted": 2}
        by_name = {o["name"]: o for o in out["outputs"]}
        assert [o["name"] for o in out["outputs"]] == ["label", "class_name", "probabilities"]
        assert by_name["label"] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}
        assert by_name["class_name"]["data"] == ["a", "c"]
        probs = by_name["probabilities"]
        assert probs["shape"] == [2, 3] and probs["datatype"] == "FP32" and len(probs["data"]) == 6
        p = np.array(probs["data"]).reshape(2, 3)
        assert np.allclose(p.sum(1), 1, atol=1e-5) and np.allclose(p[0], 1 / 3, atol=1e-5) and p[1].argmax() == 2
        # nested data, grey images without the channel axis, a wider integer type, a version path
        body = {"inputs": [_tensor([BLACK, WHITE], [2, 2, 2], "INT64")], "outputs": [{"name": "label"}]}
        r = _post(c, "/v2/models/m/versions/3/infer", body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]}]
        assert "id" not in r.json()
        # the request's outputs, in its order
        body["outputs"] = [{"name": "probabilities"}, {"name": "class_name"}]
        assert [o["name"] for o in _post(c, "/v2/models/m/infer", body).json()["outputs"]] == [
            "probabilities",
            "class_name",
        ]
        text = c.get("/metrics").text
    # the same batcher, log and metrics as /v1/predict: 6 instances scored, 3 answers
    # counted (and the feedback's)
    assert "lepton_instances_total 6.0" in text and 'lepton_requests_total{code="200"} 4.0' in text
    import pandas as pd

    parts = [p for p in (home / "predictions").rglob("*.parquet") if "feedback" not in p.parts]
    assert sum(len(pd.read_parquet(p)) for p in parts) == 6


def test_v2_binary_tensors_in_and_out(home):
    x = np.array([BLACK, WHITE], dtype=np.uint8)[:, None]  # (2, 1, 2, 2)
    head = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 1, 2, 2], "datatype": "UINT8", "parameters": {"binary_data_size": 8}}
            ],
            "outputs": [
                {"name": "label", "parameters": {"binary_data": True}},
                {"name": "class_name", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    with _client(_server(home, _Sums())) as c:
        r = c.post(
            "/v2/models/m/infer",
            content=head + x.tobytes(),
            headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
        )
        assert r.status_code == 200, r.text
        n = int(r.headers["inference-header-content-length"])
        doc, rest = json.loads(r.content[:n]), r.content[n:]
        label, name, probs = doc["outputs"]
        assert label["parameters"] == {"binary_data_size": 16} and "data" not in label
        assert np.frombuffer(rest[:16], "<i8").tolist() == [0, 2]
        # BYTES: each element's length (uint32, little endian), then its bytes
        assert rest[16:] == b"\x01\x00\x00\x00a\x01\x00\x00\x00c" and name["parameters"]["binary_data_size"] == 10
        assert len(probs["data"]) == 6
        # the request's binary_data_output: every output binary
        head2 = json.loads(head)
        del head2["outputs"]
        head2["parameters"] = {"binary_data_output": True}
        h = json.dumps(head2).encode()
        r = c.post(
            "/v2/models/m/infer", content=h + x.tobytes(), headers={"Inference-Header-Content-Length": str(len(h))}
        )
        n = int(r.headers["inference-header-content-length"])
        sizes = [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:n])["outputs"]]
        assert sizes == [16, 10, 24] and len(r.content) == n + 50
        p = np.frombuffer(r.content[n + 26 :], "<f4").reshape(2, 3)
        assert p[1].argmax() == 2 and np.allclose(p.sum(1), 1, atol=1e-5)
        # binary parts that lie: a header length past the body or not a number, a size
        # that is not the shape's
        short = json.loads(head)
        short["inputs"][0]["parameters"]["binary_data_size"] = 7
        h7 = json.dumps(short).encode()
        for content, length, words in (
            (head + x.tobytes(), str(len(head) + 99), "is not within the body"),
            (head + x.tobytes(), "x", "is not within the body"),
            (h7 + x.tobytes()[:7], str(len(h7)), "of UINT8 takes 8 bytes; binary_data_size is 7"),
            (head + x.tobytes() + b"extra", str(len(head)), "5 bytes past the tensors' binary data"),
        ):
            r = c.post("/v2/models/m/infer", content=content, headers={"Inference-Header-Content-Length": length})
            assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
            assert words in r.json()["error"], r.json()["error"]


V2_BAD = [
    (
        "wrong datatype for the model",
        {"inputs": [_tensor([0.5] * 4, [1, 1, 2, 2], "FP32")]},
        400,
        "datatype FP32; the model reads UINT8",
    ),
    ("unknown datatype", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2], "FLOAT")]}, 400, "unknown datatype 'FLOAT'"),
    ("bytes", {"inputs": [_tensor(["a"] * 4, [1, 1, 2, 2], "BYTES")]}, 400, "datatype BYTES; the model reads UINT8"),
    ("floats in an integer tensor", {"inputs": [_tensor([0, 1.5, 0, 0], [1, 1, 2, 2])]}, 400, "must be integers"),
    ("strings in the data", {"inputs": [_tensor([0, "1", 0, 0], [1, 1, 2, 2])]}, 400, "must be numbers, not '1'"),
    ("booleans in the data", {"inputs": [_tensor([0, True, 0, 0], [1, 1, 2, 2])]}, 400, "must be numbers, not True"),
    (
        "shape does not match the data",
        {"inputs": [_tensor([0] * 5, [1, 1, 2, 2])]},
        400,
        "shape [1, 1, 2, 2] holds 4 values; the data has 5",
    ),
    ("shape not the model's", {"inputs": [_tensor([0] * 6, [1, 1, 2, 3])]}, 400, "samples of shape (1, 1, 2, 3)"),
    ("ragged data", {"inputs": [_tensor([[0, 0], [0]], [1, 1, 2, 2])]}, 400, "ragged"),
    (
        "out of range for the datatype",
        {"inputs": [_tensor([0, 0, 0, 256], [1, 1, 2, 2])]},
        400,
        "out of range for uint8",
    ),
    (
        "pixels over 255 in a wider type",
        {"inputs": [_tensor([0, 0, 0, 256], [1, 1, 2, 2], "INT32")]},
        400,
        "pixel values outside 0..255",
    ),
    ("negative size", {"inputs": [_tensor([], [-1, 1, 2, 2])]}, 400, "is not a list of sizes"),
    ("a size that is a boolean", {"inputs": [_tensor([0] * 4, [True, 1, 2, 2])]}, 400, "is not a list of sizes"),
    ("a size that is a float", {"inputs": [_tensor([0] * 4, [1.0, 1, 2, 2])]}, 400, "is not a list of sizes"),
    ("null in the data", {"inputs": [_tensor([0, 0, None, 0], [1, 1, 2, 2])]}, 400, "must be numbers, not None"),
    ("no batch", {"inputs": [_tensor([], [0, 1, 2, 2])]}, 400, "no instances"),
    ("too many instances", {"inputs": [_tensor([0] * 20, [5, 1, 2, 2])]}, 413, "5 instances is over the limit of 4"),
    (
        "unknown input name",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2], name="pixels")]},
        400,
        "unexpected input 'pixels'",
    ),
    ("two inputs", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])] * 2}, 400, "expected 1 input"),
    ("no data", {"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "UINT8"}]}, 400, "without data"),
    (
        "unknown output",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "outputs": [{"name": "logits"}]},
        400,
        "unknown output 'logits'",
    ),
    (
        "the classification extension",
        {
            "inputs": [_tensor([0] * 4, [1, 1, 2, 2])],
            "outputs": [{"name": "label", "parameters": {"classification": 2}}],
        },
        400,
        "the classification extension is not served",
    ),
    ("datatype a list", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2], ["UINT8"])]}, 400, "unknown datatype ['UINT8']"),
    ("datatype an object", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2], {"a": 1})]}, 400, "unknown datatype"),
    ("shape of strings", {"inputs": [_tensor([0] * 4, ["1", 1, 2, 2])]}, 400, "is not a list of sizes"),
    ("shape of booleans", {"inputs": [_tensor([0] * 4, [True, 1, 2, 2])]}, 400, "is not a list of sizes"),
    ("shape an object", {"inputs": [_tensor([0] * 4, {"a": 1})]}, 400, "is not a list of sizes"),
    ("name a list", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2], name=["input"])]}, 400, "unexpected input ['input']"),
    (
        "input parameters a list",
        {"inputs": [{**_tensor([0] * 4, [1, 1, 2, 2]), "parameters": [1]}]},
        400,
        "an input's parameters must be an object",
    ),
    (
        "request parameters a list",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "parameters": [1]},
        400,
        "the request's parameters must be an object",
    ),
    ("outputs not objects", {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "outputs": ["label"]}, 400, "outputs must"),
    (
        "output name a list",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "outputs": [{"name": ["label"]}]},
        400,
        "unknown output ['label']",
    ),
    (
        "output name an object",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "outputs": [{"name": {"a": 1}}]},
        400,
        "unknown output {'a': 1}",
    ),
    (
        "output parameters a list",
        {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])], "outputs": [{"name": "label", "parameters": [1]}]},
        400,
        "the parameters of output 'label' must be an object",
    ),
    ("not an object", [1, 2], 400, '{"inputs": [...]}'),
    ("id not a string", {"id": 7, "inputs": [_tensor([0] * 4, [1, 1, 2, 2])]}, 400, "id must be a string"),
    ("malformed JSON", b'{"inputs": [', 400, "malformed JSON"),
    ("nested too deeply", b"[" * 100_000, 400, "malformed JSON: nested too deeply"),
]


@pytest.mark.parametrize("body, status, words", [b[1:] for b in V2_BAD], ids=[b[0] for b in V2_BAD])
def test_every_malformed_v2_tensor_is_a_one_line_refusal_in_the_protocols_shape(home, body, status, words):
    with _client(_server(home, _Sums())) as c:
        r = _post(c, "/v2/models/m/infer", body)
    assert r.status_code == status and set(r.json()) == {"error"}, r.text
    assert words in r.json()["error"] and "\n" not in r.json()["error"], r.json()["error"]


def test_v2_refuses_an_unknown_model_and_a_version_not_loaded_and_waits_for_a_model(home):
    body = {"inputs": [_tensor([0] * 4, [1, 1, 2, 2])]}
    with _client(_server(home, _Sums(), token=TOKEN)) as c:
        r = _post(c, "/v2/models/other/infer", body, BEARER)
        assert (r.status_code, r.json()) == (404, {"error": "unknown model 'other'; this server serves 'm'"})
        r = _post(c, "/v2/models/m/versions/9/infer", body, BEARER)
        assert r.status_code == 404 and "version '9' is not loaded" in r.json()["error"]
        # the token first: without it, even an unknown model is a 401
        assert _post(c, "/v2/models/other/infer", body).status_code == 401
        assert 'lepton_requests_total{code="404"} 2.0' in c.get("/metrics").text
    with _client(_server(home, None)) as c:
        r = _post(c, "/v2/models/m/infer", body)
        assert r.status_code == 503 and "has no @champion" in r.json()["error"]


def test_v2_regression_answers_values_and_reads_float_tables(home):
    with _client(_server(home, _Total())) as c:
        meta = c.get("/v2/models/m").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}]
        assert meta["outputs"] == [{"name": "value", "datatype": "FP64", "shape": [-1]}]
        r = _post(c, "/v2/models/m/infer", {"inputs": [_tensor([[1, 2], [0.5, 0.25]], [2, 2], "FP64")]})
        assert r.status_code == 200, r.text
        (value,) = r.json()["outputs"]
        assert value["name"] == "value" and value["shape"] == [2] and np.allclose(value["data"], [3, 0.75])


def test_a_large_v2_body_is_decoded_off_the_event_loop(home, monkeypatch):
    """Over 64 KB, the JSON is decoded on a worker thread (the event loop keeps serving)."""
    import lepton.serving.protocols as protocols

    threads = []
    real = protocols._infer_request

    def spy(*a):
        threads.append(threading.current_thread().name)
        return real(*a)

    monkeypatch.setattr(protocols, "_infer_request", spy)
    with _client(_server(home, _Sums())) as c:
        small = {"inputs": [_tensor([1] * 4, [1, 1, 2, 2])]}
        large = {"id": "x" * 70_000, **small}
        assert _post(c, "/v2/models/m/infer", small).status_code == 200
        assert _post(c, "/v2/models/m/infer", large).status_code == 200
    assert threads[0] != threads[1]  # the small one on the loop's thread, the large one elsewhere


# ---------------------------------------------------------------- /invocations in process
def test_invocations_reads_every_mlflow_format_by_column_name(home):
    with _client(_server(home, _Larger())) as c:
        expected = {
            "predictions": [
                {
                    "label": 1,
                    "class_name": "b",
                    "probabilities": [pytest.approx(4.5e-5, abs=1e-6), pytest.approx(0.999955, abs=1e-6)],
                },
                {
                    "label": 0,
                    "class_name": "a",
                    "probabilities": [pytest.approx(0.999955, abs=1e-6), pytest.approx(4.5e-5, abs=1e-6)],
                },
            ]
        }
        for body in (
            {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [2, 1]]}},
            {"dataframe_split": {"columns": ["b", "a"], "index": [7, 8], "data": [[2, 1], [1, 2]]}},  # by name
            {"dataframe_split": {"data": [[1, 2], [2, 1]]}},  # no columns: the training order
            {"dataframe_records": [{"b": 2, "a": 1}, {"a": 2, "b": 1}]},
            {"instances": [{"a": 1, "b": 2}, {"a": 2, "b": 1}]},
            {"instances": [[1, 2], [2, 1]]},
            {"inputs": {"b": [2, 1], "a": [1, 2]}},
            {"inputs": [[1.0, 2.0], [2.0, 1.0]], "params": {"ignored": True}},
        ):
            r = _post(c, "/invocations", body)
            assert r.status_code == 200, (body, r.text)
            assert r.json() == expected, body
            assert r.headers["x-model-version"] == "3"
        fb = {"request_id": r.headers["x-request-id"], "labels": ["b", "a"]}
        assert _post(c, "/v1/feedback", fb).json() == {"accepted": 2}
        r = _post(c, "/invocations", b"b,a\n2,1\n1,2\n", ctype="text/csv")
        assert r.status_code == 200, r.text
        assert r.json() == expected
        r = _post(c, "/invocations", "\ufeffb,a\n2,1\n1,2\n".encode(), ctype="text/csv")  # a BOM, as Excel writes
        assert r.status_code == 200, r.text
        assert r.json() == expected


def test_a_float64_value_beyond_float32_is_refused_as_an_overflow_not_as_nan(home):
    with _client(_server(home, _Larger())) as c:
        r = _post(c, "/v2/models/m/infer", {"inputs": [_tensor([[1e300, 1.0]], [1, 2], "FP64")]})
        assert r.status_code == 400, r.text
        assert "beyond float32's range" in r.json()["error"] and "NaN" not in r.json()["error"], r.text
        r = _post(c, "/invocations", {"inputs": [[1e300, 1.0]]})
        assert r.status_code == 400 and "beyond float32's range" in r.json()["message"], r.text
        r = _post(c, "/invocations", b'{"inputs": [[NaN, 1.0]]}')
        assert r.status_code == 400 and "NaN or infinite" in r.json()["message"], r.text


def test_invocations_answers_a_regression_models_values(home):
    with _client(_server(home, _Total())) as c:
        r = _post(c, "/invocations", {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [0.5, 0.25]]}})
        assert r.status_code == 200, r.text
        values = [p["value"] for p in r.json()["predictions"]]
        assert list(r.json()) == ["predictions"] and np.allclose(values, [3, 0.75])


def test_invocations_reads_an_image_models_tensor(home):
    with _client(_server(home, _Sums())) as c:
        for key in ("inputs", "instances"):
            r = _post(c, "/invocations", {key: [[BLACK], [WHITE]]})
            assert r.status_code == 200, r.text
            assert [p["class_name"] for p in r.json()["predictions"]] == ["a", "c"]
        r = _post(c, "/invocations", {"dataframe_split": {"columns": ["x"], "data": [[1]]}})
        assert r.status_code == 400 and "dataframe_split is for table models" in r.json()["message"]


INVOCATIONS_BAD = [
    (
        "unknown column",
        {"dataframe_split": {"columns": ["a", "bb"], "data": [[1, 2]]}},
        400,
        "unknown column 'bb'; the model reads a, b",
    ),
    (
        "an extra column",
        {"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1, 2, 3]]}},
        400,
        "unknown column 'c'",
    ),
    ("missing column", {"dataframe_split": {"columns": ["a"], "data": [[1]]}}, 400, "missing columns: b"),
    ("a column twice", {"dataframe_split": {"columns": ["a", "b", "a"], "data": [[1, 2, 1]]}}, 400, "named twice"),
    ("unknown record key", {"dataframe_records": [{"a": 1, "z": 2}]}, 400, "unknown column 'z'"),
    ("records of different columns", {"dataframe_records": [{"a": 1, "b": 2}, {"a": 1}]}, 400, "same columns"),
    ("records that are rows", {"dataframe_records": [[1, 2]]}, 400, "must be a list of records"),
    ("split without data", {"dataframe_split": {"columns": ["a", "b"]}}, 400, "must be an object with data"),
    ("rows of the wrong width", {"inputs": [[1, 2, 3]]}, 400, "the model reads 2 columns"),
    ("strings", {"instances": [{"a": "t1", "b": [1, 2, 3]}]}, 400, "must be numbers, not 't1'"),
    ("NaN", b'{"inputs": [[NaN, 1]]}', 400, "NaN or infinite"),
    ("two formats", {"inputs": [[1, 2]], "instances": [[1, 2]]}, 400, "exactly one of"),
    ("no format", {"data": [[1, 2]]}, 400, "exactly one of"),
    ("a list", [[1, 2]], 400, "exactly one of"),
    ("malformed JSON", b'{"inputs": [[1, ', 400, "malformed JSON"),
    ("nested too deeply", b"[" * 100_000, 400, "nested too deeply"),
    ("too many instances", {"inputs": [[1, 2]] * 5}, 413, "5 instances is over the limit of 4"),
    ("no instances", {"inputs": []}, 400, "no instances"),
]


@pytest.mark.parametrize("body, status, words", [b[1:] for b in INVOCATIONS_BAD], ids=[b[0] for b in INVOCATIONS_BAD])
def test_every_bad_invocation_is_a_one_line_refusal_in_mlflows_shape(home, body, status, words):
    with _client(_server(home, _Larger())) as c:
        r = _post(c, "/invocations", body)
    assert r.status_code == status and set(r.json()) == {"error_code", "message"}, r.text
    assert words in r.json()["message"] and "\n" not in r.json()["message"], r.json()["message"]
    codes = {
        413: "RESOURCE_LIMIT_EXCEEDED",
        400: "BAD_REQUEST" if "exactly one of" in words else "INVALID_PARAMETER_VALUE",
    }
    assert r.json()["error_code"] == codes[status]


def test_invocations_content_types_token_and_probes(home):
    with _client(_server(home, _Larger(), token=TOKEN)) as c:
        body = {"inputs": [[1, 2]]}
        r = _post(c, "/invocations", body)
        assert (r.status_code, r.json()) == (401, {"error": "missing or wrong bearer token"})
        assert _post(c, "/invocations", body, BEARER, "application/json; charset=utf-8").status_code == 200
        r = _post(c, "/invocations", body, BEARER, "application/json; charset=latin-1")
        assert r.status_code == 415 and "UTF-8" in r.json()["message"]
        r = _post(c, "/invocations", body, BEARER, "text/plain")
        assert r.status_code == 415 and "send application/json or text/csv" in r.json()["message"]
        r = _post(c, "/invocations", b"a,b\n1,x\n", BEARER, "text/csv")
        assert r.status_code == 400 and "CSV rows must hold numbers" in r.json()["message"]
        for path in ("/ping", "/health"):  # mlflow models serve's probes, open
            assert c.get(path).status_code == 200
        assert 'lepton_requests_total{code="415"} 2.0' in c.get("/metrics").text
    with _client(_server(home, None)) as c:
        r = _post(c, "/invocations", {"inputs": [[1, 2]]})
        assert r.status_code == 503 and r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


def test_a_compressed_request_body_is_refused_with_a_one_line_415(home):
    import gzip

    with _client(_server(home, _Larger())) as c:
        body = gzip.compress(json.dumps({"inputs": [[1, 2]]}).encode())
        r = _post(c, "/invocations", body, {"Content-Encoding": "gzip"})
        assert r.status_code == 415 and "Content-Encoding 'gzip'" in r.json()["message"], r.text
        v2 = gzip.compress(json.dumps({"inputs": [_tensor([[1.0, 2.0]], [1, 2], "FP32")]}).encode())
        r = _post(c, "/v2/models/m/infer", v2, {"Content-Encoding": "gzip"})
        assert r.status_code == 415 and "not supported" in r.json()["error"], r.text
        r = _post(c, "/v1/predict", b"x", {"Content-Encoding": "deflate"})
        assert r.status_code == 415 and "\n" not in r.json()["error"], r.text
        assert _post(c, "/invocations", {"inputs": [[1, 2]]}, {"Content-Encoding": "identity"}).status_code == 200


def test_invocations_answers_as_mlflows_own_scoring_server(home, tmp_path, monkeypatch):
    """The same stand-in model as a pyfunc behind MLflow's scoring server (what `mlflow
    models serve` runs): the same bodies get the same predictions."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.pyfunc import scoring_server
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import Array

    class Pyfunc(mlflow.pyfunc.PythonModel):  # as effects/tracking/pyfunc_model.py answers
        def predict(self, context, model_input, params=None):
            p = _Larger().predict(model_input)
            return pd.DataFrame(
                {"label": p.labels, "class_name": p.names, "probabilities": [r.tolist() for r in p.probabilities]}
            )

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "a"), ColSpec("double", "b")]),
        outputs=Schema(
            [ColSpec("long", "label"), ColSpec("string", "class_name"), ColSpec(Array("float"), "probabilities")]
        ),
    )
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    # the scoring server marks the process as serving; the test's end restores it
    monkeypatch.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")
    mlflow.pyfunc.save_model(tmp_path / "pyfunc", python_model=Pyfunc(), signature=signature, pip_requirements=[])
    stock = TestClient(scoring_server.init(mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))))
    bodies = [
        {"dataframe_records": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 6, "b": 5}]},
        {"dataframe_split": {"columns": ["a", "b"], "index": [0, 1, 2], "data": [[1, 2], [3, 4], [6, 5]]}},
        {"dataframe_split": {"columns": ["b", "a"], "data": [[2, 1], [4, 3], [5, 6]]}},
        {"inputs": {"a": [1, 3, 6], "b": [2, 4, 5]}},
        {"instances": [{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": 6, "b": 5}]},
    ]
    with _client(_server(home, _Larger())) as ours:
        for body in bodies:
            theirs = _post(stock, "/invocations", body)
            mine = _post(ours, "/invocations", body)
            assert theirs.status_code == mine.status_code == 200, (body, theirs.text, mine.text)
            t, m = theirs.json()["predictions"], mine.json()["predictions"]
            assert list(theirs.json()) == list(mine.json()) == ["predictions"]
            assert [set(r) for r in t] == [set(r) for r in m]
            assert [(r["label"], r["class_name"]) for r in t] == [(r["label"], r["class_name"]) for r in m]
            assert np.allclose([r["probabilities"] for r in t], [r["probabilities"] for r in m], atol=1e-6)
        # both refuse a missing column with MLflow's error shape
        body = {"dataframe_split": {"columns": ["a"], "data": [[1]]}}
        theirs, mine = _post(stock, "/invocations", body), _post(ours, "/invocations", body)
        assert theirs.status_code == mine.status_code == 400
        assert set(theirs.json()) >= {"error_code", "message"} and set(mine.json()) == {"error_code", "message"}
        assert theirs.json()["error_code"] == mine.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        # and a body with two formats
        body = {"inputs": [[1, 2]], "instances": [[1, 2]]}
        theirs, mine = _post(stock, "/invocations", body), _post(ours, "/invocations", body)
        assert theirs.status_code == mine.status_code == 400
        assert theirs.json()["error_code"] == mine.json()["error_code"] == "BAD_REQUEST"


# ---------------------------------------------------------------- live, with the stock clients
class _Live:
    """create_app under uvicorn in a thread, on a free port of 127.0.0.1."""

    def __init__(self, server) -> None:
        import uvicorn

        from effects.runtime.procs import free_port
        from lepton.serving.app import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.uv = uvicorn.Server(
            uvicorn.Config(create_app(server), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.uv.run, daemon=True)

    def __enter__(self) -> _Live:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server did not get ready")

    def __exit__(self, *exc) -> None:
        self.uv.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()

    def post(self, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


def test_tritonclient_gets_labels_and_probabilities_from_a_live_server(home):
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    x = np.array([BLACK, WHITE, [[0, 0], [0, 1]]], dtype=np.uint8)[:, None]  # (3, 1, 2, 2)

    def auth() -> dict:  # a new dict each call: the client writes its binary header length into it
        return dict(BEARER)

    with _Live(_server(home, _Sums(), token=TOKEN)) as live:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{live.port}")
        try:
            assert client.is_server_live() and client.is_server_ready()  # open probes
            assert client.is_model_ready("m", headers=auth())
            assert not client.is_model_ready("m")  # the token guards the model
            meta = client.get_model_metadata("m", headers=auth())
            assert meta["inputs"] == [{"name": "input", "datatype": "UINT8", "shape": [-1, 1, 2, 2]}]
            assert client.get_server_metadata(headers=auth())["extensions"] == ["binary_tensor_data"]
            assert client.get_model_repository_index(headers=auth()) == [
                {"name": "m", "version": "3", "state": "READY"}
            ]

            # the client's defaults: binary input, every output binary
            inp = triton.InferInput("input", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            res = client.infer("m", [inp], headers=auth())
            assert res.as_numpy("label").tolist() == [0, 2, 2]
            assert res.as_numpy("class_name").tolist() == [b"a", b"c", b"c"]
            p = res.as_numpy("probabilities")
            assert p.shape == (3, 3) and p.dtype == np.float32 and np.allclose(p.sum(1), 1, atol=1e-5)
            assert res.get_response()["model_version"] == "3"

            # JSON both ways (binary_data=False), with an id and a chosen output
            inp.set_data_from_numpy(x, binary_data=False)
            outputs = [
                triton.InferRequestedOutput("probabilities", binary_data=False),
                triton.InferRequestedOutput("label", binary_data=False),
            ]
            res = client.infer("m", [inp], outputs=outputs, request_id="r-1", headers=auth())
            response = res.get_response()
            assert response["id"] == "r-1" and [o["name"] for o in response["outputs"]] == ["probabilities", "label"]
            assert res.as_numpy("label").tolist() == [0, 2, 2] and res.as_numpy("class_name") is None
            assert np.allclose(res.as_numpy("probabilities"), p, atol=1e-6)

            # refusals reach the client as its exception, with the server's one line
            with pytest.raises(InferenceServerException, match="unknown model 'other'"):
                client.infer("other", [inp], headers=auth())
            bad = triton.InferInput("input", [1, 1, 2, 2], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 1, 2, 2), np.float32))
            with pytest.raises(InferenceServerException, match="datatype FP32; the model reads UINT8"):
                client.infer("m", [bad], headers=auth())
        finally:
            client.close()


# `mlflow models serve --help`'s examples, as they are printed there (each a curl -d body)
MLFLOW_DOCS = {
    "dataframe_records": '{\n    "dataframe_records": [{"a":1, "b":2}, {"a":3, "b":4}, {"a":5, "b":6}]\n}',
    "dataframe_split": (
        '{\n    "dataframe_split": {"columns": ["a", "b"],\n                        "index": [0, 1, 2],\n'
        '                        "data": [[1, 2], [3, 4], [5, 6]]}\n}'
    ),
    "inputs": '{\n    "inputs": [[1, 2], [3, 4], [5, 6]]\n}',
    # the instances example holds a string column and an array column: a two-number
    # table refuses it with one line
    "instances": (
        '{\n    "instances": [\n        {"a": "t1", "b": [1, 2, 3]},\n        {"a": "t2", "b": [4, 5, 6]},\n'
        '        {"a": "t3", "b": [7, 8, 9]}\n    ]\n}'
    ),
}


def test_mlflows_documented_requests_against_a_live_server(home):
    with _Live(_server(home, _Larger())) as live:
        for key in ("dataframe_records", "dataframe_split", "inputs"):
            status, out = live.post("/invocations", MLFLOW_DOCS[key].encode())
            assert status == 200, (key, out)
            assert [p["label"] for p in out["predictions"]] == [1, 1, 1], key
            assert [p["class_name"] for p in out["predictions"]] == ["b", "b", "b"], key
            assert all(len(p["probabilities"]) == 2 for p in out["predictions"])
        status, out = live.post("/invocations", MLFLOW_DOCS["instances"].encode())
        assert (status, out) == (
            400,
            {"error_code": "INVALID_PARAMETER_VALUE", "message": "instances must be numbers, not 't1'"},
        )
        # the curl example's header as it is written, with a trailing semicolon
        status, out = live.post("/invocations", MLFLOW_DOCS["inputs"].encode(), {"Content-Type": "application/json;"})
        assert status == 200 and len(out["predictions"]) == 3


# ---------------------------------------------------------------- live, the real champion
@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from effects.data.dvc_store import dataset_path
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared
    from lepton_core.params import DataParams, TrainParams

    first = retrain(data=DataParams(), train=TrainParams(epochs=8, width=16, patience=3), progress=False)
    assert first["decision"]["promoted"]
    return first, read_prepared(dataset_path(first["data_version"]))


@pytest.mark.slow
def test_the_stock_clients_get_the_champions_answers(champion, tmp_path):
    """The digits champion from a real registry: tritonclient through /v2 and MLflow's
    `inputs` through /invocations get what /v1/predict answers, at the gate's accuracy."""
    import tritonclient.http as triton

    from effects.runtime.settings import get_settings
    from lepton.serving.server import ModelServer

    first, prepared = champion
    x, y = prepared.x["test"], prepared.y["test"]  # (N, 1, 8, 8) uint8, (N,)
    server = ModelServer("lepton-digits", "champion", ServeParams(), get_settings(), TOKEN, tmp_path / "predictions")
    with _Live(server) as live:
        status, v1 = live.post("/v1/predict", json.dumps({"instances": x.tolist()}).encode(), BEARER)
        assert status == 200, v1
        client = triton.InferenceServerClient(url=f"127.0.0.1:{live.port}")
        try:
            inp = triton.InferInput("input", list(x.shape), "UINT8")
            inp.set_data_from_numpy(x)
            res = client.infer("lepton-digits", [inp], headers=dict(BEARER))
        finally:
            client.close()
        labels = res.as_numpy("label")
        assert res.get_response()["model_version"] == first["version"]
        assert labels.tolist() == v1["labels"]
        assert float((labels == y).mean()) == pytest.approx(first["metrics"]["test_accuracy"], abs=1e-9)
        assert np.allclose(res.as_numpy("probabilities"), v1["probabilities"], atol=1e-5)
        assert res.as_numpy("class_name").astype(str).tolist() == v1["class_names"]

        status, out = live.post("/invocations", json.dumps({"inputs": x[:, 0].tolist()}).encode(), BEARER)
        assert status == 200, out
        assert [p["label"] for p in out["predictions"]] == v1["labels"]


def test_string_instances_are_refused_cheaply_on_both_protocols(home):
    """The body that drove /v1 to 4.4 GB (a long string, then 65,535 short ones): each
    protocol refuses it at the first string, with memory bounded by the body."""
    import tracemalloc

    strings = ["a" * 15000] + ["a"] * 65535
    bodies = {
        "/invocations": {"instances": strings},
        "/v2/models/m/infer": {"inputs": [_tensor(strings, [len(strings)], "UINT8")]},
    }
    with _client(_server(home, _Sums())) as c:
        for path, body in bodies.items():
            data = json.dumps(body).encode()
            tracemalloc.start()
            try:
                t0 = time.perf_counter()
                r = _post(c, path, data)
                elapsed = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert r.status_code == 400 and "must be numbers, not 'aaaa" in r.text, r.text
            assert peak < 16 * 2**20, f"{path}: {peak / 2**20:.0f} MB for a {len(data) / 1024:.0f} KB body"
            assert elapsed < 2, elapsed


def test_bodies_over_the_cap_are_refused_in_each_protocols_shape(home):
    """The same body limits as /v1 (`read_body`): over serve.max_body_mb is a 413 that
    closes the connection."""
    big = json.dumps({"inputs": [[1, 2]] * 200_000}).encode()  # about 2 MB
    with _client(_server(home, _Larger(), max_body_mb=1)) as c:
        r = _post(c, "/v2/models/m/infer", big)
        assert r.status_code == 413 and "over the 1 MB cap" in r.json()["error"], r.text
        r = _post(c, "/invocations", big)
        assert r.status_code == 413 and r.json()["error_code"] == "RESOURCE_LIMIT_EXCEEDED", r.text
        assert "over the 1 MB cap" in r.json()["message"] and r.headers["connection"] == "close"
