"""Shadow and canary, offline: `lepton compare --live` on a prediction log written
here (the champion's parts, a shadow's `shadow/` parts, a canary's rows, feedback with
a corrected label, an old part outside `--since`), with every figure known in advance;
`promote.mode: shadow` registering @challenger; and `lepton promote` judging the
challenger on live traffic (promoted, refused as worse, refused on too few pairs,
forced)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lepton_core.params import DataParams, PromoteParams, RegistryParams, TrainParams
from tests.conftest import run_cli

N = 200  # instances both the champion (v1) and the shadow (v2) scored: 100 requests of 2
LABELLED = 160  # the first 160 of them got a label
A_WRONG = set(range(10)) | set(range(180, 200))  # where v1 answers wrong
B_WRONG = set(range(10, 40))  # where v2 answers wrong


def _mcnemar_p(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


def _part(folder: Path, rel: str, version: str, rids, inst, answers, at: float | None = None) -> None:
    n = len(rids)
    when = pd.to_datetime(np.full(n, time.time() if at is None else at), unit="s", utc=True)
    df = pd.DataFrame(
        {
            "timestamp": when,
            "model_version": version,
            "request_id": list(rids),
            "instance": np.asarray(inst, dtype=np.int64),
            "prediction": np.asarray(answers, dtype=np.int64),
            "confidence": np.full(n, 0.9),
            "f_mean": np.zeros(n),
        }
    )
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(folder / rel, index=False)


def _feedback(folder: Path, rel: str, rids, inst, labels) -> None:
    (folder / "feedback").mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"request_id": list(rids), "instance": np.asarray(inst, np.int64), "label": labels})
    df["label"] = df["label"].astype(np.int64)
    df.to_parquet(folder / "feedback" / rel, index=False)


def write_shadow_log(
    folder: Path, n: int, labelled: int, a_wrong: set, b_wrong: set, champion: str = "1", shadow: str = "2"
) -> None:
    """The champion's rows in the log, the shadow's in shadow/ (same request ids and
    instances), labels for the first `labelled` instances; class y = index % 10, a wrong
    answer is y + 1."""
    idx = np.arange(n)
    rids, inst, y = [f"r{i // 2}" for i in idx], idx % 2, idx % 10
    a = np.where(np.isin(idx, list(a_wrong)), (y + 1) % 10, y)
    b = np.where(np.isin(idx, list(b_wrong)), (y + 1) % 10, y)
    _part(folder, f"20261201T000000-aaaaaaaa-n{n}.parquet", champion, rids, inst, a)
    _part(folder, f"shadow/20261201T000001-bbbbbbbb-n{n}.parquet", shadow, rids, inst, b)
    if labelled:
        _feedback(folder, "20261201T000010-cccccccc-n1.parquet", rids[:labelled], inst[:labelled], y[:labelled])


@pytest.fixture()
def live_log(tmp_path, monkeypatch):
    """The comparison's log: v1 the champion, v2 its shadow, v3 a canary on 50 other
    requests (labels on 40, 30 right), an old v2 part (10 days ago, all wrong), and a
    label for r0/0 first posted wrong, then corrected."""
    folder = tmp_path / "predlog"
    write_shadow_log(folder, N, LABELLED, A_WRONG, B_WRONG)
    canary = [f"c{i}" for i in range(50)]
    y = np.arange(50) % 10
    answers = np.array([(v if i < 30 else (v + 1) % 10) for i, v in enumerate(y)])
    _part(folder, "20261201T000003-eeeeeeee-n50.parquet", "3", canary, np.zeros(50), answers)
    _feedback(folder, "20261201T000011-ffffffff-n40.parquet", canary[:40], np.zeros(40), y[:40])
    old = [f"o{i}" for i in range(10)]
    _part(
        folder,
        "shadow/20261120T000000-gggggggg-n10.parquet",
        "2",
        old,
        np.zeros(10),
        np.ones(10),
        time.time() - 10 * 86400,
    )
    _feedback(folder, "20261120T000001-hhhhhhhh-n10.parquet", old, np.zeros(10), np.zeros(10))
    # r0/0 (true class 0): first labelled 5, then corrected to 0 (a later part)
    _feedback(folder, "20261201T000000-iiiiiiii-n1.parquet", ["r0"], [0], [5])
    _feedback(folder, "20261201T000020-jjjjjjjj-n1.parquet", ["r0"], [0], [0])
    monkeypatch.setenv("LEPTON_PREDICTION_LOG", str(folder))
    return folder


EXPECTED_PAIRED = {
    "instances": N,
    "agreement": 140 / 200,  # 60 pairs where exactly one is wrong
    "labelled": LABELLED,
    "a": {"accuracy": 150 / 160},
    "b": {"accuracy": 130 / 160},
    "paired_test": {
        "test": "McNemar exact (two-sided)",
        "only_a_right": 30,  # 10..39
        "only_b_right": 10,  # 0..9
        "both_right": 120,
        "both_wrong": 0,
        "p_value": _mcnemar_p(30, 10),
    },
}


def test_live_comparison_reads_main_shadow_and_feedback(lepton_env, live_log):
    from effects.serving.live_log import live_comparison

    r = live_comparison("1", "2", since_hours=24)
    assert r["task"] == "classification" and r["log"] == str(live_log) and r["since_hours"] == 24
    assert r["paired"] == EXPECTED_PAIRED
    assert r["a"] == {"instances": N, "labelled": LABELLED, "accuracy": 150 / 160}
    assert r["b"] == {"instances": N, "labelled": LABELLED, "accuracy": 130 / 160}
    # all of the log: the old shadow rows (10, labelled, all wrong) count for v2's own figures
    r = live_comparison("1", "2")
    assert r["paired"] == EXPECTED_PAIRED
    assert r["b"] == {"instances": N + 10, "labelled": LABELLED + 10, "accuracy": 130 / 170}
    # a canary answered other requests: no pair, each version on its own requests
    r = live_comparison("1", "3")
    assert r["paired"]["instances"] == 0 and r["paired"]["labelled"] == 0 and r["paired"]["paired_test"] is None
    assert r["b"] == {"instances": 50, "labelled": 40, "accuracy": 30 / 40}


def test_live_comparison_of_regression_rows(lepton_env, tmp_path, monkeypatch):
    from effects.serving.live_log import live_comparison

    folder = tmp_path / "predlog"
    keys = {"request_id": ["q0", "q0", "q1"], "instance": np.array([0, 1, 0], np.int64)}
    for rel, version, values in (("p.parquet", "5", [1.0, 2.0, 3.0]), ("shadow/p.parquet", "6", [1.5, 2.0, 5.0])):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        when = pd.to_datetime(np.full(3, time.time()), unit="s", utc=True)
        pd.DataFrame({"timestamp": when, "model_version": version, **keys, "f_age": 0.0, "value": values}).to_parquet(
            folder / rel, index=False
        )
    (folder / "feedback").mkdir()
    pd.DataFrame({**keys, "label": [1.0, 2.0, 4.0]}).to_parquet(folder / "feedback" / "f.parquet", index=False)
    monkeypatch.setenv("LEPTON_PREDICTION_LOG", str(folder))
    r = live_comparison("5", "6")
    assert r["task"] == "regression"
    p = r["paired"]
    assert p["instances"] == 3 and p["labelled"] == 3 and p["mean_abs_diff"] == pytest.approx(2.5 / 3)
    assert p["a"]["rmse"] == pytest.approx(math.sqrt(1 / 3)) and p["b"]["rmse"] == pytest.approx(math.sqrt(1.25 / 3))
    assert p["paired_test"]["a_closer"] == 1 and p["paired_test"]["b_closer"] == 0  # q0/1 and q1/0: ties
    assert r["b"] == {"instances": 3, "labelled": 3, "rmse": p["b"]["rmse"]}


def test_live_figures_for_regression_and_the_live_decision():
    from lepton_core.live import decide_live, live_figures

    def frame(answers):
        return pd.DataFrame({"request_id": ["q0", "q0", "q1", "q1"], "instance": [0, 1, 0, 1], "answer": answers})

    fb = pd.DataFrame({"request_id": ["q0", "q0", "q1"], "instance": [0, 1, 0], "label": [0.0, 0.0, 0.0]})
    r = live_figures(frame([1.0, 1.0, 1.0, 1.0]), frame([3.0, 0.0, 0.0, 9.0]), fb, regression=True)
    assert r["task"] == "regression"
    assert r["paired"]["instances"] == 4 and r["paired"]["mean_abs_diff"] == (2 + 1 + 1 + 8) / 4
    assert r["paired"]["labelled"] == 3
    assert r["paired"]["a"] == {"rmse": 1.0} and r["paired"]["b"] == {"rmse": math.sqrt(9 / 3)}
    t = r["paired"]["paired_test"]
    assert t["a_closer"] == 1 and t["b_closer"] == 2 and t["mean_sq_err_diff"] == pytest.approx((8 - 1 - 1) / 3)
    assert r["a"] == {"instances": 4, "labelled": 3, "rmse": 1.0}
    # the gate's semantics on live figures: too few pairs, a drop beyond the tolerance
    few = decide_live(r, PromoteParams(min_live_pairs=4))
    assert not few.promote and "only 3 labelled live requests" in few.reason and few.labelled_pairs == 3
    worse = decide_live(r, PromoteParams(min_live_pairs=3))
    assert not worse.promote and worse.reason.startswith("live RMSE 1.732 > champion 1")
    same = live_figures(frame([1.0, 1.0, 1.0, 1.0]), frame([1.0, 1.0, 1.0, 1.0]), fb, regression=True)
    assert decide_live(same, PromoteParams(min_live_pairs=3)).promote
    # a label so large that both RMSEs overflow: inf > inf is False, but nothing non-finite promotes
    huge = fb.assign(label=[0.0, 0.0, 1e200])
    bad = decide_live(
        live_figures(frame([1.0] * 4), frame([50.0] * 4), huge, regression=True), PromoteParams(min_live_pairs=3)
    )
    assert not bad.promote and "not finite" in bad.reason
    # classification: McNemar finds B worse even within a wide tolerance
    idx = np.arange(200)
    keys = {"request_id": [f"r{i}" for i in idx], "instance": np.zeros(200, np.int64)}
    a = pd.DataFrame({**keys, "answer": np.zeros(200, np.int64)})
    b = pd.DataFrame({**keys, "answer": np.where(idx < 40, 1, 0)})
    fb = pd.DataFrame({**keys, "label": np.zeros(200, np.int64)})
    d = decide_live(live_figures(a, b, fb, regression=False), PromoteParams(tolerance=0.5))
    assert not d.promote and d.reason.startswith("significantly worse than champion on live traffic (McNemar p=")
    assert d.champion_metric == 1.0 and d.challenger_metric == 0.8 and d.agreement == 0.8
    assert d.as_tags()["lepton.gate.live_labelled_pairs"] == "200"


# ---------------------------------------------------------------- through the command, on a registry
@pytest.fixture()
def four_versions(lepton_env):
    """lepton-digits v1-v4 (no models behind them: `compare --live` reads only the log);
    v1 is @champion."""
    from effects.runtime.settings import get_settings
    from effects.tracking import runs

    c = runs.client(get_settings())
    if not c.search_registered_models("name='lepton-digits'"):
        c.create_registered_model("lepton-digits")
        run = c.create_run(c.get_experiment_by_name("Default").experiment_id)
        for _ in range(4):
            c.create_model_version("lepton-digits", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        c.set_registered_model_alias("lepton-digits", "champion", "1")
    return lepton_env[1]


def test_compare_live_command(four_versions, live_log):
    env = {**four_versions, "LEPTON_PREDICTION_LOG": str(live_log)}
    r = run_cli(["compare", "--live", "@champion", "2", "--json", "--since", "24"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["registered_model"] == "lepton-digits" and out["paired"] == EXPECTED_PAIRED
    assert out["a"]["version"] == "1" and out["a"]["aliases"] == ["champion"] and out["b"]["version"] == "2"
    assert out["b"]["labelled"] == LABELLED and out["b"]["accuracy"] == 130 / 160
    r = run_cli(["compare", "--live", "1", "2"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"both scored      {N} instances; agreement 0.7000; {LABELLED} with a label" in r.stdout
    assert "A accuracy 0.9375   B accuracy 0.8125" in r.stdout
    assert "B on its own     210 instances, 170 with a label: accuracy 0.7647" in r.stdout
    # v4 never served: one line, no traceback
    r = run_cli(["compare", "--live", "1", "4"], env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "no request was scored by both 1 and 4" in line and "serve.shadow" in line
    r = run_cli(["compare", "--live", "1", "2", "--html", "x.html"], env)
    assert r.returncode != 0 and "--live" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- promotion on live traffic
LIVE = "lepton-live"
OPEN_GATE = PromoteParams(min_accuracy=0)  # the tiny model's test accuracy is no floor's business here


@pytest.fixture()
def same_model_versions(lepton_env):
    """lepton-live v1-v3: one tiny trained model registered three times, so the test
    split cannot tell them apart and only the live evidence decides."""
    from effects.data.dvc_store import version_dataset
    from effects.runtime.settings import get_settings
    from effects.tracking import runs, tags
    from lepton_core.params import Params
    from tasks.train import train

    c = runs.client(get_settings())
    data = version_dataset(DataParams())
    o = train.fn(data, Params(train=TrainParams(epochs=1, model="mlp", width=8, patience=0)), progress=False)
    c.create_registered_model(LIVE)
    for _ in range(3):
        c.create_model_version(
            LIVE, f"runs:/{o.run_id}/checkpoint", run_id=o.run_id, tags={tags.DATA_VERSION: data.version}
        )
    return c


def _aliases(c) -> dict[str, str]:
    return {k: str(v) for k, v in (c.get_registered_model(LIVE).aliases or {}).items()}


def test_promote_judges_the_challenger_on_live_traffic(same_model_versions, tmp_path, monkeypatch):
    from effects.serving.live_log import live_evidence
    from effects.tracking.registry import gate_record
    from effects.tracking.registry import promote_version as promote
    from effects.tracking.versions import gate_decision
    from lepton_core.errors import LeptonError

    def promote_version(*args, **kw):  # as the promote task calls it: live figures from the log
        return promote(*args, live_evidence=live_evidence, **kw)

    c = same_model_versions
    with pytest.raises(LeptonError, match="has no @challenger: name a version"):
        promote_version(LIVE, None, OPEN_GATE)
    assert promote_version(LIVE, "1", OPEN_GATE)["promoted"]  # nothing to beat: no live half
    # promote.mode shadow, from a retrain: v2 passes the gate and waits as @challenger
    r = promote_version(LIVE, "2", OPEN_GATE, challenger_only=True)
    assert r["promoted"] is False and r["challenger"] == "2" and "registered as @challenger" in r["reason"]
    assert _aliases(c) == {"champion": "1", "challenger": "2"}
    assert c.get_model_version(LIVE, "2").tags["lepton.gate.challenger"] == "true"
    assert gate_decision(c.get_model_version(LIVE, "2"))["decision"] == "challenger"

    def log(name: str, **kw) -> None:
        monkeypatch.setenv("LEPTON_PREDICTION_LOG", str(tmp_path / name))
        write_shadow_log(tmp_path / name, **kw)

    # too few labelled pairs (50 < promote.min_live_pairs 100): refused, says how to go on
    log("few", n=80, labelled=50, a_wrong=set(), b_wrong=set())
    r = promote_version(LIVE, None, OPEN_GATE)
    assert not r["promoted"] and r["live"]["labelled_pairs"] == 50 and r["live"]["pairs"] == 80
    assert "only 50 labelled live requests" in r["reason"] and "promote.min_live_pairs 100" in r["reason"]
    assert "--force" in r["reason"] and _aliases(c) == {"champion": "1", "challenger": "2"}
    # enough pairs, and v2 is worse on them (0.8 against 1.0): refused on the live half
    log("worse", n=200, labelled=200, a_wrong=set(), b_wrong=set(range(40)))
    r = promote_version(LIVE, None, OPEN_GATE)
    assert not r["promoted"] and r["reason"].startswith("live traffic: live accuracy 0.8000 < champion 1.0000")
    tags2 = c.get_model_version(LIVE, "2").tags
    assert tags2["lepton.gate.live_promote"] == "False" and tags2["lepton.gate.live_labelled_pairs"] == "200"
    assert tags2["lepton.gate.live_challenger_metric"] == "0.8" and tags2["lepton.gate.promote"] == "False"
    recorded = gate_record(c.get_model_version(LIVE, "2"))  # every live figure, in the description
    assert recorded["live_agreement"] == "0.8" and recorded["live_pairs"] == "200" and "challenger" not in recorded
    # as good live as the champion: promoted, and @challenger is spent
    log("good", n=200, labelled=150, a_wrong=set(range(5)), b_wrong={7})
    r = promote_version(LIVE, None, OPEN_GATE)
    assert r["promoted"] and not r["forced"] and r["live"]["promote"] and r["live"]["labelled_pairs"] == 150
    assert r["live"]["champion_metric"] == 145 / 150 and r["live"]["challenger_metric"] == 149 / 150
    assert _aliases(c) == {"champion": "2", "previous": "1"}
    tags2 = c.get_model_version(LIVE, "2").tags
    assert tags2["lepton.gate.live_promote"] == "True" and tags2["lepton.gate.promote"] == "True"
    # v3 as challenger with no live row at all: refused, then forced (recorded as such)
    assert promote_version(LIVE, "3", OPEN_GATE, challenger_only=True)["challenger"] == "3"
    log("none", n=20, labelled=20, a_wrong=set(), b_wrong=set(), champion="2", shadow="9")
    assert not promote_version(LIVE, None, OPEN_GATE)["promoted"]
    r = promote_version(LIVE, None, OPEN_GATE, force=True)
    assert r["promoted"] and r["forced"] and "forced over the gate: live traffic: only 0 labelled" in r["reason"]
    assert _aliases(c) == {"champion": "3", "previous": "2"}
    assert c.get_model_version(LIVE, "3").tags["lepton.gate.forced"] == "true"


# ---------------------------------------------------------------- the retrain flow and the command
@pytest.mark.slow
def test_retrain_in_shadow_mode_registers_a_challenger_that_lepton_promote_judges_live(
    lepton_env, prefect_server, tmp_path
):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from flows.retrain import retrain

    name = "lepton-shadow"
    train = TrainParams(epochs=2, width=16, seed=0)
    registry = RegistryParams(model_name=name)
    loose = {"min_accuracy": 0, "tolerance": 1.0}
    first = retrain(data=DataParams(), train=train, promote=PromoteParams(**loose), registry=registry, progress=False)
    assert first["decision"]["promoted"]
    second = retrain(
        data=DataParams(), train=train, promote=PromoteParams(**loose, mode="shadow"), registry=registry, progress=False
    )
    d = second["decision"]
    assert d["promoted"] is False and d["challenger"] == second["version"]
    c = runs.client(get_settings())
    aliases = {k: str(v) for k, v in (c.get_registered_model(name).aliases or {}).items()}
    assert aliases == {"champion": first["version"], "challenger": second["version"]}

    folder = tmp_path / "predlog"
    env = {**lepton_env[1], "LEPTON_PREDICTION_LOG": str(folder), "PREFECT_API_URL": prefect_server}
    args = ["promote", "--set", f"registry.model_name={name}", "--set", "promote.min_accuracy=0"]
    args += ["--set", "promote.tolerance=1.0"]
    write_shadow_log(folder, 40, 40, set(), set(), champion=first["version"], shadow=second["version"])
    r = run_cli(args, env, timeout=600)
    assert r.returncode == 3, (r.stdout, r.stderr[-3000:])
    assert "not promoted: live traffic: only 40 labelled live requests" in r.stdout
    write_shadow_log(folder, 120, 120, set(), set(), champion=first["version"], shadow=second["version"])
    r = run_cli(args, env, timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    assert r.stdout.startswith(f"v{second['version']} promoted: ") and "live accuracy 1.0000" in r.stdout
    assert str(c.get_model_version_by_alias(name, "champion").version) == second["version"]
