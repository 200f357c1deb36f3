"""Drift of a regression model: the monitored frame (the predicted `value` in the
target's units, numeric labels), the verdict on an RMSE increase, and the retrain a
drift event starts (`monitor.retrain_init`: champion makes it a warm start)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lepton_core.drift import (
    VALUE_COLUMN,
    DriftThresholds,
    decide_drift,
    drift_payload_fields,
    feature_frame,
    output_column,
    predictor_frame,
    retrain_init_from,
    rmse_increase,
)
from lepton_core.models import ModelConfig
from lepton_core.params import MonitorParams
from lepton_core.predictor import Predictor, Preprocessing

T = DriftThresholds(drift_share=0.5, max_accuracy_drop=0.1, min_rows=50, max_rmse_increase=0.25)


def linear_predictor(mean: float = 100.0, std: float = 10.0) -> Predictor:
    """A regression predictor whose standardised output is a + 2b - c: values = mean + std * that."""
    lin = torch.nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, -1.0]]))
        lin.bias.zero_()
    pre = Preprocessing(
        kind="tabular",
        input_shape=(3,),
        dtype="float32",
        scale=1.0,
        classes=(),
        feature_names=("a", "b", "c"),
        label_column="price",
        task="regression",
        target_mean=mean,
        target_std=std,
    )
    return Predictor(lin, ModelConfig(kind="mlp", input_shape=(3,), n_classes=1), pre)


# ---------------------------------------------------------------- frames
def test_a_regression_frame_has_the_predicted_value_and_numeric_labels():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    df = feature_frame(x, np.zeros((4, 1)), "tabular", ["a", "b", "c"], np.array([1.5, 2.5, 3.5, 4.5]), x[:, 0] * 2)
    assert list(df.columns) == ["f_a", "f_b", "f_c", VALUE_COLUMN, "label"]
    assert df[VALUE_COLUMN].tolist() == [0.0, 6.0, 12.0, 18.0]
    assert df["label"].dtype == np.float64 and df["label"].tolist() == [1.5, 2.5, 3.5, 4.5]
    # a classifier's frame is as before
    cls = feature_frame(x, np.array([[0.0, 1.0]] * 4), "tabular", ["a", "b", "c"], np.array([1, 0, 1, 1]))
    assert list(cls.columns) == ["f_a", "f_b", "f_c", "prediction", "confidence", "label"]
    assert cls["label"].dtype == np.int64
    assert output_column(True) == "value" and output_column(False) == "prediction"


def test_predictor_frame_gives_values_in_the_targets_units():
    p = linear_predictor(mean=100.0, std=10.0)
    samples = pd.DataFrame({"c": [0.0, 1.0], "a": [1.0, 0.0], "b": [0.0, 3.0]})  # columns by name
    df = predictor_frame(p, samples, np.array([111.0, 150.0]))
    assert df[VALUE_COLUMN].tolist() == pytest.approx([110.0, 150.0])  # 100 + 10 * (a + 2b - c)
    assert df["label"].tolist() == [111.0, 150.0]
    assert "prediction" not in df.columns and "confidence" not in df.columns
    assert df[["f_a", "f_b", "f_c"]].to_numpy().tolist() == [[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]]


# ---------------------------------------------------------------- verdicts
def test_an_rmse_increase_beyond_the_threshold_is_drift_with_a_one_line_reason():
    v = decide_drift(0.0, False, None, T, rmse=(58.3, 82.1), regression=True)
    assert v.drift
    assert v.reasons == ["RMSE rose by 41% (58.3 -> 82.1; threshold 25%)"]
    assert v.scores["rmse_increase"] == pytest.approx(82.1 / 58.3 - 1)
    assert v.scores["reference_rmse"] == 58.3 and v.scores["current_rmse"] == 82.1
    assert "accuracy_drop" not in v.scores


def test_an_rmse_increase_within_the_threshold_or_a_better_rmse_is_no_drift():
    assert decide_drift(0.0, False, None, T, rmse=(58.3, 70.0), regression=True).status == "no drift"  # +20 %
    v = decide_drift(0.1, False, None, T, rmse=(58.3, 40.0), regression=True)
    assert v.status == "no drift" and v.scores["rmse_increase"] < 0
    strict = DriftThresholds(0.5, 0.1, 50, max_rmse_increase=0.1)
    assert decide_drift(0.0, False, None, strict, rmse=(58.3, 70.0), regression=True).drift


def test_regression_prediction_drift_names_the_predicted_values():
    v = decide_drift(0.0, True, None, T, regression=True)
    assert v.drift and v.reasons == ["the distribution of predicted values drifted"]
    off = DriftThresholds(0.5, 0.1, 50, prediction_drift=False)
    assert not decide_drift(0.0, True, None, off, regression=True).drift
    # features and RMSE together: every reason is listed
    both = decide_drift(0.7, False, None, T, rmse=(10.0, 20.0), regression=True)
    assert [r.split(" ")[0] for r in both.reasons] == ["70%", "RMSE"]


def test_rmse_increase_of_a_perfect_reference():
    assert rmse_increase(2.0, 3.0) == pytest.approx(0.5)
    assert rmse_increase(0.0, 0.0) == 0.0
    assert math.isinf(rmse_increase(0.0, 1e-3))
    v = decide_drift(0.0, False, None, T, rmse=(0.0, 1e-3), regression=True)
    assert v.drift and "RMSE rose by inf%" in v.line()


def test_large_and_small_rmses_read_without_exponents():
    v = decide_drift(0.0, False, None, T, rmse=(1234.0, 2000.0), regression=True)
    assert "(1,234 -> 2,000;" in v.line()
    v = decide_drift(0.0, False, None, T, rmse=(0.0412, 0.09), regression=True)
    assert "(0.0412 -> 0.09;" in v.line()


def test_monitor_params_feed_the_thresholds():
    p = MonitorParams(max_rmse_increase=0.5, retrain_init="champion")
    assert p.max_rmse_increase == 0.5 and p.retrain_init == "champion"
    assert MonitorParams().retrain_init == "scratch"


# ---------------------------------------------------------------- the retrain a drift event starts
def test_the_drift_payload_carries_retrain_init():
    assert drift_payload_fields("champion") == {"retrain_init": "champion"}
    assert drift_payload_fields("scratch") == {"retrain_init": "scratch"}
    with pytest.raises(ValueError, match="scratch or champion"):
        drift_payload_fields("warm")


def test_retrain_init_from_semantics():
    assert retrain_init_from({"retrain_init": "champion"}, None) == "champion"
    assert retrain_init_from({"retrain_init": "champion"}, "models:/m/3") == "champion"
    assert retrain_init_from({"retrain_init": "scratch"}, None) is None
    assert retrain_init_from({"retrain_init": "scratch"}, "models:/m/3") == "models:/m/3"
    assert retrain_init_from({}, None) is None  # an event of an older monitor
