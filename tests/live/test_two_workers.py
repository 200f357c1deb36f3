"""Two workers on one pool (#10): a `lepton up --db` stack whose monitor state lives
in PostgreSQL, two `prefect worker` processes on its pool, each with its own home
(as on two machines), one drifted batch in an S3 inbox both see, and two monitor
runs started at the same moment. Exactly one monitoring run checks the batch, one
drift event fires, and exactly one retrain follows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from effects.procs import pid_alive, stop_group
from tests.live.conftest import _running_stack, deploy_and_run_retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    yield from _running_stack(tmp_path_factory, "postgresql")


def _start_worker(live, name: str, queue: str, home, log) -> subprocess.Popen:
    from effects.stack_state import client_env
    from lepton.deploy import worker_env

    state = live.state()
    env = {**os.environ, **live.env, **client_env(live.home, state), **worker_env(),
           "LEPTON_HOME": str(home),
           # both poll often, so the second picks up the run the first leaves
           "PREFECT_WORKER_QUERY_SECONDS": "2"}
    prefect = os.path.join(os.path.dirname(sys.executable), "prefect")
    return subprocess.Popen([prefect, "worker", "start", "--pool", state["pool"], "--type", "process",
                             "--name", name, "--work-queue", queue],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def _retrain_runs(live, dep_id: str) -> list[dict]:
    runs = live.post(f"{live.prefect_api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep_id]}}})
    return [r for r in runs if not r["auto_scheduled"]]


@pytest.mark.timeout(1200)
def test_two_workers_one_drifted_batch_one_monitoring_run_one_retrain(live, tmp_path):
    from effects.stack_state import client_env

    _, first = deploy_and_run_retrain(live)  # a champion for the monitor to compare with
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
        batch = tmp_path / "drifted"
        r = live.cli("simulate-drift", "--kind", "rotate", "--strength", "high", "--out", str(batch))
        assert r.returncode == 0, r.stderr[-2000:]
        s3 = live.s3_client()
        for f in batch.rglob("*.png"):
            s3.upload_file(str(f), "lepton", f"shared-inbox/drifted/{f.relative_to(batch)}")

        retrain = live.get(f"{live.prefect_api}/deployments/name/retrain/lepton")
        before = {r["id"] for r in _retrain_runs(live, retrain["id"])}
        assert first["id"] in before
        dep = live.get(f"{live.prefect_api}/deployments/name/monitor/lepton")
        params = {"monitor": {**dep["parameters"]["monitor"], "inbox": "s3://lepton/shared-inbox"}}
        runs = [live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run",
                          {"parameters": params, "work_queue_name": queue}) for queue in queues.values()]
        done = [live.wait_flow_run(fr["id"]) for fr in runs]
        for d in done:
            assert d["state"]["type"] == "COMPLETED", d["state"].get("logs") or d["state"]

        # each worker ran one of the two monitor runs (what the workers told Prefect)
        since = min(d["start_time"] for d in done)
        submitted = live.post(f"{live.prefect_api}/events/filter", {
            "filter": {"occurred": {"since": first["start_time"]},
                       "event": {"name": ["prefect.worker.submitted-flow-run"]}}, "limit": 50})["events"]
        ran_by = {}
        for e in submitted:
            for rel in e["related"]:
                if rel.get("prefect.resource.role") == "flow-run":
                    ran_by.setdefault(rel["prefect.resource.id"].removeprefix("prefect.flow-run."), set()).add(
                        e["resource"]["prefect.resource.name"])
        assert sorted(tuple(sorted(ran_by.get(fr["id"], ()))) for fr in runs) == [("worker-a",), ("worker-b",)], \
            ran_by

        # exactly one of them checked the batch; the other found nothing new
        summaries = []
        for fr in runs:
            arts = live.post(f"{live.prefect_api}/artifacts/filter",
                             {"artifacts": {"key": {"any_": ["lepton-monitor-summary"]},
                                            "flow_run_id": {"any_": [fr["id"]]}}})
            assert len(arts) == 1
            summaries.append(arts[0]["data"])
        checked = [s for s in summaries if "## drifted-" in s]
        assert len(checked) == 1 and "No new batches." in (set(summaries) - set(checked)).pop(), summaries
        exp = live.get(f"{live.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lepton-monitoring")
        mruns = live.post(f"{live.mlflow}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 200})["runs"]
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
        events = live.post(f"{live.prefect_api}/events/filter",
                           {"filter": {"occurred": {"since": since}, "event": {"name": ["lepton.drift.detected"]}},
                            "limit": 50})["events"]
        assert len(events) == 1, [e["event"] for e in events]
        time.sleep(10)  # anything a second trigger would have started has been created by now
        assert len([r for r in _retrain_runs(live, retrain["id"]) if r["id"] not in before]) == 1
    finally:
        for p in workers.values():
            if pid_alive(p.pid):
                stop_group(p.pid)
            p.wait(timeout=30)
