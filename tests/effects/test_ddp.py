"""Data-parallel training through torchrun on 2 CPU processes (gloo): the same
result, checkpoint and registered model shape as one process; rank 0 alone logs
(one metric per epoch in MLflow); a run killed mid-training resumes on every rank
from the one work checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import DataParams, TrainParams

pytestmark = pytest.mark.slow

DDP = TrainParams(devices=2, epochs=3, width=8, patience=0)


@pytest.fixture(scope="module")
def digits():
    from lepton_core.data.formats import load_digits
    from lepton_core.data.prepare import prepare_dataset

    return prepare_dataset(load_digits(), val_fraction=0.15, test_fraction=0.2, seed=0)


def test_two_processes_give_the_shape_of_one(digits, tmp_path):
    from effects.training.stages import train_stage
    from lepton_core.predictor import Predictor

    one = train_stage(
        digits, DDP.model_copy(update={"devices": 1}), tmp_path / "one.pt", tmp_path / "w1.pt", progress=False
    )
    two = train_stage(digits, DDP, tmp_path / "two.pt", tmp_path / "w2.pt", progress=False)
    assert (one.world_size, two.world_size) == (1, 2)
    # each rank trained on its own shard of every batch, and they ended with the same weights
    r0, r1 = two.ranks
    rows0, rows1 = set(r0["rows"]), set(r1["rows"])
    n_train = len(digits.y["train"])
    assert rows0 and rows1 and not rows0 & rows1 and len(rows0 | rows1) == n_train
    assert abs(len(rows0) - len(rows1)) <= 64  # half of each batch (64 rows) each
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["peak_rss_mb"] > 50 and r1["peak_rss_mb"] > 50  # each rank's own, for the run's resources
    assert two.epochs_run == one.epochs_run == 3 and len(two.history) == 3
    assert set(two.history[0]) == set(one.history[0])
    # the same global batches, split over the ranks: the same descent, up to float order
    assert np.allclose([h["train_loss"] for h in two.history], [h["train_loss"] for h in one.history], rtol=0.05)
    for ckpt in ("one.pt", "two.pt"):
        p = Predictor.from_checkpoint(tmp_path / ckpt)
        acc = float((p.predict(digits.x["test"]).labels == digits.y["test"]).mean())
        assert acc > 0.5
    assert abs(one.best_val_accuracy - two.best_val_accuracy) < 0.1


KILLABLE = """
import sys
from pathlib import Path
from lepton_core.data.formats import load_digits
from lepton_core.data.prepare import prepare_dataset
from lepton_core.params import TrainParams
from effects.training.stages import train_stage
d = Path(sys.argv[1])
p = prepare_dataset(load_digits(), val_fraction=0.15, test_fraction=0.2, seed=0)
team = {"model": {"class_path": "my_models.TinyResNet", "init_args": {"in_channels": "${in_channels}",
        "n_outputs": "${n_outputs}", "width": 8, "blocks": 1}}, "code": [sys.argv[4]]} if sys.argv[3] == "team" else {}
r = train_stage(p, TrainParams(devices=2, epochs=int(sys.argv[2]), width=8, patience=0, **team), d / "model.pt",
                d / "work.pt", progress=False)
print("resumed_from", r.resumed_from_epoch, "epochs", r.epochs_run, "world", r.world_size)
"""


@pytest.mark.parametrize("model", ["builtin", "team"])
def test_a_killed_run_resumes_on_every_rank_from_the_work_checkpoint(tmp_path, model):
    """Also for the team's own model (examples/team_model), whose code the ranks load."""
    from lepton_core.checkpoint import load_checkpoint

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [str(tmp_path), "12", model, str(root / "examples" / "team_model" / "my_models")]
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    work = tmp_path / "work.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if work.exists():
            try:
                if int(load_checkpoint(work)["epoch"]) >= 2:
                    break
            except Exception:  # noqa: BLE001 - caught between write and rename: look again
                pass
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    group = _descendants(proc.pid)
    assert len(group) >= 3  # torchrun and both ranks (in sessions of their own)
    os.kill(proc.pid, signal.SIGKILL)  # the launching process alone: the rest must follow it
    proc.wait(30)
    deadline = time.monotonic() + 20
    while [pid for pid in group if _running(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in group if _running(pid)], "processes of the killed run left running"
    done = int(load_checkpoint(work)["epoch"])
    assert 2 <= done < 12
    r = subprocess.run([sys.executable, "-c", KILLABLE, *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    resumed = int(r.stdout.split("resumed_from")[1].split()[0])
    assert resumed >= done and "epochs 12" in r.stdout and "world 2" in r.stdout
    if model == "team":
        from lepton_core.predictor import Predictor

        assert type(Predictor.from_checkpoint(tmp_path / "model.pt").model).__name__ == "TinyResNet"


def _descendants(pid: int) -> list[int]:
    ps = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for ln in ps:
        if ln.split():
            c, p = map(int, ln.split())
            children.setdefault(p, []).append(c)
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child its new parent has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_retrain_flow_trains_on_two_processes_and_logs_once_per_epoch(lepton_env, prefect_server):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from flows.retrain import retrain

    before = os.times()
    r = retrain(data=DataParams(), train=DDP, progress=False)
    after = os.times()
    assert r["version"] and r["epochs_run"] == 3
    c = runs.client(get_settings())
    run = c.get_run(r["run_id"])
    assert run.data.tags["lepton.world_size"] == "2"
    # torchrun's ranks are the run's: their CPU seconds (reaped by this process) and peak memory count
    ranks_cpu = after.children_user + after.children_system - before.children_user - before.children_system
    assert ranks_cpu > 1 and run.data.metrics["resources.cpu_seconds"] >= ranks_cpu * 0.99
    assert run.data.metrics["resources.peak_rss_mb"] > 3 * 100  # this process and two ranks with torch loaded
    history = c.get_metric_history(r["run_id"], "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]  # rank 0 alone logged
    assert r["metrics"]["test_accuracy"] > 0.5
