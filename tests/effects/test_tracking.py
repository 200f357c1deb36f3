"""The MLflow adapter for training's log(step, metrics): batched, complete."""

from __future__ import annotations

import pytest


def test_batched_logger_sends_few_calls_and_loses_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    from effects.tracking import BatchedMetricLogger

    c = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    exp = c.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    run = c.create_run(exp)
    calls = []
    real = c.log_batch

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    c.log_batch = counting
    log = BatchedMetricLogger(c, run.info.run_id, interval=3600)
    for step in range(1, 41):
        log(step, {"loss": 1.0 / step, "acc": step / 40, "lr": 0.1})
    log.flush()
    assert len(calls) == 1  # 120 numbers, one request
    hist = c.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in hist] == list(range(1, 41))
    assert hist[-1].value == pytest.approx(1 / 40)


def test_git_commit_of_a_non_repo_is_unknown(tmp_path):
    from effects.tracking import git_commit

    assert git_commit(tmp_path) == "unknown"
