"""The MLflow adapter for training's log(step, metrics): batched, complete."""

from __future__ import annotations

import pytest


def test_batched_logger_sends_few_calls_and_loses_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    from effects.tracking.runs import BatchedMetricLogger

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
    from effects.tracking.runs import git_commit

    assert git_commit(tmp_path, code_dir=tmp_path) == "unknown"


def test_a_command_started_outside_the_checkout_records_the_commit_of_the_code_that_ran(tmp_path):
    import subprocess

    from effects.tracking.runs import CODE_DIR, git_commit
    from tests.conftest import ROOT

    assert CODE_DIR == ROOT  # the tests run the checkout's own code
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_commit(tmp_path).removesuffix("-dirty") == head


def test_concurrent_runs_log_one_new_data_version_without_a_race(tmp_path):
    """Runs that start at once on one new data version all log it as their input.
    MLflow's store looks the dataset up and then inserts it, so without the retry
    the losers of that race failed on the unique key (seen with 10 retrains at once)."""
    import threading

    from mlflow.tracking import MlflowClient

    from effects.tracking.runs import log_lineage

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c0 = MlflowClient(uri)
    exp = c0.create_experiment("t", artifact_location=(tmp_path / "a").as_uri())
    n, errors = 8, []
    for trial in range(5):
        version = f"{trial:04x}" + "5e" * 14
        runs = [c0.create_run(exp).info.run_id for _ in range(n)]
        together = threading.Barrier(n)

        def log(run_id: str, version: str = version, together: threading.Barrier = together) -> None:
            c = MlflowClient(uri)
            together.wait()
            try:
                log_lineage(
                    c,
                    run_id,
                    data_version=version,
                    meta={"kind": "image"},
                    dvc_remote=str(tmp_path / "remote"),
                    git_commit="0" * 40,
                    source_name="t",
                )
            except Exception as e:  # noqa: BLE001 (reported below)
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")

        threads = [threading.Thread(target=log, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for r in runs:  # every run links the same single dataset row
            (ds,) = [d.dataset for d in c0.get_run(r).inputs.dataset_inputs]
            assert ds.digest == version and ds.name == f"image-{version[:8]}"
