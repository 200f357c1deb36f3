"""The sweep's metric for regression: val_rmse is minimised, a metric the task has not
is refused in one line before any work, and the summaries show test RMSE and R²."""

from __future__ import annotations

import math

import pytest

from lepton_core.errors import ParamsError
from lepton_core.params import DataParams, Params, SweepParams
from lepton_core.sweep import goal, objective, search_space
from lepton_core.train import TrainResult

REGRESSION = DataParams(format="csv", path="t.csv", label_column="target", task="regression")


def _params(data: DataParams, metric: str) -> Params:
    return Params(data=data, sweep=SweepParams(metric=metric))


def test_val_rmse_is_minimised():
    assert goal(SweepParams(metric="val_rmse")) == "minimize"
    assert goal(SweepParams(metric="val_accuracy")) == "maximize"
    dims = search_space(SweepParams(metric="val_rmse"), _params(REGRESSION, "val_rmse"))
    assert {d.path for d in dims} == set(SweepParams().space)


@pytest.mark.parametrize(
    "data, metric, says",
    [
        (REGRESSION, "val_accuracy", "sweep.metric=val_accuracy: a regression model"),
        (DataParams(), "val_rmse", "sweep.metric=val_rmse is for regression"),
    ],
)
def test_a_metric_the_task_has_not_is_refused_in_one_line(data, metric, says):
    params = _params(data, metric)
    with pytest.raises(ParamsError) as e:
        search_space(params.sweep, params)
    msg = str(e.value)
    assert msg.startswith(says) and "\n" not in msg
    assert ("set sweep.metric=val_rmse" in msg) == (data.task == "regression")


def test_val_loss_is_accepted_for_either_task():
    for data in (REGRESSION, DataParams()):
        search_space(SweepParams(metric="val_loss"), _params(data, "val_loss"))


def _result(**kw) -> TrainResult:
    history = [
        {"epoch": 1, "val_loss": 0.9, "val_rmse": 70.0},
        {"epoch": 2, "val_loss": 0.5, "val_rmse": 55.5},
        {"epoch": 3, "val_loss": 0.6, "val_rmse": 60.0},
    ]
    base = {
        "model": None,
        "model_config": None,
        "epochs_run": 3,
        "best_epoch": 2,
        "best_val_accuracy": math.nan,
        "resumed_from_epoch": 0,
        "stopped_early": False,
        "history": history,
        "task": "regression",
    }
    return TrainResult(**{**base, **kw})  # type: ignore[arg-type]


def test_a_trials_objective_is_its_best_epochs_figure():
    assert objective(_result(best_val_rmse=55.5), "val_rmse") == 55.5
    assert objective(_result(), "val_rmse") == 55.5  # from the history when the result lacks it
    assert objective(_result(), "val_loss") == 0.5
    assert objective(_result(best_val_accuracy=0.93, history=[]), "val_accuracy") == 0.93
    with pytest.raises(ParamsError, match="recorded no val_rmse"):
        objective(_result(history=[{"epoch": 2, "val_loss": 0.5}]), "val_rmse")


SWEEP_RESULT = {
    "trials": [
        {"number": 0, "state": "COMPLETE", "value": 61.2, "values": {"train.lr": 0.003}, "run_id": "t0"},
        {"number": 1, "state": "COMPLETE", "value": 57.9, "values": {"train.lr": 0.01}, "run_id": "t1"},
    ],
    "failed": 0,
    "runner": "threads",
    "parent_run_id": "p1",
    "data_version": "d1",
    "metric": "val_rmse",
    "best": {"number": 1, "run_id": "t1"},
    "version": "2",
    "decision": {"promoted": True, "reason": "no champion to beat; floor met"},
    "metrics": {"test_rmse": 58.3592, "test_mae": 49.3, "test_r2": 0.45158},
}


def test_the_sweep_summaries_show_test_rmse_and_r2_for_regression():
    from effects.tracking.sweep import sweep_markdown
    from lepton.cli import render

    lines = render.sweep_summary(SWEEP_RESULT, "diabetes")
    assert lines[2] == "    trial 0   val_rmse 61.2000         train.lr=0.003"
    assert lines[3].startswith("  * trial 1   val_rmse 57.9000")
    assert lines[-1] == "best trial      test RMSE 58.36  R² 0.4516  run t1"
    md = sweep_markdown(SWEEP_RESULT, "diabetes")
    assert "| trial | state | val_rmse |" in md and "- test RMSE 58.36, R² 0.4516 of the best" in md
    classification = {**SWEEP_RESULT, "metric": "val_accuracy", "metrics": {"test_accuracy": 0.9355}}
    assert render.sweep_summary(classification, "m")[-1] == "best trial      test accuracy 0.9355  run t1"
    assert "- test accuracy 0.9355 of the best" in sweep_markdown(classification, "m")
