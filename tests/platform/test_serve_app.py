"""The model server's HTTP app without a registry: a stand-in model behind the real
`create_app` (FastAPI's TestClient runs its lifespan). Fast: the routes' refusals, the
one bearer-token check, the feedback body, the lifespan, and no deprecated FastAPI API."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lepton_core.errors import LeptonError
from lepton_core.params import ServeParams
from lepton_core.predictor import BasePredictor, Preprocessing

LEPTON_CODE = Path(__file__).resolve().parents[2] / "lepton"
TOKEN = "s3cret-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class _Sums(BasePredictor):
    """Three classes "a", "b", "c" over 2x2 uint8 images; logit k is k * the pixel sum."""

    preprocessing = Preprocessing(
        kind="image", input_shape=(1, 2, 2), dtype="uint8", scale=1 / 255, classes=("a", "b", "c")
    )

    def __init__(self, fail: bool = False):
        self.fail = fail

    def to_input(self, x):
        return torch.from_numpy(np.ascontiguousarray(self.check(x))).float() * self.preprocessing.scale

    def log_input(self, t):
        return t.numpy()

    def forward(self, t):
        if self.fail:
            raise RuntimeError("the model broke")
        s = t.flatten(1).sum(1, keepdim=True)  # (N, 1)
        return (s * torch.arange(3.0)).numpy().astype(np.float32)  # (N, 3)


def _server(tmp_path, token: str | None = None, loaded: bool = True, fail: bool = False):
    from effects.runtime.settings import get_settings
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:  # no registry: the stand-in model, or none at all
            if not loaded:
                raise LeptonError("model 'm' has no @champion; run `lepton retrain` first")
            self.current = Loaded("3", "run-3", "data-3", _Sums(fail))
            return True

    return Stand(
        "m", "champion", ServeParams(max_instances=4, poll_seconds=60), get_settings(), token, tmp_path / "predictions"
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


def _client(server, **kw) -> TestClient:
    from lepton.serving.app import create_app

    return TestClient(create_app(server), **kw)


def _post(c: TestClient, path: str, body, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return c.post(path, content=data, headers={"Content-Type": "application/json", **(headers or {})})


def test_the_lifespan_loads_the_model_runs_the_batcher_and_closes_the_log(home):
    server = _server(home)
    with _client(server) as c:
        assert c.get("/readyz").json() == {"ready": True, "version": "3"}
        r = _post(c, "/v1/predict", {"instances": [[[0, 0], [0, 0]], [[255, 255], [255, 255]]]})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["labels"] == [0, 2] and out["class_names"] == ["a", "c"] and out["version"] == "3"
        assert c.get("/v1/model").json()["classes"] == ["a", "b", "c"]
    assert not server.log._thread.is_alive()  # the shutdown half of the lifespan ran


def test_one_token_check_guards_every_v1_route_and_comes_first(home):
    server = _server(home, token=TOKEN)
    good = {"instances": [[[1, 2], [3, 4]]]}
    with _client(server) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for r in (
                _post(c, "/v1/predict", good, headers),
                c.get("/v1/model", headers=headers),
                _post(c, "/v1/feedback", {"request_id": "x", "labels": [0]}, headers),
                # the token before the body: a malformed body without it is still a 401
                _post(c, "/v1/feedback", b"{", headers),
                _post(c, "/v1/predict", b"{", headers),
            ):
                assert (r.status_code, r.json()) == (401, {"error": "missing or wrong bearer token"})
        for path in ("/healthz", "/readyz", "/metrics"):  # the probes and metrics stay open
            assert c.get(path).status_code == 200
        r = _post(c, "/v1/predict", good, BEARER)
        assert r.status_code == 200
        r = _post(c, "/v1/feedback", {"request_id": r.json()["request_id"], "labels": ["b"]}, BEARER)
        assert (r.status_code, r.json()) == (200, {"accepted": 1})
        assert c.get("/v1/model", headers=BEARER).json()["version"] == "3"
        assert 'lepton_requests_total{code="401"} 15.0' in c.get("/metrics").text


FEEDBACK = [
    ("malformed JSON", b'{"request_id": ', 400, "malformed JSON"),
    ("not UTF-8", b"\xff\xfe\xfa", 400, "malformed JSON"),
    ("not an object", [1, 2], 400, '"request_id"'),
    ("no request id", {"labels": [0]}, 400, '"request_id"'),
    ("request id not a string", {"request_id": 7, "labels": [0]}, 400, '"request_id"'),
    ("request id over 64 characters", {"request_id": "x" * 65, "labels": [0]}, 400, '"request_id"'),
    ("labels not a list", {"request_id": "x", "labels": "a"}, 400, '"labels"'),
    ("no labels", {"request_id": "x", "labels": []}, 400, '"labels"'),
    (
        "more labels than instances allowed",
        {"request_id": "x", "labels": ["zebra"] * 5},
        413,
        "5 labels is over the limit of 4",
    ),
    (
        "unknown class name",
        {"request_id": "x", "labels": ["a", "zebra"]},
        400,
        "label 'zebra' is neither a class index nor a class name",
    ),
    ("index out of range", {"request_id": "x", "labels": [3]}, 400, "label 3 is neither"),
    ("negative index", {"request_id": "x", "labels": [-1]}, 400, "label -1 is neither"),
    ("a boolean", {"request_id": "x", "labels": [True]}, 400, "label True is neither"),
    ("a float", {"request_id": "x", "labels": [1.0]}, 400, "label 1.0 is neither"),
    ("a list", {"request_id": "x", "labels": [[1]]}, 400, "label [1] is neither"),
]


@pytest.mark.parametrize("body, status, words", [f[1:] for f in FEEDBACK], ids=[f[0] for f in FEEDBACK])
def test_every_bad_feedback_body_is_a_one_line_refusal(home, body, status, words):
    with _client(_server(home)) as c:
        r = _post(c, "/v1/feedback", body)
        assert r.status_code == status and set(r.json()) == {"error"}, r.text
        assert words in r.json()["error"] and "\n" not in r.json()["error"]


def _issued(c: TestClient, instances: int = 1) -> str:
    """The request id the server answers a prediction of `instances` instances with."""
    r = _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]] * instances})
    assert r.status_code == 200, r.text
    request_id: str = r.json()["request_id"]
    return request_id


def test_feedback_takes_names_and_indices_and_ignores_other_keys(home):
    server = _server(home)
    with _client(server) as c:
        r = _post(c, "/v1/feedback", {"request_id": _issued(c, 4), "labels": ["c", 0, "b", 2], "note": "ignored"})
        assert (r.status_code, r.json()) == (200, {"accepted": 4})
        # any content type: the body is read as JSON whatever the header says, as before
        r = c.post(
            "/v1/feedback",
            content=json.dumps({"request_id": _issued(c), "labels": [1]}).encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert (r.status_code, r.json()) == (200, {"accepted": 1})
    import pandas as pd

    parts = sorted((home / "predictions" / "feedback").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(p) for p in parts])
    assert sorted(df["label"].tolist()) == [0, 1, 1, 2, 2]


def test_feedback_before_a_model_loads_and_when_it_cannot_be_stored(home, monkeypatch):
    with _client(_server(home, loaded=False)) as c:
        assert c.get("/readyz").status_code == 503
        # in the order clients have always seen: malformed JSON, then no model, then the shape
        assert _post(c, "/v1/feedback", b"{").json() == {"error": "malformed JSON"}
        for body in ({"request_id": "x", "labels": [0]}, {"labels": "not checked yet"}):
            r = _post(c, "/v1/feedback", body)
            assert (r.status_code, r.json()) == (503, {"error": "no model loaded yet"})
        r = c.get("/v1/model")
        assert r.status_code == 503 and "has no @champion" in r.json()["error"]
        assert _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}).json() == {"error": "no model loaded yet"}

    server = _server(home)

    def full_disk(request_id, labels):
        raise OSError("neither the prediction log nor its spool would take the feedback")

    monkeypatch.setattr(server.log, "add_feedback", full_disk)
    with _client(server) as c:
        r = _post(c, "/v1/feedback", {"request_id": _issued(c), "labels": [0]})
        assert (r.status_code, r.json()) == (503, {"error": "feedback not stored (OSError)"})


def test_an_unexpected_error_is_a_one_line_500_and_counted(home):
    with _client(_server(home, fail=True), raise_server_exceptions=False) as c:
        r = _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]})
        assert (r.status_code, r.json()) == (500, {"error": "internal error (RuntimeError)"})
        assert 'lepton_requests_total{code="500"} 1.0' in c.get("/metrics").text


def test_unknown_routes_and_methods_answer_in_the_one_error_shape_and_are_counted(home):
    with _client(_server(home)) as c:
        r = c.get("/v1/nope")
        assert (r.status_code, r.json()) == (404, {"error": "Not Found"})
        r = c.get("/v1/predict")  # a POST route
        assert (r.status_code, r.json()) == (405, {"error": "Method Not Allowed"})
        assert "POST" in r.headers["allow"]
        r = c.delete("/invocations")  # past the hot path, through the router
        assert (r.status_code, r.json()) == (405, {"error": "Method Not Allowed"})
        text = c.get("/metrics").text
        assert _sample(text, "lepton_requests_total", code="404") == 1
        assert _sample(text, "lepton_requests_total", code="405") == 2


def test_no_deprecation_warning_from_lepton_code(home):
    """FastAPI's `on_event` is deprecated (the lifespan replaces it); nothing the
    server's own code calls may warn. (Run this file with -W error::DeprecationWarning
    too.)"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _client(_server(home, token=TOKEN)) as c:
            assert _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}, BEARER).status_code == 200
    ours = [
        w
        for w in caught
        if issubclass(w.category, DeprecationWarning) and Path(w.filename).resolve().is_relative_to(LEPTON_CODE)
    ]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (labels in any order)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_metrics_time_errors_too_and_show_the_process_and_the_loaded_model(home):
    """What Prometheus's rules read: the latency of refusals and errors beside
    answers (by route and status), whether a model is loaded, and the server's own
    CPU seconds and memory (what its predictions cost)."""
    with _client(_server(home, token=TOKEN), raise_server_exceptions=False) as c:
        for _ in range(3):
            assert _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}, BEARER).status_code == 200
        assert _post(c, "/v1/predict", {"instances": "nope"}, BEARER).status_code == 400
        assert _post(c, "/v1/predict", {"instances": [[[1, 2], [3, 4]]]}).status_code == 401
        assert c.get("/nowhere").status_code == 404
        text = c.get("/metrics").text
    assert _sample(text, "lepton_http_request_seconds_count", route="/v1/predict", code="200") == 3
    assert _sample(text, "lepton_http_request_seconds_count", route="/v1/predict", code="400") == 1
    assert _sample(text, "lepton_http_request_seconds_count", route="/v1/predict", code="401") == 1
    assert _sample(text, "lepton_http_request_seconds_count", route="other", code="404") == 1  # no series per path
    assert _sample(text, "lepton_model_loaded") == 1
    assert _sample(text, "process_cpu_seconds_total") > 0
    assert _sample(text, "process_resident_memory_bytes") > 10 * 2**20


def test_metrics_say_no_model_is_loaded_when_none_loads(home):
    with _client(_server(home, loaded=False)) as c:
        assert _sample(c.get("/metrics").text, "lepton_model_loaded") == 0
