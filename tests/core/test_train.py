"""Training loop: learning, determinism, logging, early stopping, checkpoints, resume, LR schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from lepton_core.models import ModelConfig
from lepton_core.params import TrainParams
from lepton_core.predictor import Preprocessing, model_input
from lepton_core.train import choose_device, lr_factor, train_model

METRIC_KEYS = {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}


def blobs(n: int, f: int = 6, k: int = 3, seed: int = 0, spread: float = 4.0):
    """Well separated Gaussian blobs: (N, F) float32 and (N,) int64."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(123).normal(size=(k, f)) * spread
    y = np.arange(n) % k
    x = centers[y] + rng.normal(size=(n, f))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def images(n: int, seed: int = 0):
    """1x8x8 images whose class is the bright quadrant (plus noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.3
    x[y == 0, :, :4, :] += 0.7
    x[y == 1, :, 4:, :] += 0.7
    return torch.from_numpy(x), torch.tensor(y, dtype=torch.int64)


MLP_CFG = ModelConfig(kind="mlp", input_shape=(6,), n_classes=3, width=16, depth=2, dropout=0.2)
CNN_CFG = ModelConfig(kind="cnn", input_shape=(1, 8, 8), n_classes=2, width=4, depth=1, dropout=0.1)


def tp(**kw) -> TrainParams:
    base = dict(epochs=5, batch_size=32, lr=1e-2, device="cpu", patience=0, warmup_epochs=1.0, seed=0)
    base.update(kw)
    return TrainParams(**base)


@pytest.fixture(scope="module")
def tab():
    xt, yt = blobs(240, seed=0)
    xv, yv = blobs(90, seed=1)
    return xt, yt, xv, yv


@pytest.fixture(scope="module")
def img():
    xt, yt = images(96, seed=0)
    xv, yv = images(40, seed=1)
    return xt, yt, xv, yv


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- learning
def test_learns_separable_tabular(tab):
    xt, yt, xv, yv = tab
    res = train_model(MLP_CFG, tp(epochs=8), xt, yt, xv, yv, progress=False)
    assert res.best_val_accuracy >= 0.95
    assert res.epochs_run == 8 and len(res.history) == 8
    assert res.resumed_from_epoch == 0 and res.stopped_early is False and res.device == "cpu"
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert not res.model.training
    with torch.no_grad():
        acc = (res.model(xv).argmax(1) == yv).float().mean().item()
    assert acc == pytest.approx(res.best_val_accuracy)


def test_learns_images_with_cnn(img):
    xt, yt, xv, yv = img
    res = train_model(CNN_CFG, tp(epochs=6, batch_size=16, lr=2e-2), xt, yt, xv, yv, progress=False)
    assert res.best_val_accuracy >= 0.9


def test_same_seed_identical_weights(tab):
    xt, yt, xv, yv = tab
    a = train_model(MLP_CFG, tp(epochs=3), xt, yt, xv, yv, progress=False)
    b = train_model(MLP_CFG, tp(epochs=3), xt, yt, xv, yv, progress=False)
    assert same_state(a.model.state_dict(), b.model.state_dict())
    assert a.history == b.history
    c = train_model(MLP_CFG, tp(epochs=3, seed=1), xt, yt, xv, yv, progress=False)
    assert not same_state(a.model.state_dict(), c.model.state_dict())


def test_log_called_once_per_epoch(tab):
    xt, yt, xv, yv = tab
    calls = []
    params = tp(epochs=4)
    res = train_model(MLP_CFG, params, xt, yt, xv, yv, log=lambda s, m: calls.append((s, dict(m))), progress=False)
    assert [s for s, _ in calls] == [1, 2, 3, 4]
    for _step, m in calls:
        assert set(m) == METRIC_KEYS
        assert all(isinstance(v, float) and math.isfinite(v) for v in m.values())
        assert 0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["train_accuracy"] <= 1.0
    # the logged LR is the schedule's value after the epoch's last optimizer step
    steps = math.ceil(len(xt) / params.batch_size)
    total, warmup = steps * params.epochs, int(params.warmup_epochs * steps)
    for step, m in calls:
        assert m["lr"] == pytest.approx(params.lr * lr_factor(step * steps, total, warmup, params.schedule))
    assert calls[-1][1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert [h["epoch"] for h in res.history] == [1.0, 2.0, 3.0, 4.0]
    assert [h["val_accuracy"] for h in res.history] == [m["val_accuracy"] for _, m in calls]


def test_early_stopping(tab):
    xt, yt, xv, yv = tab
    res = train_model(MLP_CFG, tp(epochs=60, patience=2), xt, yt, xv, yv, progress=False)
    assert res.stopped_early is True
    assert res.epochs_run < 60
    assert res.epochs_run == res.best_epoch + 2
    accs = [h["val_accuracy"] for h in res.history]
    assert res.best_val_accuracy == max(accs) == accs[res.best_epoch - 1]
    assert all(a <= res.best_val_accuracy for a in accs[res.best_epoch :])


def test_returns_best_not_last_model(tab, tmp_path):
    xt, yt, xv, yv = tab
    ck = tmp_path / "ck.pt"
    res = train_model(MLP_CFG, tp(epochs=6), xt, yt, xv, yv, checkpoint_path=ck, progress=False)
    state = load_checkpoint(ck)
    assert state["best_epoch"] == res.best_epoch
    assert same_state(res.model.state_dict(), state["best_model"])


# ----------------------------------------------------------------------------- checkpoints & resume
class Interrupt:
    def __init__(self, at: int):
        self.at, self.seen = at, []

    def __call__(self, step, metrics):
        self.seen.append(step)
        if step == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_resume_after_interrupt_matches_uninterrupted(which, tab, img, tmp_path):
    cfg, (xt, yt, xv, yv) = (MLP_CFG, tab) if which == "mlp" else (CNN_CFG, img)
    params = tp(epochs=5, batch_size=16 if which == "cnn" else 32)
    full = train_model(cfg, params, xt, yt, xv, yv, checkpoint_path=tmp_path / "full.pt", progress=False)

    ck = tmp_path / "run.pt"
    stop = Interrupt(at=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, params, xt, yt, xv, yv, log=stop, checkpoint_path=ck, progress=False)
    assert stop.seen == [1, 2]
    assert load_checkpoint(ck)["epoch"] == 2 and not load_checkpoint(ck)["finished"]

    seen = []
    res = train_model(cfg, params, xt, yt, xv, yv, log=lambda s, m: seen.append(s), checkpoint_path=ck, progress=False)
    assert res.resumed_from_epoch == 2
    assert seen == [3, 4, 5]
    assert res.epochs_run == 5 and res.best_epoch == full.best_epoch
    assert same_state(res.model.state_dict(), full.model.state_dict())
    assert res.history == full.history
    # last weights, optimizer-free view: the checkpoints agree too
    a, b = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(ck)
    assert same_state(a["model"], b["model"])
    assert a["finished"] is True and b["finished"] is True


def test_finished_checkpoint_is_not_retrained(tab, tmp_path):
    xt, yt, xv, yv = tab
    ck = tmp_path / "ck.pt"
    first = train_model(MLP_CFG, tp(epochs=3), xt, yt, xv, yv, checkpoint_path=ck, progress=False)
    seen = []
    again = train_model(
        MLP_CFG, tp(epochs=3), xt, yt, xv, yv, log=lambda s, m: seen.append(s), checkpoint_path=ck, progress=False
    )
    assert seen == [] and again.resumed_from_epoch == 3 and again.epochs_run == 3
    assert same_state(first.model.state_dict(), again.model.state_dict())
    # resume=False starts over
    fresh = train_model(MLP_CFG, tp(epochs=3), xt, yt, xv, yv, checkpoint_path=ck, resume=False, progress=False)
    assert fresh.resumed_from_epoch == 0


def test_checkpoint_for_other_params_is_refused(tab, tmp_path):
    xt, yt, xv, yv = tab
    ck = tmp_path / "ck.pt"
    train_model(MLP_CFG, tp(epochs=2), xt, yt, xv, yv, checkpoint_path=ck, progress=False)
    with pytest.raises(ValueError, match="another model or params"):
        train_model(MLP_CFG, tp(epochs=2, lr=0.5), xt, yt, xv, yv, checkpoint_path=ck, progress=False)
    other = ModelConfig(kind="mlp", input_shape=(6,), n_classes=3, width=8, depth=1)
    with pytest.raises(ValueError, match="another model or params"):
        train_model(other, tp(epochs=2), xt, yt, xv, yv, checkpoint_path=ck, progress=False)


def test_checkpoint_loads_weights_only_and_rebuilds_model(img, tmp_path):
    xt, yt, xv, yv = img
    ck = tmp_path / "sub" / "ck.pt"
    res = train_model(
        CNN_CFG,
        tp(epochs=2, batch_size=16),
        xt,
        yt,
        xv,
        yv,
        checkpoint_path=ck,
        progress=False,
        extra_state={"prepared_hash": "abc123"},
    )
    raw = torch.load(ck, weights_only=True)  # plain values and tensors only
    assert raw["epoch"] == 2 and raw["prepared_hash"] == "abc123"
    state = load_checkpoint(ck)
    assert state["model_config"] == CNN_CFG.model_dump(mode="json")
    model, cfg = model_from_checkpoint(state, "best_model")
    assert cfg == CNN_CFG and not model.training
    with torch.no_grad():
        assert torch.equal(model(xv), res.model(xv))
    last, _ = model_from_checkpoint(state)
    assert same_state(last.state_dict(), state["model"])
    # no temp files left beside the checkpoint
    assert [p.name for p in ck.parent.iterdir()] == ["ck.pt"]


def test_save_checkpoint_atomic_replace(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, p)
    save_checkpoint({"epoch": 2, "w": torch.zeros(2)}, p)
    state = load_checkpoint(p)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.zeros(2))
    assert [q.name for q in tmp_path.iterdir()] == ["c.pt"]


# ----------------------------------------------------------------------------- LR schedules
def test_cosine_with_warmup():
    total, warmup = 200, 20
    f = [lr_factor(s, total, warmup, "cosine") for s in range(total + 1)]
    assert f[0] == pytest.approx(1 / warmup)  # starts low
    assert all(a < b for a, b in zip(f[:warmup], f[1:warmup]))  # rises during warm-up
    assert f[warmup - 1] == pytest.approx(1.0) and f[warmup] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1 :]))  # then only decays
    assert f[total - 1] < 1e-3 and f[total] == pytest.approx(0.0, abs=1e-12)
    assert f[(total + warmup) // 2] == pytest.approx(0.5)
    # no warm-up: starts at the peak
    assert lr_factor(0, total, 0, "cosine") == 1.0


def test_onecycle():
    total = 100
    f = [lr_factor(s, total, 0, "onecycle") for s in range(total + 1)]
    peak = int(0.3 * total)
    assert f[0] == pytest.approx(0.04)
    assert all(a < b for a, b in zip(f[:peak], f[1 : peak + 1]))
    assert f[peak] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[peak:], f[peak + 1 :]))
    assert f[total - 1] < 1e-3 and f[total] == pytest.approx(0.0, abs=1e-12)


def test_onecycle_training_logs_schedule(tab):
    xt, yt, xv, yv = tab
    params = tp(epochs=4, schedule="onecycle")
    lrs = []
    train_model(MLP_CFG, params, xt, yt, xv, yv, log=lambda s, m: lrs.append(m["lr"]), progress=False)
    steps = math.ceil(len(xt) / params.batch_size)
    expected = [params.lr * lr_factor(e * steps, steps * 4, 0, "onecycle") for e in range(1, 5)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] > lrs[-1]


# ----------------------------------------------------------------------------- helpers
def test_model_input():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    img = Preprocessing(kind="image", input_shape=(1, 4, 4), dtype="uint8", scale=1 / 255, classes=("a", "b"))
    cnn = ModelConfig(kind="cnn", input_shape=(1, 4, 4), n_classes=2)
    t = model_input(x, img, cnn)
    assert t.dtype == torch.float32 and t.shape == (2, 1, 4, 4)
    assert t.max().item() == pytest.approx(31 / 255)
    mlp = ModelConfig(kind="mlp", input_shape=(16,), n_classes=2)
    t2 = model_input(x, img, mlp)
    assert t2.shape == (2, 16)
    tab = Preprocessing(kind="tabular", input_shape=(5,), dtype="float32", scale=1.0, classes=("a", "b"))
    t3 = model_input(np.ones((3, 5), np.float32) * 7, tab, ModelConfig(kind="mlp", input_shape=(5,), n_classes=2))
    assert torch.equal(t3, torch.full((3, 5), 7.0))


def test_choose_device_cpu():
    assert choose_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert choose_device("auto").type == "cpu"
        with pytest.raises(RuntimeError):
            choose_device("cuda")
