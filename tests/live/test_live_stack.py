"""The live platform end to end: `lepton up`, `lepton deploy`, a retrain started
the way the dashboard's Run button starts it, and what then shows up in MLflow,
S3 and Prefect. Runs on SQLite and on PostgreSQL; on PostgreSQL, last, two
workers share its pool."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import pytest

from effects.runtime.procs import pid_alive, stop_group
from tests.live.conftest import deploy_and_run_retrain

pytestmark = pytest.mark.slow


def _deployment(live, name: str) -> dict:
    return live.get(f"{live.prefect_api}/deployments/name/{name}")


@pytest.fixture(scope="module")
def deployed_run(live):
    return deploy_and_run_retrain(live)


def test_deployments_carry_schedule_and_typed_parameters(live, deployed_run):
    dep, _ = deployed_run
    crons = [s["schedule"].get("cron") for s in dep["schedules"]]
    assert crons == ["0 3 * * 1"]
    assert dep["work_pool_name"] == "lepton"
    props = dep["parameter_openapi_schema"]["properties"]
    assert {"data", "train", "promote", "registry"} <= set(props)
    definitions = dep["parameter_openapi_schema"]["definitions"]
    assert definitions["TrainParams"]["properties"]["epochs"]["type"] == "integer"
    assert dep["parameters"]["train"]["epochs"] == 30  # params.yaml's value is the form default
    for name in ("promote/lepton", "rollback/lepton"):
        assert _deployment(live, name)["work_pool_name"] == "lepton"


def test_the_schedules_create_runs(live, deployed_run):
    """Prefect's scheduler turns the cron schedules into scheduled runs: retrain on
    Mondays at 03:00 UTC, monitor at the top of every hour."""
    import time
    from datetime import datetime, timedelta

    def scheduled(name: str) -> list[datetime]:
        dep = _deployment(live, name)
        runs = live.post(
            f"{live.prefect_api}/flow_runs/filter",
            {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"},
        )
        return [
            datetime.fromisoformat(r["expected_start_time"])
            for r in runs
            if r["auto_scheduled"] and r["state"]["type"] == "SCHEDULED"
        ]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (scheduled("retrain/lepton") and scheduled("monitor/lepton")):
        time.sleep(2)
    retrain, monitor = scheduled("retrain/lepton"), scheduled("monitor/lepton")
    assert len(retrain) >= 3 and len(monitor) >= 3, (retrain, monitor)
    now = datetime.now(UTC)
    for t in retrain:
        t = t.astimezone(UTC)
        assert (t.weekday(), t.hour, t.minute) == (0, 3, 0) and t > now, t
    assert [b - a for a, b in zip(retrain, retrain[1:])] == [timedelta(days=7)] * (len(retrain) - 1)
    for t in monitor:
        assert t.minute == 0 and t > now, t
    assert [b - a for a, b in zip(monitor, monitor[1:])] == [timedelta(hours=1)] * (len(monitor) - 1)


def test_prefect_server_background_services_raised_nothing(live, deployed_run):
    """The server's background services (scheduler, triggers, ...) fail only in its
    log: a scheduler that cannot insert runs looks healthy from the API. After the
    deploy, a dashboard run and a round of scheduling, the log holds no traceback."""
    log = (live.home / "stack" / "logs" / "prefect.log").read_text(errors="replace")
    failures = []
    for chunk in log.split("Traceback (most recent call last):")[1:]:
        lines = chunk.splitlines()
        # the exception: the first unindented line after the frames
        error = next((ln for ln in lines[1:] if ln.strip() and not ln.startswith(" ")), "?")
        failures.append(error[:300])
    # On SQLite, Prefect's services can log "database is locked" when two of them
    # write at once, and retry on their next loop (PrefectHQ/prefect#10188, #18934,
    # open upstream); test_the_schedules_create_runs checks that the scheduler's
    # work still gets done. Anything else is a failure.
    transient = [f for f in failures if "sqlite3.OperationalError" in f and "database is locked" in f]
    assert not (set(failures) - set(transient)), failures[:5]


def test_dashboard_run_lands_in_mlflow_s3_and_prefect(live, deployed_run):
    _, flow_run = deployed_run
    model = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/get?name=lepton-digits")["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert "champion" in aliases
    mv = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/get?name=lepton-digits&version={aliases['champion']}")
    mv = mv["model_version"]
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    assert tags["lepton.prefect_flow_run_id"] == flow_run["id"]
    run = live.get(f"{live.mlflow}/api/2.0/mlflow/runs/get?run_id={mv['run_id']}")["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.epochs"] == "4"
    assert not any("secret" in k.lower() or "aws" in k.lower() for k in params)
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test_accuracy"] > 0.5

    s3 = live.s3_client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lepton")
        for o in page.get("Contents", [])
    ]
    run_keys = [k for k in keys if k.startswith("mlflow/") and mv["run_id"] in k]
    assert any(k.endswith("evaluation/confusion_matrix.png") for k in run_keys), run_keys[:20]
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in keys)  # the logged model
    assert any(k.startswith("dvc/files/md5/") for k in keys)  # the dataset, in the DVC remote

    arts = live.post(
        f"{live.prefect_api}/artifacts/filter", {"artifacts": {"key": {"any_": ["lepton-retrain-summary"]}}}
    )
    assert arts, "no summary artifact"
    md = arts[0]["data"]
    assert f"{live.mlflow}/#/experiments/" in md and mv["run_id"] in md
    assert f"{live.mlflow}/#/models/lepton-digits/versions/{mv['version']}" in md


def test_writes_ask_for_server_side_encryption_when_configured(live, deployed_run):
    """MLflow's artifacts (written by its server) and DVC's objects (written by the
    flow run on the worker) carry the encryption the stack was started with."""
    s3 = live.s3_client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lepton")
        for o in page.get("Contents", [])
    ]
    by_prefix: dict[str, set] = {"mlflow/": set(), "dvc/": set()}
    for k in keys:
        for prefix, seen in by_prefix.items():
            if k.startswith(prefix):
                seen.add(s3.head_object(Bucket="lepton", Key=k).get("ServerSideEncryption"))
    assert by_prefix == {"mlflow/": {live.sse}, "dvc/": {live.sse}}, by_prefix
    if live.sse:
        # the stored bytes read back as written ...
        key = next(k for k in keys if k.endswith("metrics.json") and k.startswith("mlflow/"))
        assert json.loads(s3.get_object(Bucket="lepton", Key=key)["Body"].read())
        # ... and the store keeps them encrypted at rest with the key `lepton up` gave it:
        # a marker in an incompressible body is found on disk only when sent in the clear.
        markers = {
            "clear": b"LEPTON-CLEAR-" + os.urandom(8).hex().encode(),
            "sse": b"LEPTON-SSE-" + os.urandom(8).hex().encode(),
        }
        s3.put_object(Bucket="lepton", Key="probe/clear", Body=markers["clear"] + os.urandom(100_000))
        s3.put_object(
            Bucket="lepton", Key="probe/sse", Body=markers["sse"] + os.urandom(100_000), ServerSideEncryption=live.sse
        )
        assert s3.get_object(Bucket="lepton", Key="probe/sse")["Body"].read().startswith(markers["sse"])
        on_disk = b"".join(p.read_bytes() for p in (live.home / "stack" / "seaweedfs").rglob("*.dat"))
        assert markers["clear"] in on_disk
        assert markers["sse"] not in on_disk


_COMPARED = (
    "entrypoint",
    "path",
    "pull_steps",
    "parameters",
    "parameter_openapi_schema",
    "work_pool_name",
    "work_queue_name",
    "concurrency_limit",
    "enforce_parameter_schema",
    "tags",
    "description",
    "job_variables",
    "paused",
)


def _registered(live) -> dict:
    out = {}
    for f in ("retrain", "promote", "rollback", "monitor"):
        d = _deployment(live, f"{f}/lepton")
        out[f] = {k: d.get(k) for k in _COMPARED}
        out[f]["schedules"] = [
            {**{k: s["schedule"].get(k) for k in ("cron", "timezone")}, "active": s["active"]} for s in d["schedules"]
        ]
        out[f]["id"], out[f]["updated"] = d["id"], d["updated"]
    return out


def _drift_automations(live) -> list[dict]:
    return [
        a for a in live.post(f"{live.prefect_api}/automations/filter", {}) if a["name"] == "lepton-retrain-on-drift"
    ]


def test_prefect_yaml_deploys_what_lepton_deploy_does(live, deployed_run):
    """`prefect --no-prompt deploy --all` from the project root, with the project's
    prefect.yaml, leaves every deployment exactly as `lepton deploy` registered it,
    and still one drift trigger (Prefect replaces the one it owns)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    before = _registered(live)
    assert before["retrain"]["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]
    env = {**os.environ, **live.env, **live.client_env}
    r = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = _registered(live)
    from datetime import datetime

    for f in before:  # each one was written again, by prefect.yaml ...
        stamps = [datetime.fromisoformat(x[f].pop("updated")) for x in (before, after)]
        assert stamps[1] > stamps[0], (f, stamps)
    assert after == before  # ... and came out the same
    (auto,) = _drift_automations(live)
    assert [a["deployment_id"] for a in auto["actions"]] == [before["retrain"]["id"]]
    assert auto["trigger"]["expect"] == ["lepton.drift.detected"] and auto["trigger"]["posture"] == "Reactive"


def test_status_reports_services_and_champion(live, deployed_run):
    r = live.cli("status", "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    st = json.loads(r.stdout)
    assert st["tracking_uri"] == live.mlflow
    assert st["champion"] is not None
    assert {n: h["healthy"] for n, h in st["services"].items()} == {
        "seaweedfs": True,
        "mlflow": True,
        "prefect": True,
        "worker": True,
        "serve": True,
        # the watching services (lepton.watchers; make test installs Debian's packages)
        "prometheus": True,
        "alertmanager": True,
        "evidently": True,
    }
    assert {n for n, h in st["services"].items() if h.get("optional")} == {"prometheus", "alertmanager", "evidently"}


def test_a_taken_port_is_a_clear_error(live, tmp_path):
    other = dict(live.env, LEPTON_HOME=str(tmp_path / "other"))
    from tests.conftest import run_cli

    r = run_cli(["up", "--prefect-port", str(live.ports["prefect"])], other, timeout=60)
    assert r.returncode == 2
    assert "already in use" in r.stderr and "Traceback" not in r.stderr


def test_stop_and_start_keep_runs_models_and_data(live, deployed_run, tmp_path):
    before = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/get?name=lepton-digits")["registered_model"]
    champion = {a["alias"]: a["version"] for a in before["aliases"]}["champion"]
    mv = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/get?name=lepton-digits&version={champion}")
    data_version = {t["key"]: t["value"] for t in mv["model_version"]["tags"]}["lepton.data_version"]
    local_copy = live.home / "datasets" / data_version
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in local_copy.iterdir()}

    r = live.down()
    assert r.returncode == 0 and "stopped" in r.stdout
    live.up()

    after = live.get(f"{live.mlflow}/api/2.0/mlflow/registered-models/get?name=lepton-digits")["registered_model"]
    assert {a["alias"]: a["version"] for a in after["aliases"]}["champion"] == champion
    assert _deployment(live, "retrain/lepton")["schedules"]
    # The dataset comes back from S3 alone: drop every local copy first.
    shutil.rmtree(live.home / "datasets")
    shutil.rmtree(live.home / "data" / ".dvc" / "cache", ignore_errors=True)
    out = tmp_path / "restored"
    r = live.cli("data", "restore", data_version, "--to", str(out), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(out).iterdir()} == digest


# ---------------------------------------------------------------- two workers on one pool


def _start_worker(live, name: str, queue: str, home, log) -> subprocess.Popen:
    from effects.runtime.stack_state import client_env
    from lepton.deploy import worker_env

    state = live.state()
    env = {
        **os.environ,
        **live.env,
        **client_env(live.home, state),
        **worker_env(),
        "LEPTON_HOME": str(home),
        # both poll often, so the second picks up the run the first leaves
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    return subprocess.Popen(
        [
            prefect,
            "worker",
            "start",
            "--pool",
            state["pool"],
            "--type",
            "process",
            "--name",
            name,
            "--work-queue",
            queue,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _retrain_runs(live, dep_id: str) -> list[dict]:
    runs = live.post(f"{live.prefect_api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep_id]}}})
    return [r for r in runs if not r["auto_scheduled"]]


# Last on the PostgreSQL stack: it replaces the stack's worker with two of its own.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("live", ["postgresql"], indirect=True)
def test_two_workers_one_drifted_batch_one_monitoring_run_one_retrain(live, deployed_run, tmp_path):
    """Two workers on one pool (#10): the stack's monitor state lives in PostgreSQL;
    two `prefect worker` processes on its pool, each with its own home (as on two
    machines), one drifted batch in an S3 inbox both see, and two monitor runs
    started at the same moment. Exactly one monitoring run checks the batch, one
    drift event fires, and exactly one retrain follows."""
    from effects.runtime.stack_state import client_env

    _, first = deployed_run  # the champion the monitor compares with
    state = live.state()
    assert "LEPTON_STATE_DB" in client_env(live.home, state)  # the workers share the monitor's state

    # The stack's own worker goes (it takes any number of runs at once); two workers
    # that take one run each, on two homes, take its place on the same pool.
    os.kill(int(state["pids"]["worker"]), signal.SIGKILL)
    # Each polls its own queue of the pool, so the two monitor runs below (one per
    # queue, created together) run at the same time, one on each worker.
    pool = state["pool"]
    live.post(f"{live.prefect_api}/work_pools/{pool}/queues", {"name": "second"})
    queues = {"worker-a": "default", "worker-b": "second"}
    workers = {}
    try:
        for name, queue in queues.items():
            with (tmp_path / f"{name}.log").open("wb") as log:
                workers[name] = _start_worker(live, name, queue, tmp_path / f"home-{name}", log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pool_workers = live.post(f"{live.prefect_api}/work_pools/{state['pool']}/workers/filter", {})
            online = {w["name"] for w in pool_workers if w["status"] == "ONLINE"}
            if {"worker-a", "worker-b"} <= online:
                break
            time.sleep(1)
        assert {"worker-a", "worker-b"} <= online, online

        # one drifted batch in the inbox both workers read
        live.batch_to_s3(tmp_path / "drifted", "shared-inbox/drifted", "--kind", "rotate", "--strength", "high")

        retrain = live.get(f"{live.prefect_api}/deployments/name/retrain/lepton")
        before = {r["id"] for r in _retrain_runs(live, retrain["id"])}
        assert first["id"] in before
        dep = live.get(f"{live.prefect_api}/deployments/name/monitor/lepton")
        params = {"monitor": {**dep["parameters"]["monitor"], "inbox": "s3://lepton/shared-inbox"}}
        runs = [
            live.post(
                f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run",
                {"parameters": params, "work_queue_name": queue},
            )
            for queue in queues.values()
        ]
        done = [live.wait_flow_run(fr["id"]) for fr in runs]
        for d in done:
            assert d["state"]["type"] == "COMPLETED", d["state"].get("logs") or d["state"]

        # each worker ran one of the two monitor runs (what the workers told Prefect)
        since = min(d["start_time"] for d in done)
        submitted = live.post(
            f"{live.prefect_api}/events/filter",
            {
                "filter": {
                    "occurred": {"since": first["start_time"]},
                    "event": {"name": ["prefect.worker.submitted-flow-run"]},
                },
                "limit": 50,
            },
        )["events"]
        ran_by = {}
        for e in submitted:
            for rel in e["related"]:
                if rel.get("prefect.resource.role") == "flow-run":
                    ran_by.setdefault(rel["prefect.resource.id"].removeprefix("prefect.flow-run."), set()).add(
                        e["resource"]["prefect.resource.name"]
                    )
        assert sorted(tuple(sorted(ran_by.get(fr["id"], ()))) for fr in runs) == [("worker-a",), ("worker-b",)], ran_by

        # exactly one of them checked the batch; the other found nothing new
        summaries = []
        for fr in runs:
            arts = live.post(
                f"{live.prefect_api}/artifacts/filter",
                {"artifacts": {"key": {"any_": ["lepton-monitor-summary"]}, "flow_run_id": {"any_": [fr["id"]]}}},
            )
            assert len(arts) == 1
            summaries.append(arts[0]["data"])
        checked = [s for s in summaries if "## drifted-" in s]
        assert len(checked) == 1 and "No new batches." in (set(summaries) - set(checked)).pop(), summaries
        exp = live.get(f"{live.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lepton-monitoring")
        mruns = live.post(
            f"{live.mlflow}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 200},
        )["runs"]
        batch_ids = [t["value"] for run in mruns for t in run["data"]["tags"] if t["key"] == "lepton.batch_id"]
        assert sum(b.startswith("drifted-") for b in batch_ids) == 1, batch_ids

        # one drift event, one retrain
        deadline = time.monotonic() + 180
        new = []
        while time.monotonic() < deadline and not new:
            new = [r for r in _retrain_runs(live, retrain["id"]) if r["id"] not in before]
            time.sleep(2)
        assert len(new) == 1, f"{len(new)} retrain runs followed the drift event"
        finished = live.wait_flow_run(new[0]["id"], timeout=600)
        assert finished["state"]["type"] == "COMPLETED", finished["state"].get("logs") or finished["state"]
        events = live.post(
            f"{live.prefect_api}/events/filter",
            {"filter": {"occurred": {"since": since}, "event": {"name": ["lepton.drift.detected"]}}, "limit": 50},
        )["events"]
        assert len(events) == 1, [e["event"] for e in events]
        time.sleep(10)  # anything a second trigger would have started has been created by now
        assert len([r for r in _retrain_runs(live, retrain["id"]) if r["id"] not in before]) == 1
    finally:
        for p in workers.values():
            if pid_alive(p.pid):
                stop_group(p.pid)
            p.wait(timeout=30)
