"""effects.monitoring.drift_report for a regression model: numeric drift of the predicted
value, Evidently 0.7's RegressionPreset on labelled batches, RMSE/MAE/R2 on both frames.

Four small reports (300 rows x 3 features) run once per module and are shared (about 15 s
on two cores, Evidently's import included)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest

from effects.monitoring.drift_report import DriftResult, run_drift_report

FEATURES = ["f_a", "f_b", "f_c"]
WEIGHTS = np.array([3.0, -2.0, 1.0])
N = 300


def frame(seed: int, n: int = N, shift: float = 0.0, noise: float = 2.0, labelled: bool = True) -> pd.DataFrame:
    """Features ~ N(0, 1) (the first two N(shift, 1)); the model predicts 50 + x.w, the
    truth is that plus N(0, noise)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, :2] += shift
    df = pd.DataFrame(x, columns=FEATURES)
    df["value"] = 50.0 + x @ WEIGHTS
    if labelled:
        df["label"] = df["value"] + rng.normal(scale=noise, size=n)
    return df


def report(ref: pd.DataFrame, cur: pd.DataFrame, out, name: str) -> DriftResult:
    return run_drift_report(
        ref, cur, FEATURES, out / name, prediction_column="value", title=f"regression {name}", regression=True
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, DriftResult]:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during a drift report: {args!r}")

    base = tmp_path_factory.mktemp("drift-regression")
    ref = frame(seed=1)
    nan_cur = frame(seed=6)
    nan_cur.loc[:29, "label"] = np.nan  # labels that have not arrived yet
    scenarios = {
        "same": (ref, frame(seed=2)),
        "shifted": (ref, frame(seed=3, shift=2.0, labelled=False)),
        "degraded": (ref, frame(seed=4, noise=6.0)),
        "nan": (ref, nan_cur),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        return {name: report(r, c, base, name) for name, (r, c) in scenarios.items()}


def _json(res: DriftResult) -> dict:
    return json.loads(res.json_path.read_text(encoding="utf-8"))


def _metrics_of_type(payload: dict, type_name: str) -> list[dict]:
    return [m for m in payload["metrics"] if m["config"]["type"].endswith(":" + type_name)]


def test_same_distribution_is_no_drift_and_quality_holds(reports):
    res = reports["same"]
    assert res.share_drifted <= 1 / 3
    # the predicted value is tested as a number, with Evidently's default test
    assert res.prediction["method"] == "K-S p_value" and res.prediction["threshold"] == 0.05
    assert res.prediction["drifted"] is False
    assert res.confidence is None
    q = res.quality
    assert q["reference_rmse"] == pytest.approx(2.0, rel=0.15) and q["current_rmse"] == pytest.approx(2.0, rel=0.15)
    assert abs(q["rmse_increase"]) < 0.15
    assert q["rows_labelled_reference"] == q["rows_labelled_current"] == N
    assert "accuracy_drop" not in q
    assert res.data_quality["missing_share"] == {c: 0.0 for c in FEATURES + ["value", "label"]}


def test_shifted_inputs_drift_the_features_and_the_predicted_values(reports):
    res = reports["shifted"]
    assert res.columns["f_a"]["drifted"] and res.columns["f_b"]["drifted"]
    assert res.columns["f_a"]["score"] < 1e-6 and res.columns["f_b"]["score"] < 1e-6
    assert res.columns["f_c"]["drifted"] is False
    assert res.share_drifted == sum(v["drifted"] for v in res.columns.values()) / len(FEATURES)
    # 50 + 3a - 2b: a shift of both by 2 moves the mean prediction by 2, about a third of its spread
    assert res.prediction["drifted"] is True and res.prediction["score"] < 0.05
    assert res.quality is None


def test_noisier_truth_raises_the_rmse_as_evidently_reports_it(reports):
    res = reports["degraded"]
    q = res.quality
    assert q["current_rmse"] == pytest.approx(6.0, rel=0.15)
    assert q["rmse_increase"] == pytest.approx(q["current_rmse"] / q["reference_rmse"] - 1)
    assert q["rmse_increase"] > 1.0
    assert q["current_r2"] < q["reference_r2"] and q["current_mae"] > q["reference_mae"]
    assert res.prediction["drifted"] is False  # the model answers as before: only the truth moved
    payload = _json(res)
    # Evidently's RegressionPreset ran on the labelled frames: its RMSE (current frame) is ours
    (rmse,) = _metrics_of_type(payload, "RMSE")
    (r2,) = _metrics_of_type(payload, "R2Score")
    assert rmse["value"] == pytest.approx(q["current_rmse"])
    assert r2["value"] == pytest.approx(q["current_r2"])
    assert _metrics_of_type(payload, "MAE") and _metrics_of_type(payload, "MeanError")
    assert _metrics_of_type(payload, "Accuracy") == []
    # and its tests compare them with the reference's (a failed RMSE test in the report)
    rmse_tests = [t for t in payload["tests"] if t["name"].startswith("RMSE")]
    assert rmse_tests and rmse_tests[0]["status"] == "FAIL"


def test_the_html_shows_the_regression_quality(reports):
    html = reports["degraded"].html_path.read_text(encoding="utf-8")
    assert "<title>regression degraded</title>" in html
    assert "RMSE" in html and "Mean Absolute Error" in html
    assert reports["degraded"].html_path.parent.joinpath("report.json").is_file()
    summary = _json(reports["degraded"])["summary"]
    assert summary["quality"]["current_rmse"] == reports["degraded"].quality["current_rmse"]


def test_an_unlabelled_batch_has_no_quality_and_no_regression_preset(reports):
    res = reports["shifted"]
    assert res.quality is None
    assert _metrics_of_type(_json(res), "RMSE") == []
    assert "label" not in res.data_quality["missing_share"]


def test_missing_labels_leave_the_preset_out_but_not_the_quality(reports):
    res = reports["nan"]
    q = res.quality
    assert q["rows_labelled_current"] == N - 30 and q["rows_labelled_reference"] == N
    assert abs(q["rmse_increase"]) < 0.2
    assert res.data_quality["missing_share"]["label"] == pytest.approx(30 / N)
    # Evidently's regression metrics fail on nulls
    assert _metrics_of_type(_json(res), "RMSE") == []


def test_text_predictions_are_refused_for_regression(tmp_path):
    ref = frame(seed=1, n=40)
    bad = ref.assign(value=["x"] * 40)
    with pytest.raises(TypeError, match="'value' must be numeric"):
        run_drift_report(ref, bad, FEATURES, tmp_path, prediction_column="value", regression=True)
