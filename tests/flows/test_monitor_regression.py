"""The drift monitor on a regression champion, through the real commands: scikit-learn's
diabetes table trained, registered and promoted with `lepton retrain --params FILE`,
then one `lepton monitor` over an inbox of three batches made from the frozen test rows:

    shifted     bmi and bp moved by +2 standard deviations, no targets -> drift (the
                predicted values' distribution moved with them)
    corrupted   the test rows with their targets +80                   -> drift (RMSE)
    same        the test rows as they are                              -> no drift

and the drift event asks for a warm start (`monitor.retrain_init=champion`): the retrain
its trigger starts gets train.init_from=champion. One retrain and one monitor run, on the
session's Prefect server (no temporary server per command)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

MODEL = "diabetes-regressor"


def _cli(args: list[str], lepton_env, prefect_server: str):
    r = run_cli(args, {**lepton_env[1], "PREFECT_API_URL": prefect_server}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server, tmp_path_factory):
    from sklearn.datasets import load_diabetes

    base = tmp_path_factory.mktemp("diabetes")
    table = load_diabetes(as_frame=True).frame  # 442 rows, 10 numeric features, "target"
    table.to_csv(base / "diabetes.csv", index=False)
    params = {
        "data": {"format": "csv", "path": str(base / "diabetes.csv"), "label_column": "target", "task": "regression"},
        "train": {"epochs": 40, "patience": 10, "width": 64, "lr": 3e-3},
        "registry": {"model_name": MODEL, "experiment": "diabetes"},
        "monitor": {"min_rows": 50, "max_rmse_increase": 0.25, "retrain_init": "champion"},
    }
    (base / "params.yaml").write_text(yaml.safe_dump(params))
    result = _cli(
        ["retrain", "--params", str(base / "params.yaml"), "--json", "--no-progress"], lepton_env, prefect_server
    )["result"]
    assert result["decision"]["promoted"], result["decision"]
    return base, table, result


def _test_rows(data_version: str) -> pd.DataFrame:
    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    prepared = read_prepared(dataset_path(data_version))
    rows = pd.DataFrame(prepared.x["test"].astype(np.float64), columns=prepared.meta["feature_names"])
    return rows.assign(target=prepared.y["test"])


@pytest.fixture(scope="module")
def monitored(champion, lepton_env, prefect_server):
    base, table, result = champion
    test = _test_rows(result["data_version"])
    inbox = base / "inbox"
    inbox.mkdir()
    shifted = test.drop(columns=["target"])
    for col in ("bmi", "bp"):
        shifted[col] += 2 * table[col].std()
    shifted.to_csv(inbox / "shifted.csv", index=False)
    test.assign(target=test["target"] + 80).to_csv(inbox / "corrupted.csv", index=False)
    test.to_csv(inbox / "same.csv", index=False)
    args = ["monitor", "--params", str(base / "params.yaml"), "--set", f"monitor.inbox={inbox}", "--json"]
    out = _cli(args, lepton_env, prefect_server)
    by_name = {res["batch_id"].split(".csv-")[0]: res for res in out["results"]}
    assert set(by_name) == {"shifted", "corrupted", "same"}, out
    return out, by_name, result, len(test)


def test_shifted_inputs_drift_the_predicted_values(monitored):
    _, res, _, n = monitored
    shifted = res["shifted"]
    assert shifted["status"] == "drift", shifted["verdict"]
    assert "the distribution of predicted values drifted" in shifted["reasons"]
    assert {d["feature"] for d in shifted["drifted_features"]} >= {"bmi", "bp"}
    assert shifted["scores"]["prediction_drifted"] == 1.0
    assert "current_rmse" not in shifted["scores"]  # no targets in that batch
    assert shifted["rows"] == n and not shifted["accepted_for_training"]


def test_corrupted_targets_raise_the_rmse_over_the_champions_test_rmse(monitored):
    _, res, result, _ = monitored
    bad = res["corrupted"]
    assert bad["status"] == "drift", bad["verdict"]
    (reason,) = bad["reasons"]  # nothing but the error moved: inputs and predictions are the test rows'
    m = re.fullmatch(r"RMSE rose by (\d+)% \(([\d.]+) -> ([\d.]+); threshold 25%\)", reason)
    assert m, reason
    scores = bad["scores"]
    # the reference RMSE is the champion's test RMSE: the same rows and predictions
    assert scores["reference_rmse"] == pytest.approx(result["metrics"]["test_rmse"], rel=1e-5)
    assert scores["current_rmse"] > 1.25 * scores["reference_rmse"]
    assert int(m.group(1)) == round(100 * scores["rmse_increase"])
    assert float(m.group(2)) == pytest.approx(scores["reference_rmse"], abs=0.06)
    # Evidently's RegressionPreset ran on the labelled batch: its RMSE is the verdict's
    report = json.loads(open(bad["report_json"], encoding="utf-8").read())
    rmse = [x for x in report["metrics"] if x["config"]["type"].endswith(":RMSE")]
    assert rmse and rmse[0]["value"] == pytest.approx(scores["current_rmse"])
    assert "RMSE" in open(bad["report_html"], encoding="utf-8").read()


def test_the_test_rows_themselves_are_no_drift(monitored):
    _, res, _, n = monitored
    same = res["same"]
    assert same["status"] == "no drift", same["verdict"]
    assert same["scores"]["rmse_increase"] == pytest.approx(0.0, abs=1e-6)
    assert same["drifted_features"] == [] and same["rows"] == n
    assert same["accepted_for_training"]  # labelled: offered to the next retrain


def test_the_monitoring_runs_hold_the_rmse(monitored):
    from effects.tracking.runs import client

    _, res, _, _ = monitored
    run = client().get_run(res["corrupted"]["mlflow_run_id"])
    assert run.data.metrics["rmse_increase"] == pytest.approx(res["corrupted"]["scores"]["rmse_increase"])
    assert run.data.tags["lepton.monitor.status"] == "drift"


def test_the_drift_event_starts_a_warm_start_retrain(monitored):
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state
    from lepton.deploy import drift_trigger_parameters
    from lepton_core.params import Params
    from tests.platform.test_drift_trigger import _rendered

    out, res, _, _ = monitored
    assert out["event_emitted"] is True
    payload = monitor_state.last_event(get_settings())
    assert payload is not None and sorted(payload["batch_ids"]) == sorted(
        res[k]["batch_id"] for k in ("corrupted", "shifted")
    )
    assert payload["retrain_init"] == "champion"
    # the retrain deployment's drift trigger, fired by this payload
    deployed = Params().model_dump(mode="json")
    run_params = {**deployed, **_rendered(drift_trigger_parameters(deployed["train"]), payload)}
    assert Params(**{k: v for k, v in run_params.items() if k in deployed}).train.init_from == "champion"
