"""Training under fault, through the platform's own paths:

- identical trainings at once (the train task, in concurrent processes): none resumes
  another live one's epochs; a killed one's checkpoint is resumed by the next
  identical training, in the same MLflow run;
- `lepton retrain` (no stack, so with its temporary Prefect server) killed with
  SIGKILL mid-training, three times: its server's whole process tree goes with it,
  no MLflow run is left RUNNING, no temporary file is left, and the final retrain
  continues the epochs in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effects.runtime.procs import pid_alive, port_free
from tests.conftest import ROOT, lepton_env_vars, make_project, run_cli

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# A trainer: the train task in a process of its own (the dataset versioned once before).
TRAINER = """
import os, sys, time
from effects.data.dvc_store import version_dataset
from lepton_core.params import DataParams, Params, TrainParams
from tasks.train import train
import lepton_core.train as core_train
out, epochs, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
release = os.path.join(os.path.dirname(go), "release")
_save = core_train.save_checkpoint
def save_then_wait(*a, **k):  # after its first epoch's checkpoint, wait for the test's word
    r = _save(*a, **k)
    while not os.path.exists(release):
        time.sleep(0.02)
    return r
core_train.save_checkpoint = save_then_wait
data = version_dataset(DataParams())
open(out + ".ready", "w").close()
while not os.path.exists(go):  # all start training together
    time.sleep(0.02)
o = train.fn(data, Params(train=TrainParams(epochs=epochs, model="mlp", width=16, patience=0)), progress=False)
with open(out + ".part", "w") as f:
    f.write(o.model_dump_json())
os.rename(out + ".part", out)
"""
EPOCHS = 12
CONCURRENT = 10  # the figure


class Trainers:
    def __init__(self, base: Path, env: dict[str, str]):
        # one thread each: the trainers share two cores, not as many thread pools fighting
        self.base, self.env, self.n, self.procs = base, {**os.environ, **env, "OMP_NUM_THREADS": "1"}, 0, []

    def start(self) -> tuple[subprocess.Popen, Path]:
        self.n += 1
        out = self.base / f"outcome-{self.n}.json"
        p = subprocess.Popen(
            [sys.executable, "-c", TRAINER, str(out), str(EPOCHS), str(self.base / "go")],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p, out

    @staticmethod
    def outcome(proc: subprocess.Popen, out: Path, timeout: float = 300) -> dict:
        _, err = proc.communicate(timeout=timeout)
        assert out.exists(), f"trainer {proc.pid} ended without an outcome: {err[-3000:]}"
        return json.loads(out.read_text())

    def go(self, timeout: float = 300) -> None:
        """Let every started trainer begin training, once all are ready."""
        deadline = time.monotonic() + timeout
        while len(list(self.base.glob("outcome-*.json.ready"))) < self.n and time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.procs), "a trainer died while starting"
            time.sleep(0.1)
        (self.base / "go").touch()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _epochs_logged(c, run_id: str) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run_id, "val_accuracy"))


def test_identical_concurrent_trainings_never_share_a_checkpoint(tmp_path, monkeypatch):
    """Identical trainings at once, one of them killed mid-training: the
    others each train all epochs from scratch in runs of their own; the next
    identical training resumes the killed one's checkpoint in the killed one's run."""
    make_project(tmp_path / "project")
    env = lepton_env_vars(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from lepton_core.checkpoint import load_checkpoint

    ckdir = get_settings().checkpoints_dir
    runs.ensure_experiment(runs.client(), "lepton")  # the database, made once before the race
    from effects.data.dvc_store import version_dataset
    from lepton_core.params import DataParams

    version_dataset(DataParams())  # once, before the race (prepare has its own lock and cache)
    trainers = Trainers(tmp_path, env)
    try:
        started = [trainers.start() for _ in range(CONCURRENT)]
        trainers.go()
        victim = started[0][0]
        deadline = time.monotonic() + 300
        # Each trainer waits after its first checkpoint until released, so however
        # slow the machine, all are mid-training at once: as many slots should be
        # held. Kill one of them, then let the others go on.
        while len(list(ckdir.glob("train-*.pt"))) < CONCURRENT and time.monotonic() < deadline:
            if any(p.poll() is not None for p, _ in started):
                break
            time.sleep(0.05)
        held = sorted(p.name for p in ckdir.glob("train-*.pt"))
        ended = [(p.pid, p.returncode, p.stderr.read()[-2000:]) for p, _ in started if p.poll() is not None]
        assert not ended, f"a trainer ended before it was released: {ended}"
        assert len(held) == CONCURRENT, f"{CONCURRENT} identical trainings at once share work checkpoints: {held}"
        victim.kill()  # SIGKILL
        victim.wait()
        (tmp_path / "release").touch()
        survivors = [trainers.outcome(*s) for s in started[1:]]
        for o in survivors:
            assert o["resumed_from_epoch"] == 0, f"resumed another live training's epochs: {o}"
            assert o["epochs_run"] == EPOCHS
        assert len({o["run_id"] for o in survivors}) == CONCURRENT - 1
        c = runs.client()
        for o in survivors:
            assert _epochs_logged(c, o["run_id"]) == list(range(1, EPOCHS + 1))

        left = list(ckdir.glob("train-*.pt"))
        assert len(left) == 1, left  # the killed one's; the others removed theirs when done
        state = load_checkpoint(left[0])
        killed_run, killed_epoch = state["mlflow_run_id"], int(state["epoch"])
        assert 1 <= killed_epoch < EPOCHS and killed_run not in {o["run_id"] for o in survivors}
        assert c.get_run(killed_run).info.status == "RUNNING"  # as the kill left it

        resumed = trainers.outcome(*trainers.start())
        assert resumed["run_id"] == killed_run and resumed["resumed_from_epoch"] == killed_epoch
        assert _epochs_logged(c, killed_run) == list(range(1, EPOCHS + 1))  # one run, every epoch once
        assert not list(ckdir.glob("train-*.pt")) and not list(ckdir.glob(".train-*"))
    finally:
        trainers.close()


# ----------------------------------------------------------------------------- lepton retrain, kill -9
def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (by /proc parent links)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _server_port(pids: set[int]) -> int | None:
    for p in pids:
        try:
            args = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in args and b"--port" in args:
            return int(args[args.index(b"--port") + 1])
    return None


RETRAIN_EPOCHS = 16


def _retrain(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from lepton.cli import main; main()",
            "retrain",
            "--no-progress",
            "--set",
            f"train.epochs={RETRAIN_EPOCHS}",
            "--set",
            "train.patience=0",
            "--set",
            "train.width=8",
        ],
        env={**os.environ, **env},
        cwd=env["LEPTON_PROJECT_DIR"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_kill_9_of_lepton_retrain_leaks_nothing_and_the_epochs_continue(tmp_path):
    make_project(tmp_path / "project")
    env = lepton_env_vars(tmp_path)
    ckdir = Path(env["LEPTON_HOME"]) / "checkpoints"
    from lepton_core.checkpoint import load_checkpoint

    last_epoch = 0
    for attempt in range(3):
        proc = _retrain(env)
        try:
            deadline = time.monotonic() + 240
            # mid-training: a work checkpoint past the epoch the last kill left
            while time.monotonic() < deadline and proc.poll() is None:
                cks = list(ckdir.glob("train-*.pt"))
                try:
                    if cks and int(load_checkpoint(cks[0])["epoch"]) > last_epoch:
                        break
                except Exception:  # replaced while read: look again
                    pass
                time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            tree = _descendants(proc.pid)
            port = _server_port(tree)
            assert tree and port, "no temporary Prefect server below lepton retrain"
            os.kill(proc.pid, signal.SIGKILL)  # the command alone, as a user's kill -9 does
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (any(pid_alive(p) for p in tree) or not port_free(port)):
            time.sleep(0.2)
        alive = [p for p in tree if pid_alive(p)]
        for p in alive:  # the test's own clean-up; the assertion below still fails
            os.kill(p, signal.SIGKILL)
        assert not alive, f"kill {attempt + 1}: processes outlived lepton retrain: {alive}"
        assert port_free(port), f"kill {attempt + 1}: the temporary server's port {port} is still held"
        last_epoch = int(load_checkpoint(next(ckdir.glob("train-*.pt")))["epoch"])

    done = run_cli(
        [
            "retrain",
            "--no-progress",
            "--json",
            "--set",
            f"train.epochs={RETRAIN_EPOCHS}",
            "--set",
            "train.patience=0",
            "--set",
            "train.width=8",
        ],
        env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{") :])["result"]
    assert result["resumed_from_epoch"] == last_epoch > 0 and result["epochs_run"] == RETRAIN_EPOCHS

    from mlflow.tracking import MlflowClient

    c = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=100)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}, [(r.info.run_id, r.info.status) for r in runs]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert [r.info.run_id for r in finished] == [result["run_id"]]
    assert _epochs_logged(c, result["run_id"]) == list(range(1, RETRAIN_EPOCHS + 1))  # one run, every epoch once
    home = Path(env["LEPTON_HOME"])
    assert not [p for p in home.rglob(".*.tmp")], "temporary files left"
    assert not list(ckdir.glob("train-*"))
