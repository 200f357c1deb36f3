"""effects.monitoring.workspace: monitor snapshots in an Evidently workspace, a local
folder and a real `evidently ui`, read back the way the UI's dashboard reads them.

Three small synthetic reports (4 features, 80-100 rows against 150) are run once per
module and shared, about 10 s with Evidently's import; the UI starts in about 5 s."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from effects.monitoring import workspace as W
from tests.evidently_ui import evidently_ui, get, http_points, local_points, result, synthetic_records

MODEL = "lepton-digits"
SUMMARY = ["Share of drifted features", "Prediction drift", "Confidence", "Rows checked", "Accuracy (labelled batches)"]


@pytest.fixture(scope="module")
def records():
    return synthetic_records(3)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv(W.URL_ENV, raising=False)
    monkeypatch.delenv(W.SECRET_ENV, raising=False)
    return SimpleNamespace(home=tmp_path / "home")


def _three_points_per_panel(points: dict[str, dict], panels: int) -> None:
    assert list(points)[:5] == SUMMARY and len(points) == panels, list(points)
    for title, data in points.items():
        assert len(data["sources"]) == 3, title
        assert data["series"], title
        for series in data["series"]:
            assert len(series["values"]) == 3 and None not in series["values"], (title, series)


def test_three_monitor_runs_give_three_points_per_panel(records, home):
    for i, record in enumerate(records):
        assert W.add_snapshot(record, MODEL, result(i), 500, home)
    folder = W.workspace_dir(home)
    points = local_points(folder, MODEL)
    _three_points_per_panel(points, panels=6)
    # one series per line: the parameters stayed the same from run to run
    features = points["Feature drift scores"]["series"]
    assert sorted(s["params"]["column"] for s in features) == sorted(records[0].features)
    assert all(len(p["series"]) == 1 for t, p in points.items() if t != "Feature drift scores")
    share = points["Share of drifted features"]["series"][0]["values"]
    assert share[0] < share[-1]  # the synthetic batches drift further each time

    from evidently.ui.workspace import Workspace

    ws = Workspace(str(folder))
    (project,) = ws.search_project(MODEL)
    stored = sorted((ws.get_run(project.id, sid) for sid in ws.list_runs(project.id)), key=lambda m: m.timestamp)
    assert [m.timestamp for m in stored] == [r.timestamp.astimezone(UTC).replace(tzinfo=None) for r in records]
    assert [m.metadata["batch_id"] for m in stored] == ["batch-0", "batch-1", "batch-2"]
    assert stored[0].metadata["mlflow_run_id"] == result(0).mlflow_run_id and stored[0].tags == ["v3"]
    # the values the panels draw, and a note where the full report is; not the rendered report
    drawn = {v.metric for p in ws.get_dashboard(project.id).panels for v in p.values}
    kept = {r.metric_value_location.metric.params["type"] for r in stored[0].metric_results.values()}
    assert drawn <= kept <= W.DRAWN
    assert all(r.widget is None for r in stored[0].metric_results.values()) and not stored[0].tests_widgets
    (note,) = stored[0].widgets
    assert "batch-0" in note.params["text"] and "full Evidently report is in MLflow" in note.params["text"]


def test_keep_snapshots_drops_the_first_added(records, home):
    for i, record in enumerate(records):
        W.add_snapshot(record, MODEL, result(i), 2, home)
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(W.workspace_dir(home)))
    (project,) = ws.search_project(MODEL)
    kept = [ws.get_run(project.id, sid).metadata["batch_id"] for sid in W.snapshot_ids(ws, project.id)]
    assert kept == ["batch-1", "batch-2"]
    assert W.prune(ws, project.id, 1) == 1 and len(ws.list_runs(project.id)) == 1


def test_dashboard_is_kept_and_rewritten_when_the_features_change(records, home):
    W.add_snapshot(records[0], MODEL, result(0), 500, home)
    ws = W.open_workspace(home)
    (project,) = ws.search_project(MODEL)
    first = ws.get_dashboard(project.id)
    W.add_snapshot(records[1], MODEL, result(1), 500, home)
    assert ws.get_dashboard(project.id) == first  # unchanged, not rewritten
    fewer = W.SnapshotRecord(records[2].snapshot, records[2].features[:2], False, records[2].timestamp)
    W.add_snapshot(fewer, MODEL, result(2), 500, home)
    (features,) = [p for p in ws.get_dashboard(project.id).panels if p.title.startswith("Feature")]
    assert [v.legend for v in features.values] == ["mean_intensity", "contrast"]
    assert len(ws.search_project(MODEL)) == 1


@pytest.mark.parametrize(
    "n, titles",
    [
        (9, ["Feature drift scores"]),
        (25, [f"Feature drift scores ({a}-{b} of 25)" for a, b in ((1, 10), (11, 20), (21, 25))]),
        (64, [f"Feature drift scores ({a}-{a + 9} of 64)" for a in (1, 11, 21, 31)]),
    ],
)
def test_feature_panels_stay_readable(n, titles):
    record = W.SnapshotRecord(SimpleNamespace(metric_results={}), [f"f_c{i}" for i in range(n)], False, datetime.now())
    board = W.dashboard(record)
    panels = [p for p in board.panels if p.title.startswith("Feature")]
    assert [p.title for p in panels] == titles
    assert all(len(p.values) <= W.FEATURES_PER_PANEL for p in panels)
    assert [p.title for p in board.panels[:5]] == SUMMARY


def test_a_regression_model_gets_predicted_value_and_rmse_panels_with_points(home, tmp_path):
    from effects.monitoring.drift_report import run_drift_report
    from tests.effects.test_drift_report_regression import FEATURES, frame

    drift = run_drift_report(
        frame(1, n=150), frame(2, n=80, shift=0.5), FEATURES, tmp_path / "r", prediction_column="value", regression=True
    )
    for i in range(3):
        record = W.SnapshotRecord(drift.snapshot, FEATURES, True, datetime(2026, 12, 1, i, tzinfo=UTC))
        assert W.add_snapshot(record, "diabetes", result(i), 500, home)
    points = local_points(W.workspace_dir(home), "diabetes")
    assert list(points) == [
        "Share of drifted features",
        "Prediction drift",
        "Predicted value",
        "Rows checked",
        "RMSE (labelled batches)",
        "Feature drift scores",
    ]
    for title, data in points.items():
        assert len(data["sources"]) == 3 and all(None not in x["values"] for x in data["series"]), title
    assert points["Prediction drift"]["series"][0]["params"]["column"] == "value"
    rmse = points["RMSE (labelled batches)"]["series"][0]["values"][0]
    assert rmse == pytest.approx(drift.quality["current_rmse"])


def test_a_workspace_that_is_down_never_fails_the_monitor(records, home, monkeypatch, caplog):
    from effects.runtime.procs import free_port

    monkeypatch.setenv(W.URL_ENV, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv(W.SECRET_ENV, "do-not-log-me")
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        assert W.add_snapshot(records[0], MODEL, result(0), 500, home) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("Evidently workspace http://127.0.0.1:") and "batch-0 not added" in line
    assert "do-not-log-me" not in caplog.text


def test_batch_time_is_the_last_prediction_or_the_newest_file(tmp_path):
    log = pd.DataFrame({"timestamp": pd.to_datetime(["2026-12-01 10:00", "2026-12-01 11:30"], utc=True)})
    assert W.batch_time(tmp_path, log) == datetime(2026, 12, 1, 11, 30, tzinfo=UTC)
    (tmp_path / "a").mkdir()
    for name, t in (("a/old.png", 1_700_000_000), ("new.png", 1_800_000_000)):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (t, t))
    assert W.batch_time(tmp_path, pd.DataFrame({"f_x": [1.0]})) == datetime.fromtimestamp(1_800_000_000, UTC)


# ---------------------------------------------------------------- a real `evidently ui`
@pytest.fixture(scope="module")
def ui(records, tmp_path_factory):
    """`evidently ui` with its write secret, three monitor runs added through it."""
    base = tmp_path_factory.mktemp("evidently-ui")
    with pytest.MonkeyPatch.context() as mp, evidently_ui(base / "workspace", secret="s3cret") as url:
        mp.setenv(W.URL_ENV, url)
        mp.setenv(W.SECRET_ENV, "s3cret")
        home = SimpleNamespace(home=base / "home")
        refs = [W.add_snapshot(record, MODEL, result(i), 3, home) for i, record in enumerate(records)]
        assert all(ref and ref.startswith(url + "/projects/") for ref in refs), refs
        yield SimpleNamespace(url=url, home=home, base=base)


def test_evidently_ui_serves_three_points_per_panel(ui):
    _three_points_per_panel(http_points(ui.url, MODEL), panels=6)
    (project,) = [p for p in get(ui.url + "/api/projects") if p["name"] == MODEL]
    listed = get(f"{ui.url}/api/projects/{project['id']}/snapshots")
    assert sorted(m["metadata"]["batch_id"] for m in listed) == ["batch-0", "batch-1", "batch-2"]
    assert {tuple(m["tags"]) for m in listed} == {("v3",)}


def test_evidently_ui_keeps_at_most_keep_snapshots_and_refuses_a_wrong_secret(ui, records, monkeypatch, caplog):
    monkeypatch.setenv(W.URL_ENV, ui.url)
    monkeypatch.setenv(W.SECRET_ENV, "wrong")
    with caplog.at_level(logging.WARNING, logger=W.__name__):
        assert W.add_snapshot(records[0], MODEL, result(3), 3, ui.home) is None
    assert "batch-3 not added" in caplog.text and "wrong" not in caplog.text
    monkeypatch.setenv(W.SECRET_ENV, "s3cret")
    assert W.add_snapshot(records[2], MODEL, result(3), 3, ui.home)
    (project,) = [p for p in get(ui.url + "/api/projects") if p["name"] == MODEL]
    listed = get(f"{ui.url}/api/projects/{project['id']}/snapshots")
    assert sorted(m["metadata"]["batch_id"] for m in listed) == ["batch-1", "batch-2", "batch-3"]


def test_the_dashboard_renders_in_headless_chromium(ui):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    (project,) = [p for p in get(ui.url + "/api/projects") if p["name"] == MODEL]
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += [f"--user-data-dir={ui.base / 'profile'}", "--virtual-time-budget=15000", "--window-size=1400,1700"]
    page = f"{ui.url}/projects/{project['id']}"
    r = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for title in [*SUMMARY, "Feature drift scores"]:
        assert title in r.stdout, title
    assert Path(ui.base / "profile").is_dir()


def test_adding_reads_none_of_the_stored_snapshots(records, home):
    """Evidently's own Workspace parses every stored snapshot when opened (and refuses
    a malformed one): adding must stay one write however many are kept."""
    W.add_snapshot(records[0], MODEL, result(0), 500, home)
    ws = W.open_workspace(home)
    (project,) = ws.search_project(MODEL)
    junk = W.workspace_dir(home) / str(project.id) / "snapshots" / "00000000-0000-7000-8000-000000000000.json"
    junk.write_text("{not json")
    assert W.add_snapshot(records[1], MODEL, result(1), 2, home)
    assert not junk.exists()  # the first added (its id is the oldest) went with the cap
    assert len(ws.list_runs(project.id)) == 2
