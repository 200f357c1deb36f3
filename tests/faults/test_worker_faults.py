"""The worker killed mid-run under a real `lepton up`: the flow run it was running
loses its process; the lost-runs automation marks it CRASHED when its heartbeats
stop, the retry automation schedules it again, the worker `lepton up` restarted
runs it, and the train task resumes from the work checkpoint in the same MLflow
run, to COMPLETED."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from effects.procs import pid_alive
from tests.faults.test_training_faults import _descendants
from tests.live.conftest import _running_stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EPOCHS = 24


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    yield from _running_stack(tmp_path_factory, "sqlite")


def _states(stack, flow_run_id: str) -> list[str]:
    return [s["type"] for s in stack.get(f"{stack.prefect_api}/flow_run_states/?flow_run_id={flow_run_id}")]


@pytest.mark.timeout(900)  # about 90 s of silence before the run counts as crashed
def test_a_run_whose_worker_dies_is_rerun_and_resumes_from_its_checkpoint(stack):
    from lepton_core.checkpoint import load_checkpoint

    r = stack.cli("deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    names = {a["name"] for a in stack.post(f"{stack.prefect_api}/automations/filter", {})}
    assert {"lepton-crash-lost-runs", "lepton-retry-crashed"} <= names
    dep = stack.get(f"{stack.prefect_api}/deployments/name/retrain/lepton")
    fr = stack.post(f"{stack.prefect_api}/deployments/{dep['id']}/create_flow_run",
                    {"parameters": {"train": {"epochs": EPOCHS, "width": 8, "patience": 0}}})

    ckdir = stack.home / "checkpoints"
    deadline = time.monotonic() + 300
    epoch = 0
    while epoch < 2 and time.monotonic() < deadline:  # mid-training: two epochs in the checkpoint
        for ck in ckdir.glob("train-*.pt"):
            try:
                epoch = int(load_checkpoint(ck)["epoch"])
            except Exception:  # replaced while read
                pass
        assert stack.get(f"{stack.prefect_api}/flow_runs/{fr['id']}")["state"]["type"] in ("SCHEDULED", "PENDING",
                                                                                           "RUNNING")
        time.sleep(0.5)
    assert epoch >= 2, "training did not get under way"

    # The worker and the flow run it started die at once, as when their machine goes.
    worker = json.loads((stack.home / "stack" / "stack.json").read_text())["pids"]["worker"]
    tree = {worker, *_descendants(worker)}
    for p in tree:
        os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed_at = load_checkpoint(next(ckdir.glob("train-*.pt")))
    assert int(killed_at["epoch"]) < EPOCHS
    stack.up()  # restarts the dead worker (and only it)

    # CRASHED (no heartbeat), then scheduled again and run to the end
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = stack.get(f"{stack.prefect_api}/flow_runs/{fr['id']}")
        if done["state"]["type"] in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        time.sleep(2)
    seen = _states(stack, fr["id"])
    assert done["state"]["type"] == "COMPLETED", (seen, stack.wait_flow_run(fr["id"], 1)["state"].get("logs"))
    assert "CRASHED" in seen and done["run_count"] >= 2, seen
    # the resume is a warning; Prefect's API returns at most 200 logs a call
    logs = stack.post(f"{stack.prefect_api}/logs/filter",
                      {"logs": {"flow_run_id": {"any_": [fr["id"]]}, "level": {"ge_": 30}}, "limit": 200})
    resumed = [entry["message"] for entry in logs if "from its work checkpoint" in entry["message"]]
    assert resumed and killed_at["mlflow_run_id"] in resumed[0], "the rerun did not resume the checkpoint"
    assert not list(ckdir.glob("train-*.pt"))  # finished: the work checkpoint is gone
