"""How the monitor reads a batch for a regression champion: a table with or without
its target column, and the serving endpoint's prediction log (`value` in place of
prediction and confidence) joined with the targets clients posted as feedback."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from effects.monitoring.monitor import batch_format, current_frame
from lepton_core.errors import DataError
from tests.core.test_drift_regression import linear_predictor


def table(n: int = 6) -> pd.DataFrame:
    x = np.arange(3 * n, dtype=np.float64).reshape(n, 3) / 10
    return pd.DataFrame(x, columns=["a", "b", "c"])


def test_a_table_with_the_target_column_is_labelled_with_numbers(tmp_path):
    df = table().assign(price=[10.5, 11.0, -1.0, 13.25, 0.0, 99.0])
    df[["price", "c", "a", "b"]].to_csv(tmp_path / "batch.csv", index=False)
    frame = current_frame(tmp_path / "batch.csv", batch_format(tmp_path / "batch.csv", None), linear_predictor())
    assert frame["label"].tolist() == [10.5, 11.0, -1.0, 13.25, 0.0, 99.0]  # -1 is a target like any other
    expected = 100.0 + 10.0 * (df["a"] + 2 * df["b"] - df["c"])
    assert frame["value"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)
    assert "prediction" not in frame.columns


def test_a_table_without_it_is_unlabelled(tmp_path):
    table().to_parquet(tmp_path / "batch.parquet", index=False)
    assert batch_format(tmp_path / "batch.parquet", None) == "csv"
    frame = current_frame(tmp_path / "batch.parquet", "csv", linear_predictor())
    assert "label" not in frame.columns and len(frame) == 6


def test_rows_with_missing_inputs_are_left_out_with_their_targets(tmp_path):
    df = table().assign(price=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    df.loc[2, "b"] = np.nan
    df.to_csv(tmp_path / "batch.csv", index=False)
    frame = current_frame(tmp_path / "batch.csv", "csv", linear_predictor())
    assert frame["label"].tolist() == [1.0, 2.0, 4.0, 5.0, 6.0]


def _prediction_log(folder, n: int = 6) -> pd.DataFrame:
    """What effects.serving.prediction_log writes for a regression model."""
    folder.mkdir(parents=True)
    df = table(n).add_prefix("f_")
    df["value"] = np.linspace(100.0, 150.0, n)
    df.insert(0, "instance", np.arange(n) % 3)
    df.insert(0, "request_id", np.repeat(["r1", "r2"], n // 2))
    df.insert(0, "model_version", "1")
    df.insert(0, "timestamp", pd.Timestamp("2026-01-01", tz="UTC"))
    df.to_parquet(folder / "part-0.parquet", index=False)
    return df


def test_a_regression_prediction_log_is_detected_and_joined_with_float_feedback(tmp_path):
    log = _prediction_log(tmp_path / "window")
    feedback = tmp_path / "feedback"
    feedback.mkdir()
    pd.DataFrame({"request_id": "r2", "instance": [0, 1, 2], "label": [120.5, 131.0, 149.75]}).to_parquet(
        feedback / "fb-0.parquet", index=False
    )
    assert batch_format(tmp_path / "window", None) == "predlog"
    frame = current_frame(tmp_path / "window", "predlog", linear_predictor(), feedback)
    assert frame["value"].tolist() == log["value"].tolist()
    labels = frame["label"].to_numpy()
    assert np.isnan(labels[:3]).all() and labels[3:].tolist() == [120.5, 131.0, 149.75]


def test_a_classifiers_prediction_log_is_a_schema_mismatch_for_a_regression_model(tmp_path):
    folder = tmp_path / "window"
    folder.mkdir()
    df = table().add_prefix("f_").assign(prediction=1, confidence=0.9)
    df.to_parquet(folder / "part-0.parquet", index=False)
    assert batch_format(folder, None) == "predlog"
    with pytest.raises(DataError, match="schema mismatch: the prediction log lacks value"):
        current_frame(folder, "predlog", linear_predictor())
