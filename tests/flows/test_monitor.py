"""The monitor flow on real Prefect, MLflow and DVC: clean, drifted and bad batches,
the drift event and its cool-down, and a retrain that folds the new data in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import DataParams, MonitorParams, TrainParams

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=8, width=16, patience=3)


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from flows.retrain import retrain

    first = retrain(data=DataParams(), train=FAST, progress=False)
    assert first["decision"]["promoted"]
    return first


def _batch(tmp: Path, name: str, kind: str, strength: str) -> Path:
    from effects.monitoring.monitor import write_drift_batch

    return Path(write_drift_batch(kind, strength, tmp / name)["path"])


def _run(batch: Path, **params):
    from flows.monitor import monitor

    return monitor(batch=str(batch), monitor=MonitorParams(**params))


def test_mild_batch_no_alarm_strong_batch_drift_event_then_cooldown(champion, lepton_env):
    from mlflow.tracking import MlflowClient

    from effects.runtime.settings import get_settings

    base = lepton_env[0]
    mild = _run(_batch(base, "mild", "rotate", "low"))
    (r,) = mild["results"]
    assert r["status"] == "no drift", r["verdict"]
    assert mild["event_emitted"] is False

    strong = _run(_batch(base, "strong", "rotate", "high"))
    (r,) = strong["results"]
    assert r["status"] == "drift", r["verdict"]
    assert strong["event_emitted"] is True
    assert r["drifted_features"] and all({"feature", "score", "threshold"} <= set(d) for d in r["drifted_features"])
    s = get_settings()
    event = json.loads((s.home / "monitor" / "last_event.json").read_text())
    assert event["model_version"] == champion["version"] and r["batch_id"] in event["batch_ids"]

    # A second drifted batch inside the cool-down: still "drift", but no new event,
    # and the result, the monitoring run and the Prefect summary say until when.
    again = _run(_batch(base, "strong2", "noise", "high"))
    assert again["results"][0]["status"] == "drift"
    assert again["event_emitted"] is False
    hm = r"(\d{4}-\d\d-\d\d )?\d\d:\d\d UTC"
    assert re.fullmatch(
        rf"suppressed: cool-down until {hm} \(the last event was at {hm}\)", again["event_suppressed"]
    ), again["event_suppressed"]
    assert strong["event_suppressed"] is None

    # The report is logged to a monitoring run that names the champion.
    c = MlflowClient(s.tracking_uri, registry_uri=s.tracking_uri)
    run = c.get_run(r["mlflow_run_id"])
    assert run.data.tags["lepton.monitored_model_version"] == champion["version"]
    assert run.data.tags["lepton.monitor.event"] == "emitted"
    quiet = c.get_run(again["results"][0]["mlflow_run_id"]).data.tags
    assert quiet["lepton.monitor.event"] == again["event_suppressed"]
    assert again["event_suppressed"] in quiet["mlflow.note.content"]
    assert run.data.tags["lepton.monitor.status"] == "drift"
    names = {a.path for a in c.list_artifacts(r["mlflow_run_id"], "monitoring")}
    assert {"monitoring/report.html", "monitoring/report.json"} <= names
    assert Path(r["report_html"]).stat().st_size > 10_000
    mv = c.get_model_version("lepton-digits", champion["version"])
    assert mv.tags["lepton.monitor.last_verdict"] == "drift"
    # Both the run's and the champion version's descriptions lead to the report;
    # the version keeps one such line however many batches were checked.
    assert "monitoring/report.html" in run.data.tags["mlflow.note.content"]
    assert mv.description.count("Latest drift report:") == 1
    assert again["results"][0]["batch_id"] in mv.description

    # Over time: each of the three runs added its snapshot to the Evidently workspace
    # (a local folder here), read as the UI's dashboard reads it: three points per panel.
    from tests.evidently_ui import local_points

    points = local_points(s.home / "monitor" / "evidently", "lepton-digits")
    assert len(points) == 6 and all(len(p["sources"]) == 3 for p in points.values()), points.keys()
    sources = points["Rows checked"]["sources"]
    runs_ = [mild["results"][0]["mlflow_run_id"], r["mlflow_run_id"], again["results"][0]["mlflow_run_id"]]
    assert [src["metadata"]["mlflow_run_id"] for src in sources] == runs_
    assert {tuple(src["tags"]) for src in sources} == {(f"v{champion['version']}",)}


def test_bad_batches_get_a_clear_verdict_and_no_event(champion, lepton_env):
    from PIL import Image

    base = lepton_env[0] / "bad"
    empty = base / "empty"
    empty.mkdir(parents=True)
    tiny = base / "tiny"
    for i in range(5):
        (tiny / "3").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8), mode="L").save(tiny / "3" / f"{i}.png")
    big = base / "wrong-shape"
    (big / "1").mkdir(parents=True)
    for i in range(60):
        Image.fromarray(np.full((28, 28), i, np.uint8), mode="L").save(big / "1" / f"{i}.png")
    log = base / "nan-log"
    log.mkdir()
    import pandas as pd

    from lepton_core.drift import IMAGE_FEATURES

    frame = pd.DataFrame({f"f_{k}": [np.nan] * 80 for k in IMAGE_FEATURES})
    frame["prediction"] = 1
    frame["confidence"] = 0.9
    frame["timestamp"] = pd.Timestamp("2026-11-23", tz="UTC")
    frame["model_version"] = champion["version"]
    frame.to_parquet(log / "part-0.parquet")
    expected = {empty: "insufficient data", tiny: "insufficient data", big: "schema mismatch", log: "insufficient data"}
    for batch, status in expected.items():
        out = _run(batch, cooldown_minutes=0)
        (r,) = out["results"]
        assert r["status"] == status, (batch.name, r["verdict"])
        assert out["event_emitted"] is False
        assert r["accepted_for_training"] is False


def test_retrain_folds_accepted_batches_into_the_next_data_version(champion, lepton_env):
    from effects.runtime.settings import get_settings
    from flows.retrain import retrain

    accepted = json.loads((get_settings().home / "monitor" / "accepted.json").read_text())
    assert {b["id"].split("-")[0] for b in accepted} >= {"mild", "strong"}
    n_new = sum(len(list(Path(b["path"]).rglob("*.png"))) for b in accepted)
    second = retrain(data=DataParams(), train=FAST, progress=False)
    assert second["data_version"] != champion["data_version"]
    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    old = read_prepared(dataset_path(champion["data_version"]))
    new = read_prepared(dataset_path(second["data_version"]))
    assert new.report["raw_samples"] == old.report["raw_samples"] + n_new
    assert len(new.y["test"]) > len(old.y["test"])  # the test split now holds drifted data too
    assert second["decision"]["reason"]  # the gate decided, as usual
