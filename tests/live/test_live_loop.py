"""The live platform's loop, on the SQLite stack: the dashboards in a real browser,
drift -> event -> automatic retrain, and batches under an S3 prefix."""

from __future__ import annotations

import json
import re
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


def _render(url: str, tmp_path: Path, screenshot: Path | None = None, live=None, until: str = "") -> str:
    """The page's DOM after its JavaScript ran, from headless Chromium; signed in to
    the stack's MLflow or Prefect as its user would be (`live`). MLflow's pages under
    authentication are read over the DevTools protocol, with the basic-auth answer
    on every request, once they hold `until`."""
    import subprocess

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    profile = tmp_path / f"profile-{abs(hash(url))}"
    if live is not None and live.browser_headers(url):
        from tests.live.browser import page_html

        assert screenshot is None and until
        return page_html(url, profile, until=until, headers=live.browser_headers(url))
    if live is not None:
        prefect_ui = live.prefect_api.removesuffix("/api")
        if live.auth and url.startswith(prefect_ui) and not profile.exists():
            import base64

            from tests.live.browser import seed_local_storage

            # the dashboard's sign-in page keeps the auth string here
            secret = base64.b64encode(live.credentials()["prefect_auth_string"].encode()).decode()
            seed_local_storage(profile, prefect_ui, {"prefect-password": secret})
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        "--window-size=1400,1000",
    ]
    if screenshot is not None:
        subprocess.run([chromium, *flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=120)
    r = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_dashboards_show_the_deployment_its_schedule_and_the_champion(live, deployed_run, tmp_path):
    dep, _ = deployed_run
    prefect_ui = live.prefect_api.removesuffix("/api")
    listing = _render(f"{prefect_ui}/deployments", tmp_path, live=live)
    assert "retrain" in listing and "lepton" in listing
    detail = _render(
        f"{prefect_ui}/deployments/deployment/{dep['id']}", tmp_path, tmp_path / "deployment.png", live=live
    )
    assert "At 03:00 AM, only on Monday" in detail  # the cron schedule, as the dashboard words it
    assert (tmp_path / "deployment.png").stat().st_size > 10_000
    model_page = _render(f"{live.mlflow}/#/models/lepton-digits", tmp_path, live=live, until="champion")
    assert "lepton-digits" in model_page and "champion" in model_page


def _flow_runs(live, deployment_id: str) -> list[dict]:
    """The deployment's runs that someone or something started (the dashboard, the
    drift trigger), not the future ones its cron schedule keeps queued."""
    runs = live.post(
        f"{live.prefect_api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}
    )
    return [r for r in runs if not r["auto_scheduled"]]


def _run_monitor_deployment(live) -> dict:
    """A monitor run as deployed, but with no cool-down: a drift event of an earlier
    test on the package's stack (test_live_alerts) must not hold this one back."""
    dep = _deployment(live, "monitor/lepton")
    params = {"monitor": {**dep["parameters"]["monitor"], "cooldown_minutes": 0}}
    fr = live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {"parameters": params})
    done = live.wait_flow_run(fr["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
    return done


def _events_of_run(live, flow_run: dict, timeout: float = 60) -> list[str]:
    """The names of the events Prefect stored from `flow_run`'s start on, read once its
    own `prefect.flow-run.Completed` event is stored (events are persisted in order, so
    anything the run emitted before completing is there by then)."""
    import time

    body = {
        "filter": {
            "occurred": {"since": flow_run["start_time"]},
            "event": {"name": ["prefect.flow-run.Completed", "lepton.drift.detected"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + timeout
    while True:
        events = live.post(f"{live.prefect_api}/events/filter", body)["events"]
        done = [
            e
            for e in events
            if e["event"] == "prefect.flow-run.Completed"
            and e["resource"]["prefect.resource.id"] == f"prefect.flow-run.{flow_run['id']}"
        ]
        if done:
            return [e["event"] for e in events]
        assert time.monotonic() < deadline, "the monitor run's Completed event never arrived"
        time.sleep(1)


def test_drifted_batch_starts_a_retrain_mild_batch_does_not(live, deployed_run):
    import time

    retrain = _deployment(live, "retrain/lepton")
    monitor = _deployment(live, "monitor/lepton")
    assert [s["schedule"].get("cron") for s in monitor["schedules"]] == ["0 * * * *"]
    inbox = live.home / "monitor" / "inbox"

    r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "low", "--out", str(inbox / "b1-mild"))
    assert r.returncode == 0, r.stderr[-2000:]
    before = len(_flow_runs(live, retrain["id"]))
    mild = _run_monitor_deployment(live)
    # no drift event means nothing for the trigger to react to
    assert "lepton.drift.detected" not in _events_of_run(live, mild)
    assert len(_flow_runs(live, retrain["id"])) == before

    versions_before = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27lepton-digits%27")
    n_versions = len(versions_before["model_versions"])
    r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "high", "--out", str(inbox / "b2-high"))
    assert r.returncode == 0, r.stderr[-2000:]
    seen = {fr["id"] for fr in _flow_runs(live, retrain["id"])}  # other modules retrain on this stack too
    strong = _run_monitor_deployment(live)
    assert "lepton.drift.detected" in _events_of_run(live, strong)

    # Nobody touches anything: the automation turns the drift event into a retrain.
    deadline = time.monotonic() + 180
    new_runs = []
    while time.monotonic() < deadline and not new_runs:
        new_runs = [fr for fr in _flow_runs(live, retrain["id"]) if fr["id"] not in seen]
        time.sleep(2)
    assert new_runs, "no retrain flow run followed the drift event"
    done = live.wait_flow_run(new_runs[0]["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
    versions = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27lepton-digits%27")
    assert len(versions["model_versions"]) == n_versions + 1


def test_the_report_is_one_click_away_in_both_uis(live, deployed_run, tmp_path):
    """The Prefect artifact and the champion's page in MLflow each link to the MLflow
    page that shows the Evidently report; a browser following the link sees it."""
    from tests.live.browser import frame_texts

    r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "low", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = live.cli("monitor", str(tmp_path / "b"), "--set", "monitor.cooldown_minutes=600", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = json.loads(r.stdout[r.stdout.index("{") :])["results"]
    url = res["report_url"]
    assert url.startswith(f"{live.mlflow}/#/experiments/") and url.endswith("/artifactPath/monitoring/report.html")

    # Prefect: the monitor's artifact carries the link, and the dashboard renders it.
    arts = live.post(
        f"{live.prefect_api}/artifacts/filter",
        {"artifacts": {"key": {"any_": ["lepton-monitor-summary"]}}, "sort": "CREATED_DESC"},
    )
    assert f"[open in MLflow]({url})" in arts[0]["data"]
    prefect_ui = live.prefect_api.removesuffix("/api")
    page = _render(f"{prefect_ui}/artifacts/artifact/{arts[0]['id']}", tmp_path, live=live)
    assert f'href="{url}"' in page

    # MLflow: the champion version's description links to the same page.
    aliases = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/get?name=lepton-digits")
    champion = {a["alias"]: a["version"] for a in aliases["registered_model"]["aliases"]}["champion"]
    page = _render(
        f"{live.mlflow}/#/models/lepton-digits/versions/{champion}", tmp_path, live=live, until=f'href="{url}"'
    )
    assert f'href="{url}"' in page

    # Following the link shows the Evidently report itself, inside MLflow's artifact view.
    texts = frame_texts(url, tmp_path / "cdp-profile", until="Dataset Drift", headers=live.browser_headers(url))
    assert any("Dataset Drift" in t and "Drifted Columns" in t for t in texts[1:]), [t[:200] for t in texts]


def test_a_batch_under_an_s3_prefix(live, deployed_run, tmp_path):
    """`lepton monitor s3://bucket/prefix`: the batch is fetched from S3 and checked."""
    batch = tmp_path / "s3batch"
    live.batch_to_s3(batch, "incoming/batch-7", "--kind", "noise", "--strength", "high")
    r = live.cli("monitor", "s3://lepton/incoming/batch-7", "--set", "monitor.cooldown_minutes=600", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{") :])
    (res,) = out["results"]
    assert res["batch_id"].startswith("batch-7-") and res["rows"] == len(list(batch.rglob("*.png")))
    assert res["status"] == "drift", res["verdict"]


def test_the_scheduled_monitor_reads_an_s3_inbox(live, deployed_run, tmp_path):
    """The monitor deployment pointed at an S3 inbox (the dashboard's form, edited):
    each sub-prefix is one batch, checked once; a second run finds nothing new."""
    names = []
    for i in range(2):
        names.append(f"s3in-{i}")
        live.batch_to_s3(
            tmp_path / f"inbox-{i}", f"inbox/{names[-1]}", "--kind", "rotate", "--strength", "low", "--seed", str(i)
        )

    dep = _deployment(live, "monitor/lepton")
    params = {"monitor": {**dep["parameters"]["monitor"], "inbox": "s3://lepton/inbox"}}

    def run_once() -> str:
        fr = live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {"parameters": params})
        done = live.wait_flow_run(fr["id"])
        assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
        arts = live.post(
            f"{live.prefect_api}/artifacts/filter",
            {"artifacts": {"key": {"any_": ["lepton-monitor-summary"]}, "flow_run_id": {"any_": [fr["id"]]}}},
        )
        assert len(arts) == 1
        return arts[0]["data"]

    first = run_once()
    headings = [ln for ln in first.splitlines() if ln.startswith("## ")]
    assert sorted(h.split("-", 2)[0] + "-" + h.split("-", 2)[1] for h in headings) == [f"## {n}" for n in names], first
    assert all(": no drift" in h for h in headings), headings  # mild batches: no retrain
    second = run_once()
    assert "No new batches." in second and "## s3in-" not in second
    runs = live.post(
        f"{live.mlflow}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [_monitoring_experiment(live)], "max_results": 200},
    )["runs"]
    batch_ids = [t["value"] for run in runs for t in run["data"]["tags"] if t["key"] == "lepton.batch_id"]
    for name in names:
        assert sum(b.startswith(f"{name}-") for b in batch_ids) == 1


def _monitoring_experiment(live) -> str:
    exp = live.get(f"{live.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lepton-monitoring")
    return exp["experiment"]["experiment_id"]


def test_mlflow_ui_shows_lineage_and_opens_on_training_runs(live, deployed_run, tmp_path):
    """In Chromium: the retrain run's page shows its dataset input and its source; the
    `lepton` experiment opens on its training runs, not on MLflow 3's GenAI overview."""
    from tests.live.browser import frame_texts

    exp = live.get(f"{live.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lepton")["experiment"]
    assert {t["key"]: t["value"] for t in exp.get("tags", [])}["mlflow.experimentKind"] == "custom_model_development"
    runs = live.post(
        f"{live.mlflow}/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [exp["experiment_id"]],
            "filter": f"tags.lepton.prefect_flow_run_id = '{deployed_run[1]['id']}'",
        },
    )["runs"]
    (run,) = runs
    run_id, name = run["info"]["run_id"], run["info"]["run_name"]
    (dataset,) = [d["dataset"] for d in run["inputs"]["dataset_inputs"]]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["mlflow.source.git.commit"] and tags["mlflow.source.name"] == "flows/retrain.py"
    assert (
        tags["lepton.prefect_flow_run_url"]
        == f"{live.prefect_api.removesuffix('/api')}/runs/flow-run/{deployed_run[1]['id']}"
    )

    run_page = f"{live.mlflow}/#/experiments/{exp['experiment_id']}/runs/{run_id}"
    page = "\n".join(
        frame_texts(run_page, tmp_path / "p1", until=dataset["name"], headers=live.browser_headers(run_page))
    )
    assert dataset["name"] in page, page[:3000]
    assert "flows/retrain.py" in page, page[:3000]
    assert tags["mlflow.source.git.commit"][:6] in page, page[:3000]

    # The experiment link Lepton gives (the retrain summary in the Prefect UI) opens on
    # the training runs table: MLflow 3.17 decides GenAI vs model training by URL.
    arts = live.post(
        f"{live.prefect_api}/artifacts/filter",
        {"artifacts": {"key": {"any_": ["lepton-retrain-summary"]}, "flow_run_id": {"any_": [deployed_run[1]["id"]]}}},
    )
    (art,) = arts
    link = re.search(r"experiment \[lepton\]\((http[^)]+)\)", art["data"]).group(1)
    assert link == f"{live.mlflow}/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning"
    page = "\n".join(frame_texts(link, tmp_path / "p2", until=name, headers=live.browser_headers(link)))
    assert name in page, page[:3000]
    assert "Detect Issues" not in page and "No data available" not in page, page[:3000]


def test_the_loop_closes_through_the_model_server(live, deployed_run):
    """Drifted traffic goes through the stack's model server; the monitor deployment
    finds drift in its prediction log; the trigger retrains; the gate promotes; the
    server swaps to the new champion while a client sending the whole time sees no
    error."""
    import threading
    import time
    import urllib.error
    import urllib.request

    from lepton_core.data.formats import load_digits
    from lepton_core.data.prepare import prepare_dataset
    from lepton_core.drift import simulate_drift

    held_out = prepare_dataset(load_digits(), val_fraction=0.15, test_fraction=0.2, seed=0)
    x, _ = simulate_drift(held_out.x["test"], held_out.y["test"], "rotate", 1.0, seed=0)
    auth = {"Authorization": f"Bearer {live.serve_token}", "Content-Type": "application/json"}

    def call(path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            live.serve + path,
            headers=auth,
            method="POST" if body else "GET",
            data=json.dumps(body).encode() if body else None,
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert urllib.request.urlopen(live.serve + "/healthz", timeout=10).status == 200
    noauth = urllib.request.Request(live.serve + "/v1/model")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(noauth, timeout=10)
    assert denied.value.code == 401  # the stack's server requires its token
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and call("/v1/model")[0] != 200:
        time.sleep(1)
    old = call("/v1/model")[1]["version"]

    seen, errors, stop = [], [], threading.Event()

    def client() -> None:  # the drifted traffic, a few instances at a time, all along
        i = 0
        while not stop.is_set():
            status, out = call("/v1/predict", {"instances": x[i % len(x) : i % len(x) + 4].tolist()})
            (seen.append(out["version"]) if status == 200 else errors.append((status, out)))
            i += 4
            time.sleep(0.02)

    t = threading.Thread(target=client)
    t.start()
    try:
        # under `lepton up` the log lives in the bucket, where every worker's monitor sees it
        import boto3

        from effects.runtime.stack_state import client_env, read_state

        env = client_env(live.home, read_state(live.home))
        s3 = boto3.client(
            "s3",
            endpoint_url=env["LEPTON_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        assert env["LEPTON_PREDICTION_LOG"] == f"s3://{env['LEPTON_S3_BUCKET']}/serve/predictions"

        def parts() -> list[str]:
            listed = s3.list_objects_v2(Bucket=env["LEPTON_S3_BUCKET"], Prefix="serve/predictions/", Delimiter="/")
            return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".parquet")]

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(parts()) < 2:
            time.sleep(1)
        assert parts(), "the server wrote no prediction log to S3"
        assert not list((live.home / "serve").rglob("*.parquet")), "parts left in the local spool or folder"
        retrain = _deployment(live, "retrain/lepton")
        before = {fr["id"] for fr in _flow_runs(live, retrain["id"])}
        dep = _deployment(live, "monitor/lepton")
        fr = live.post(
            f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run",
            {"parameters": {"monitor": {"cooldown_minutes": 0}}},
        )
        done = live.wait_flow_run(fr["id"])
        assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
        assert "lepton.drift.detected" in _events_of_run(live, done)

        deadline = time.monotonic() + 180
        new = []
        while time.monotonic() < deadline and not new:
            new = [r for r in _flow_runs(live, retrain["id"]) if r["id"] not in before]
            time.sleep(2)
        assert new, "no retrain followed the drift found in the prediction log"
        finished = live.wait_flow_run(new[0]["id"])
        assert finished["state"]["type"] == "COMPLETED", finished["state"].get("logs") or finished["state"]
        model = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/get?name=lepton-digits")
        champion = {a["alias"]: a["version"] for a in model["registered_model"]["aliases"]}["champion"]
        assert champion != old, "the retrain's version was not promoted"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and call("/v1/model")[1]["version"] != champion:
            time.sleep(0.5)
        time.sleep(2)  # traffic on the new version
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors[:3]
    assert call("/v1/model")[1]["version"] == champion
    assert seen[0] == old and seen[-1] == champion and set(seen) <= {old, champion}
    assert len(seen) > 50


def test_the_monitor_runs_are_points_in_the_stacks_evidently_ui(live, deployed_run):
    """Every monitor run of this module (flow runs on the stack's worker) added its
    snapshot to the Evidently UI `lepton up` runs, through its API with the stack's
    write secret: the project's drift panel has a point for each, read as its page reads
    it, and each snapshot names its batch and its MLflow run."""
    from tests.evidently_ui import get, http_points

    ui = f"http://127.0.0.1:{live.state()['watch']['ports']['evidently']}"
    (project,) = [p for p in get(ui + "/api/projects") if p["name"] == "lepton-digits"]
    listed = get(f"{ui}/api/projects/{project['id']}/snapshots")
    assert len(listed) >= 3 and all(m["metadata"]["batch_id"] and m["metadata"]["mlflow_run_id"] for m in listed)
    share = http_points(ui, "lepton-digits")["Share of drifted features"]
    assert len(share["sources"]) == len(listed)
    (line,) = share["series"]
    assert len(line["values"]) == len(listed) and all(v is not None for v in line["values"])
