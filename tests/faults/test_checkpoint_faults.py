"""Work checkpoints under fault: unreadable or hostile files are moved aside (never
loaded unsafely, never blocking a retrain), and a training killed with SIGKILL
while it writes a checkpoint leaves it loadable or absent, never half-written;
the next run removes the dead writer's temporaries, resumes, and ends with the
same model as a training that was never killed."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lepton_core.checkpoint import (
    UnreadableCheckpoint,
    load_checkpoint,
    load_work_checkpoint,
    remove_partial_writes,
)
from lepton_core.models import ModelConfig
from lepton_core.params import TrainParams
from lepton_core.train import train_model
from tests.conftest import ROOT

pytestmark = pytest.mark.faults


class _Evil:
    """A pickle that would create `marker` if it were ever unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "model": {"w": torch.zeros(64, 64)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path, marker: Path) -> None:
    path.write_bytes(os.urandom(5000))


def _malicious_torch(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "payload": _Evil(marker)}, path)  # a zip archive with a hostile data.pkl


def _malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Evil(marker)))


def _empty(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


def _wrong_shape(path: Path, marker: Path) -> None:
    torch.save({"epoch": 3}, path)  # loads, but is no work checkpoint


BAD_FILES = [_truncated, _random_bytes, _malicious_torch, _malicious_pickle, _empty, _wrong_shape]

CFG = ModelConfig(kind="mlp", input_shape=(6,), n_classes=3, width=8, depth=1)


def _data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x[:90], y[:90], x[90:], y[90:]


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__.strip("_"))
def test_an_unreadable_work_checkpoint_is_moved_aside_and_training_starts_afresh(make, tmp_path):
    marker = tmp_path / "PWNED"
    ck = tmp_path / "train-x.pt"
    make(ck, marker)
    original = ck.read_bytes()
    notes: list[str] = []
    res = train_model(
        CFG, TrainParams(epochs=2, width=8, depth=1), *_data(), checkpoint_path=ck, progress=False, note=notes.append
    )
    assert not marker.exists(), "the file's code ran"
    assert res.resumed_from_epoch == 0 and res.epochs_run == 2
    aside = list(tmp_path.glob("train-x.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == original  # kept as it was, out of the way
    assert len(notes) == 1 and "\n" not in notes[0] and str(aside[0]) in notes[0]
    assert "weights_only" not in notes[0] and "training from scratch" in notes[0]
    assert load_checkpoint(ck)["finished"] is True  # the new training's own checkpoint


@pytest.mark.parametrize("make", BAD_FILES[:4], ids=lambda f: f.__name__.strip("_"))
def test_loading_an_unreadable_checkpoint_never_advises_unsafe_loading(make, tmp_path):
    marker = tmp_path / "PWNED"
    make(tmp_path / "model.pt", marker)
    with pytest.raises(UnreadableCheckpoint) as e:
        load_checkpoint(tmp_path / "model.pt")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_the_train_task_moves_a_corrupt_checkpoint_aside_and_says_so(tmp_path, monkeypatch, capfd):
    """Through the retrain's train task: one warning line naming the moved file, a
    fresh training, no traceback, no advice to load unsafely."""
    from tests.conftest import lepton_env_vars, make_project

    make_project(tmp_path / "project")
    for k, v in lepton_env_vars(tmp_path).items():
        monkeypatch.setenv(k, v)
    from effects.data.dvc_store import version_dataset
    from effects.runtime.settings import get_settings
    from lepton_core.params import DataParams, Params
    from tasks.train import train, work_checkpoint

    data = version_dataset(DataParams())
    params = Params(train=TrainParams(epochs=2, width=8, patience=0))
    ck = work_checkpoint(get_settings().checkpoints_dir, data.version, params.train)
    marker = tmp_path / "PWNED"
    ck.parent.mkdir(parents=True, exist_ok=True)
    _malicious_torch(ck, marker)
    import logging

    from tasks.train import _logger

    # The task's own log records, whatever an earlier test did to the console handlers
    # (pytest's capture can leave Prefect's handler writing to a closed stream).
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append
    task_logger = _logger()
    task_logger.addHandler(catcher)
    capfd.readouterr()
    try:
        out = train.fn(data, params, progress=False)
    finally:
        task_logger.removeHandler(catcher)
    printed = capfd.readouterr()
    assert not marker.exists()
    assert out.resumed_from_epoch == 0 and out.epochs_run == 2
    warned = [r for r in records if "moved aside" in r.getMessage()]
    aside = list(ck.parent.glob(ck.name + ".corrupt-*"))
    assert len(warned) == 1 and len(aside) == 1 and str(aside[0]) in warned[0].getMessage()
    assert warned[0].levelname == "WARNING" and "\n" not in warned[0].getMessage()
    text = printed.out + printed.err + "\n".join(r.getMessage() for r in records)
    assert "weights_only" not in text and "Traceback" not in text


# ----------------------------------------------------------------------------- kill -9 while writing
# Trainers are forked from one process that has imported torch already (a few
# seconds saved per start); each trains a model big enough that a checkpoint takes
# some milliseconds to write. The test watches the folder and kills the trainer with
# SIGKILL the moment a temporary appears, in the middle of a checkpoint write.
FORKER = """
import json, os, signal, sys, torch
from lepton_core.models import ModelConfig
from lepton_core.params import TrainParams
from lepton_core.train import train_model
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
for line in sys.stdin:
    ck, out, epochs = json.loads(line)
    pid = os.fork()
    if pid == 0:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(600, 32, generator=g); y = (x[:, 0] > 0).long()
        cfg = ModelConfig(kind="mlp", input_shape=(32,), n_classes=2, width=768, depth=3)
        res = train_model(cfg, TrainParams(epochs=epochs, width=768, depth=3, patience=0, batch_size=200),
                          x[:500], y[:500], x[500:], y[500:], checkpoint_path=ck or None, progress=False)
        with open(out + ".part", "w") as f:
            json.dump({"resumed_from_epoch": res.resumed_from_epoch, "epochs_run": res.epochs_run,
                       "weights": float(sum(v.double().sum() for v in res.model.state_dict().values()))}, f)
        os.rename(out + ".part", out)
        os._exit(0)
    print(pid, flush=True)
"""
EPOCHS = 6


class Forker:
    def __init__(self, tmp: Path):
        self.tmp, self.n = tmp, 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def train(self, ck: Path | None) -> tuple[int, Path]:
        self.n += 1
        out = self.tmp / f"result-{self.n}.json"
        self.proc.stdin.write(json.dumps([str(ck or ""), str(out), EPOCHS]) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()), out

    def result(self, pid: int, out: Path, timeout: float = 300) -> dict:
        from effects.runtime.procs import pid_alive

        deadline = time.monotonic() + timeout
        while not out.exists() and pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.exists(), f"trainer {pid} ended without a result"
        return json.loads(out.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _kill_during_a_write(forker: Forker, ck: Path, skip_writes: int) -> bool:
    """Start a trainer; SIGKILL it while a checkpoint temporary exists (after
    `skip_writes` earlier writes). True if the kill landed inside a write."""
    from effects.runtime.procs import pid_alive

    pid, out = forker.train(ck)
    seen, in_write = 0, False
    pattern = f".{ck.name}."
    deadline = time.monotonic() + 120
    try:
        while pid_alive(pid) and time.monotonic() < deadline:
            tmp = [e for e in os.scandir(ck.parent) if e.name.startswith(pattern) and e.name.endswith(".tmp")]
            if tmp:
                if seen >= skip_writes:
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.05)
                    in_write = any(Path(t.path).exists() for t in tmp)
                    break
                seen += 1
                while any(Path(t.path).exists() for t in tmp) and pid_alive(pid):
                    time.sleep(0.0005)  # wait for this write to finish
            time.sleep(0.0005)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    return in_write


def test_kill_9_during_checkpoint_writes_loses_nothing(tmp_path):
    """SIGKILLs inside checkpoint writes (3 that land inside one, at most 6 tries):
    after each, the checkpoint is absent or loads whole; the next run removes the
    dead writer's temporary (as the train task does), resumes, and ends with exactly
    the weights of a training that was never interrupted."""
    ck = tmp_path / "work" / "train-k.pt"
    ck.parent.mkdir()
    forker = Forker(tmp_path)
    try:
        landed = tries = last_epoch = 0
        while landed < 3 and tries < 6:
            tries += 1
            stale = list(ck.parent.glob(".train-k.pt.*.tmp"))
            assert len(stale) == (1 if landed else 0)  # a killed writer leaves its temporary...
            remove_partial_writes(ck)  # ...which the next run removes first
            landed += _kill_during_a_write(forker, ck, skip_writes=1)
            if ck.exists():
                state = load_checkpoint(ck)  # never half-written: raises if it were
                assert int(state["epoch"]) >= last_epoch  # and never goes back
                last_epoch = int(state["epoch"])
        assert landed == 3, f"only {landed} of {tries} kills landed inside a write"
        assert 0 < last_epoch < EPOCHS
        remove_partial_writes(ck)
        resumed = forker.result(*forker.train(ck))
        assert resumed["resumed_from_epoch"] == last_epoch and resumed["epochs_run"] == EPOCHS
        assert not list(ck.parent.glob(".*.tmp"))
        clean = forker.result(*forker.train(None))  # never interrupted (checkpoints do not change the result)
        assert clean["weights"] == resumed["weights"]
    finally:
        forker.close()


def test_work_checkpoint_look_is_cheap_and_safe(tmp_path):
    """The train task looks inside a work checkpoint (memory-mapped) for the MLflow
    run it belongs to before training resumes from it."""
    ck = tmp_path / "train-y.pt"
    train_model(
        CFG,
        TrainParams(epochs=2, width=8, depth=1),
        *_data(),
        checkpoint_path=ck,
        progress=False,
        extra_state={"mlflow_run_id": "abc"},
    )
    state, note = load_work_checkpoint(ck, mmap=True)
    assert note is None and state["mlflow_run_id"] == "abc" and state["epoch"] == 2
    assert load_work_checkpoint(tmp_path / "none.pt") == (None, None)
