"""Task-level tests: each task's function called directly (`.fn`) with a tmp home,
real MLflow (SQLite) and real DVC (local remote); plus the effects they lean on
(settings, locks, summaries)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from lepton_core.params import DataParams, MonitorParams, Params, TrainParams
from tests.conftest import lepton_env_vars, make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("tasks")
    make_project(base / "project")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in lepton_env_vars(base).items():
            mp.setenv(k, v)
        yield base


@pytest.fixture(scope="module")
def trained(env):
    from effects.data.dvc_store import version_dataset
    from tasks.train import train

    data = version_dataset(DataParams())
    params = Params(train=TrainParams(epochs=3, width=8, patience=0), monitor=MonitorParams(drift_share=0.3))
    return data, params, train.fn(data, params, progress=False)


def test_train_task_records_exactly_its_params_and_its_checkpoint(trained):
    from effects.tracking.runs import client
    from lepton_core.params import flatten_params
    from lepton_core.predictor import Predictor

    data, params, outcome = trained
    run = client().get_run(outcome.run_id)
    assert run.data.params == flatten_params(params)  # every section, as given
    assert run.data.params["monitor.drift_share"] == "0.3"
    assert outcome.epochs_run == 3 and run.data.metrics["epochs_run"] == 3
    assert len(client().get_metric_history(outcome.run_id, "val_accuracy")) == 3
    pred = Predictor.from_checkpoint(outcome.checkpoint)
    assert pred.preprocessing.dtype == "uint8" and pred.preprocessing.scale == pytest.approx(1 / 255)
    assert not list((Path(outcome.checkpoint).parents[2] / "checkpoints").glob("train-*.pt"))  # work file gone


def test_evaluate_task_logs_metrics_reference_and_provenance(trained, env):
    from effects.tracking.runs import client
    from tasks.evaluate import evaluate

    data, _, outcome = trained
    summary = evaluate.fn(outcome.run_id, outcome.checkpoint, data)
    assert set(summary) == {"test_accuracy", "test_precision_macro", "test_recall_macro", "test_f1_macro"}
    run = client().get_run(outcome.run_id)
    assert run.data.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    paths = {a.path for d in ("evaluation", "monitoring", "data") for a in client().list_artifacts(outcome.run_id, d)}
    assert {
        "evaluation/metrics.json",
        "evaluation/confusion_matrix.png",
        "monitoring/reference.parquet",
        "data/prepared.dvc",
        "data/report.json",
    } <= paths
    metrics = json.loads(
        Path(client().download_artifacts(outcome.run_id, "evaluation/metrics.json", str(env / "dl"))).read_text()
    )
    assert (
        metrics["accuracy"] == pytest.approx(summary["test_accuracy"]) and metrics["n"] == data.meta["counts"]["test"]
    )


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from effects.runtime.settings import get_settings, redact_uri

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LEPTON_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LEPTON_S3_SSE", "none")
    monkeypatch.setenv("LEPTON_MLFLOW_PORT", "5123")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4300/api")
    s = get_settings()
    assert s.home == (tmp_path / "h").resolve() and s.tracking_uri.endswith("/h/mlflow.db")
    assert s.s3_endpoint_url == "http://127.0.0.1:9" and s.sse is None and s.ports == {"mlflow": 5123}
    assert s.prefect_ui_api_url == "http://127.0.0.1:4300/api"
    monkeypatch.setenv("LEPTON_PREFECT_TEMPORARY", "1")  # a command's own server: no links to it
    monkeypatch.setenv("LEPTON_S3_SSE", "AES256")
    s = get_settings()
    assert s.prefect_ui_api_url is None and s.sse == "AES256"
    assert redact_uri("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"


def _hold(path: str, seconds: float, started) -> None:
    from effects.runtime.locks import file_lock

    with file_lock(Path(path)):
        started.set()
        time.sleep(seconds)


def test_the_lock_excludes_another_process_and_times_out(tmp_path):
    from effects.runtime.locks import file_lock

    started = multiprocessing.Event()
    p = multiprocessing.Process(target=_hold, args=(str(tmp_path / "l.lock"), 1.5, started))
    p.start()
    try:
        assert started.wait(30)
        with pytest.raises(TimeoutError):
            with file_lock(tmp_path / "l.lock", timeout=0.3):
                pass
        t0 = time.monotonic()
        with file_lock(tmp_path / "l.lock", timeout=30):
            assert not p.is_alive() or time.monotonic() - t0 > 0.5
    finally:
        p.join(30)


def _accept_many(home: str, start: int) -> None:
    import os

    os.environ["LEPTON_HOME"] = home
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    s = get_settings()
    for i in range(start, start + 20):
        monitor_state.mark_processed(s, [f"batch-{i}"])


def test_monitor_state_loses_no_entry_under_concurrent_writers(tmp_path):
    """Two processes marking batches at once (the hourly deployment next to a manual
    `lepton monitor`): every entry survives."""
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    procs = [multiprocessing.Process(target=_accept_many, args=(str(tmp_path), k * 100)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    import os

    os.environ["LEPTON_HOME"] = str(tmp_path)
    try:
        done = monitor_state.processed(get_settings())
    finally:
        os.environ.pop("LEPTON_HOME")
    assert done == {f"batch-{i}" for k in range(2) for i in range(k * 100, k * 100 + 20)}


def test_summaries_link_the_run_and_version(monkeypatch):
    from effects.tracking.summaries import monitor_markdown, registry_markdown

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    md = registry_markdown("rollback", {"champion": "3", "demoted": "4"}, "m")
    assert "[m v3](http://127.0.0.1:5999/#/models/m/versions/3)" in md and "- demoted: 4" in md
    r = {
        "batch_id": "b",
        "verdict": "drift: x",
        "report_url": "http://u/r",
        "mlflow_run_id": "rid",
        "report_html": "/r.html",
        "drifted_features": [],
        "scores": {"share_drifted": 0.9},
    }
    md = monitor_markdown([r], "m", True, "http://127.0.0.1:5999", "monitoring/report.html")
    assert "[open in MLflow](http://u/r)" in md and "drift event emitted: yes" in md


def test_a_new_batch_under_an_old_name_is_still_new(tmp_path, monkeypatch):
    from effects.monitoring.monitor import batch_id, new_batches
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    s = get_settings()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    first = inbox / "batch.csv"
    first.write_text("a,label\n1,x\n")
    monitor_state.mark_processed(s, [batch_id(first)])
    assert new_batches(inbox, s) == []
    first.write_text("a,label\n2,y\n")  # other content, same name
    assert new_batches(inbox, s) == [first]
