"""The live platform's loop, on the SQLite stack: the dashboards in a real browser,
drift -> event -> automatic retrain, and batches under an S3 prefix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.live.conftest import deploy_and_run_retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(live_sqlite):
    return live_sqlite


@pytest.fixture(scope="module")
def deployed_run(live):
    return deploy_and_run_retrain(live)


def _deployment(live, name: str) -> dict:
    return live.get(f"{live.prefect_api}/deployments/name/{name}")


def _render(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its JavaScript ran, from headless Chromium."""
    import subprocess

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    profile = tmp_path / f"profile-{abs(hash(url))}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1400,1000"]
    if screenshot is not None:
        subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    r = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_dashboards_show_the_deployment_its_schedule_and_the_champion(live, deployed_run, tmp_path):
    dep, _ = deployed_run
    prefect_ui = live.prefect_api.removesuffix("/api")
    listing = _render(f"{prefect_ui}/deployments", tmp_path)
    assert "retrain" in listing and "lepton" in listing
    detail = _render(f"{prefect_ui}/deployments/deployment/{dep['id']}", tmp_path, tmp_path / "deployment.png")
    assert "At 03:00 AM, only on Monday" in detail  # the cron schedule, as the dashboard words it
    assert (tmp_path / "deployment.png").stat().st_size > 10_000
    model_page = _render(f"{live.mlflow}/#/models/lepton-digits", tmp_path)
    assert "lepton-digits" in model_page and "champion" in model_page


def _flow_runs(live, deployment_id: str) -> list[dict]:
    return live.post(f"{live.prefect_api}/flow_runs/filter",
                     {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})


def _run_monitor_deployment(live) -> dict:
    dep = _deployment(live, "monitor/lepton")
    fr = live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {})
    done = live.wait_flow_run(fr["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    return done


def test_drifted_batch_starts_a_retrain_mild_batch_does_not(live, deployed_run):
    import time

    retrain = _deployment(live, "retrain/lepton")
    monitor = _deployment(live, "monitor/lepton")
    assert [s["schedule"].get("cron") for s in monitor["schedules"]] == ["0 * * * *"]
    inbox = live.home / "monitor" / "inbox"

    r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "low", "--out", str(inbox / "b1-mild"))
    assert r.returncode == 0, r.stderr[-2000:]
    before = len(_flow_runs(live, retrain["id"]))
    _run_monitor_deployment(live)
    time.sleep(10)  # time enough for an automation to react, if it (wrongly) would
    assert len(_flow_runs(live, retrain["id"])) == before

    versions_before = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27lepton-digits%27")
    n_versions = len(versions_before["model_versions"])
    r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "high", "--out", str(inbox / "b2-high"))
    assert r.returncode == 0, r.stderr[-2000:]
    _run_monitor_deployment(live)

    # Nobody touches anything: the automation turns the drift event into a retrain.
    deadline = time.monotonic() + 180
    new_runs = []
    while time.monotonic() < deadline and not new_runs:
        new_runs = [fr for fr in _flow_runs(live, retrain["id"]) if fr["id"] != deployed_run[1]["id"]]
        time.sleep(2)
    assert new_runs, "no retrain flow run followed the drift event"
    done = live.wait_flow_run(new_runs[0]["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    versions = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27lepton-digits%27")
    assert len(versions["model_versions"]) == n_versions + 1

    # The report is one click away: the Prefect artifact links straight to it in MLflow.
    arts = live.post(f"{live.prefect_api}/artifacts/filter",
                     {"artifacts": {"key": {"any_": ["lepton-monitor-summary"]}}, "sort": "CREATED_DESC"})
    md = arts[0]["data"]
    assert "drift" in md and f"{live.mlflow}/get-artifact?path=monitoring/report.html" in md
    link = md.split(f"({live.mlflow}/get-artifact", 1)[1].split(")", 1)[0]
    import urllib.request

    with urllib.request.urlopen(f"{live.mlflow}/get-artifact{link}", timeout=30) as resp:
        assert b"<html" in resp.read(4096).lower()


def test_a_batch_under_an_s3_prefix(live, deployed_run, tmp_path):
    """`lepton monitor s3://bucket/prefix`: the batch is fetched from S3 and checked."""
    batch = tmp_path / "s3batch"
    r = live.cli("simulate-drift", "--kind", "noise", "--strength", "high", "--out", str(batch))
    assert r.returncode == 0, r.stderr[-2000:]
    s3 = live.s3_client()
    for f in batch.rglob("*.png"):
        s3.upload_file(str(f), "lepton", f"incoming/batch-7/{f.relative_to(batch)}")
    r = live.cli("monitor", "s3://lepton/incoming/batch-7", "--set", "monitor.cooldown_minutes=600", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    (res,) = out["results"]
    assert res["batch_id"].startswith("batch-7-") and res["rows"] == len(list(batch.rglob("*.png")))
    assert res["status"] == "drift", res["verdict"]
