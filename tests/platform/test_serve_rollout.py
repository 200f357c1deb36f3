"""Shadow and canary on the model server's real app (stand-in models, no registry):
the canary's share and its stickiness, the shadow's rows beside the champion's, and
a shadow that is slow, raises or never loads costing the answers nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from lepton_core.errors import LeptonError
from lepton_core.params import ServeParams
from tests.platform.test_serve_app import _Sums

DIGIT = {"instances": [[[10, 20], [30, 40]]]}


class _Reversed(_Sums):
    """The same classes, the other way round: logit k is (2 - k) * the pixel sum."""

    def __init__(self, fail: bool = False, sleep: float = 0.0):
        super().__init__(fail)
        self.sleep = sleep

    def forward(self, t):
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError("the shadow broke")
        s = t.flatten(1).sum(1, keepdim=True)
        return (s * (2 - torch.arange(3.0))).numpy().astype(np.float32)


def _app(tmp_path, monkeypatch, second=None, load_fails: bool = False, **serve):
    """The app of a server whose champion is version 3 (_Sums) and whose other alias
    is version 4 (`second`)."""
    from effects.runtime.settings import get_settings
    from lepton.serving import rollout as serve_rollout
    from lepton.serving.app import create_app
    from lepton.serving.core import Loaded
    from lepton.serving.server import ModelServer

    class Stand(ModelServer):
        def refresh(self) -> bool:
            self.current = Loaded("3", "run-3", "data-3", _Sums())
            return True

    def load_alias(server, alias, current):
        if load_fails:
            raise LookupError(f"model 'm' has no @{alias}")
        return None if current is not None else Loaded("4", "run-4", "data-3", second or _Reversed())

    monkeypatch.setattr(serve_rollout, "load_alias", load_alias)
    params = ServeParams(poll_seconds=60, log_flush_seconds=0.2, **serve)
    server = Stand("m", "champion", params, get_settings(), None, tmp_path / "predictions")
    return server, TestClient(create_app(server))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    return tmp_path


def _parts(folder) -> pd.DataFrame:
    files = sorted(folder.glob("*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files]) if files else pd.DataFrame()


def test_a_canary_share_of_0_2_answers_a_fifth_of_1000_requests(home, monkeypatch):
    server, client = _app(home, monkeypatch, canary={"alias": "challenger", "share": 0.2})
    with client as c:
        versions = Counter(c.post("/v1/predict", json=DIGIT).json()["version"] for _ in range(1000))
        metrics = c.get("/metrics").text
    assert set(versions) == {"3", "4"}
    assert 150 <= versions["4"] <= 250, versions  # 20% ± 5%
    assert f"lepton_canary_answers_total {float(versions['4'])}" in metrics
    log = _parts(home / "predictions")  # the canary's answers are served traffic: the main log
    assert Counter(log["model_version"].astype(str)) == versions


def test_a_request_key_sticks_to_one_version(home, monkeypatch):
    server, client = _app(home, monkeypatch, canary={"alias": "challenger", "share": 0.5})
    with client as c:
        seen = {}
        for k in range(40):
            key = f"customer-{k}"
            got = {
                c.post("/v1/predict", json=DIGIT, headers={"X-Request-Key": key}).json()["version"] for _ in range(5)
            }
            assert len(got) == 1, (key, got)
            seen[key] = got.pop()
    assert set(seen.values()) == {"3", "4"}  # both versions among 40 keys at a share of 0.5


def test_the_shadow_scores_the_same_requests_into_its_own_log(home, monkeypatch):
    server, client = _app(home, monkeypatch, shadow="challenger")
    with client as c:
        answers = [c.post("/v1/predict", json=DIGIT).json() for _ in range(30)]
        deadline = time.monotonic() + 10
        while server.rollout.shadow_scored._value.get() < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert {a["version"] for a in answers} == {"3"}  # the shadow never answers
    assert {a["labels"][0] for a in answers} == {2}
    main, shadow = _parts(home / "predictions"), _parts(home / "predictions" / "shadow")
    assert set(main["model_version"].astype(str)) == {"3"} and set(shadow["model_version"].astype(str)) == {"4"}
    assert set(shadow["request_id"]) == set(main["request_id"]) == {a["request_id"] for a in answers}
    assert set(shadow["prediction"]) == {0}  # its own answer, beside the champion's 2
    # the shadow's rows carry its answers, not the input's features (no window reads them)
    assert {"prediction", "confidence", "instance", "timestamp"} <= set(shadow.columns)
    assert not [c for c in shadow.columns if c.startswith("f_")] and [c for c in main.columns if c.startswith("f_")]
    # the monitor's windows read the main log only (parts at the top level)
    assert not list((home / "predictions").glob("shadow*.parquet"))


def test_a_shadow_share_scores_that_share(home, monkeypatch):
    server, client = _app(home, monkeypatch, shadow="challenger", shadow_share=0.25)
    with client as c:
        for _ in range(400):
            c.post("/v1/predict", json=DIGIT)
    shadow = _parts(home / "predictions" / "shadow")
    assert 60 <= len(shadow) <= 140, len(shadow)  # 25% of 400 = 100, sampled by request id


@pytest.mark.parametrize("shadow", ["slow", "raises", "never loads"])
def test_a_broken_shadow_costs_the_answers_nothing(home, monkeypatch, shadow):
    import lepton.serving.rollout as rollout

    second = {"slow": _Reversed(sleep=0.5), "raises": _Reversed(fail=True)}.get(shadow)
    monkeypatch.setattr(rollout, "SHADOW_QUEUE", 100)  # 300 requests fill it while the slow shadow scores few
    # one instance per forward pass: a 0.5 s shadow scores 2 requests a second, far fewer than are answered
    server, client = _app(
        home, monkeypatch, second, load_fails=shadow == "never loads", shadow="challenger", max_batch=1
    )
    with client as c:
        assert c.get("/readyz").status_code == 200
        t0 = time.perf_counter()
        codes = [c.post("/v1/predict", json=DIGIT).status_code for _ in range(300)]
        took = time.perf_counter() - t0
        metrics = c.get("/metrics").text
    assert codes == [200] * 300
    # a 0.5 s shadow pass per batch would cost minutes if the answers waited on it
    assert took < 60, took
    if shadow == "slow":
        assert "lepton_shadow_dropped_requests_total 0.0" not in metrics  # its queue filled and it skipped
    if shadow == "raises":
        assert "lepton_shadow_errors_total 0.0" not in metrics
    if shadow == "never loads":
        assert server.rollout.shadow.load_error and "no @challenger" in server.rollout.shadow.load_error


def test_a_shadow_pass_that_hangs_holds_up_neither_the_answers_nor_the_shutdown(home, monkeypatch):
    server, client = _app(home, monkeypatch, _Reversed(sleep=20), shadow="challenger")
    with client as c:
        t0 = time.perf_counter()
        assert [c.post("/v1/predict", json=DIGIT).status_code for _ in range(20)] == [200] * 20
        assert time.perf_counter() - t0 < 10
        time.sleep(0.3)  # a round has begun its 20 s pass
        stopping = time.perf_counter()
    assert time.perf_counter() - stopping < 10  # the app stopped without waiting for the pass
    shadow = [t for t in threading.enumerate() if t.name == "shadow"]
    assert shadow and all(t.daemon for t in shadow)  # and Python's exit will not wait for it either


def test_canary_and_shadow_params_are_checked(home):
    from lepton_core.params import parse_params

    with pytest.raises(LeptonError):
        parse_params({"serve": {"canary": {"alias": "challenger", "share": 1.5}}})
    with pytest.raises(LeptonError):
        parse_params({"serve": {"shadow_share": 0}})
    p = parse_params({"serve": {"canary": {"alias": "challenger", "share": 0.2}, "shadow": "challenger"}})
    assert p.serve.canary.share == 0.2 and p.serve.shadow == "challenger"


def test_an_alias_that_does_not_exist_or_goes_away_is_said_not_silent(home, monkeypatch, capsys):
    server, client = _app(home, monkeypatch, load_fails=True, shadow="nosuch", canary={"alias": "gone", "share": 0.5})
    with client as c:
        model = c.get("/v1/model").json()
        assert model["shadow"] == {"alias": "nosuch", "version": None, "error": "model 'm' has no @nosuch"}
        assert model["canary"]["alias"] == "gone" and model["canary"]["version"] is None
        assert {c.post("/v1/predict", json=DIGIT).json()["version"] for _ in range(20)} == {"3"}
    err = capsys.readouterr().err
    assert "warning: serve.shadow @nosuch: model 'm' has no @nosuch" in err
    assert "warning: serve.canary @gone: model 'm' has no @gone" in err


def test_a_shadow_whose_alias_is_removed_stops(home, monkeypatch):
    from lepton.serving import rollout as serve_rollout

    server, client = _app(home, monkeypatch, shadow="challenger")
    with client as c:
        assert c.get("/v1/model").json()["shadow"]["version"] == "4"

        def gone(server, alias, current):
            raise LookupError(f"model 'm' has no @{alias}")

        monkeypatch.setattr(serve_rollout, "load_alias", gone)  # `lepton promote` took @challenger away
        server.rollout.refresh()
        assert c.get("/v1/model").json()["shadow"] == {
            "alias": "challenger",
            "version": None,
            "error": "model 'm' has no @challenger",
        }
        before = server.rollout.shadow_scored._value.get()
        for _ in range(10):
            assert c.post("/v1/predict", json=DIGIT).status_code == 200
        time.sleep(0.3)
        assert (
            server.rollout.shadow_scored._value.get() == before
        )  # no shadow scoring with a version it no longer names


def test_a_version_in_the_v2_url_pins_the_answer_to_it(home, monkeypatch):
    server, client = _app(home, monkeypatch, canary={"alias": "challenger", "share": 1.0})
    body = {"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "UINT8", "data": [10, 20, 30, 40]}]}
    with client as c:
        assert c.post("/v2/models/m/infer", json=body).json()["model_version"] == "4"  # the canary takes all
        assert c.post("/v2/models/m/versions/3/infer", json=body).json()["model_version"] == "3"
        assert c.post("/v2/models/m/versions/4/infer", json=body).json()["model_version"] == "4"
        r = c.post("/v2/models/m/versions/9/infer", json=body)
        assert r.status_code == 404 and "not loaded" in r.json()["error"]


def test_the_canarys_requests_count_against_max_queue(home, monkeypatch):
    server, client = _app(home, monkeypatch, canary={"alias": "challenger", "share": 1.0}, max_queue=4)
    with client as c:
        assert c.post("/v1/predict", json=DIGIT).status_code == 200
        server._canary_waiting = 4  # four instances in the canary's passes already
        r = c.post("/v1/predict", json=DIGIT)
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"]
        server._canary_waiting = 0
        assert c.post("/v1/predict", json=DIGIT).status_code == 200
