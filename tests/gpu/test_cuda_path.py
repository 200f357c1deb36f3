"""The CUDA path of the core, run for real: training (bf16 autocast, channels_last,
device-resident data, compile), resume after SIGKILL, checkpoints that load on the
CPU, and predictor, evaluation and gate statistics that agree between CPU and GPU.

Every test here needs CUDA; elsewhere each is reported as skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint
from lepton_core.evaluate import SUMMARY_KEYS, classification_metrics, correct_mask
from lepton_core.gate import decide_promotion, mcnemar_exact
from lepton_core.models import build_model
from lepton_core.params import PromoteParams
from lepton_core.predictor import Predictor
from lepton_core.train import train_on_prepared
from tests.gpu import common

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Tolerances, each for one named source of difference.
LOGIT_ATOL_FP32 = 1e-3  # fp32 on CPU vs fp32 on GPU (TF32 off): summation order only
LOGIT_ATOL_DEFAULT = 5e-2  # vs the GPU's default numerics (TF32 convolutions: 10-bit mantissa)
MAX_NEAR_TIE_SHARE = 0.005  # samples whose top-2 logits are within 2 x tolerance: labels may differ there
VAL_ACC_ATOL = 0.02  # training measured val accuracy under bf16 autocast; the CPU predictor runs fp32
FLOAT_ATOL = 1e-12  # metrics of identical labels: the same float arithmetic on either side


def all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_tensors(v)


def predictors(checkpoint) -> tuple[Predictor, Predictor]:
    return Predictor.from_checkpoint(checkpoint, device="cpu"), Predictor.from_checkpoint(
        checkpoint, device=common.DEVICE
    )


def compare_labels(cpu: Predictor, gpu: Predictor, x_raw: np.ndarray, atol: float):
    """Logits within `atol`, and the same labels wherever the CPU's top two logits are
    more than 2 x atol apart. Returns both predictions and how many labels differ."""
    lc, lg = cpu.logits(x_raw), gpu.logits(x_raw)
    assert lc.shape == lg.shape == (len(x_raw), cpu.model_config.n_classes)
    diff = float(np.abs(lg - lc).max())
    print(f"max |logit(gpu) - logit(cpu)| = {diff:.3g} (tolerance {atol})")
    assert diff <= atol
    top2 = np.sort(lc, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) <= 2 * atol
    assert near_tie.mean() <= MAX_NEAR_TIE_SHARE
    pc, pg = cpu.predict(x_raw), gpu.predict(x_raw)
    differ = pc.labels != pg.labels
    assert not (differ & ~near_tie).any()
    return pc, pg, int(differ.sum())


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("run_name", ["digits_run", "synthetic_run"])
def test_trains_on_cuda(run_name, request):
    run = request.getfixturevalue(run_name)
    res = run.result
    assert common.on_device(res.device)
    assert res.epochs_run == run.params.epochs and res.resumed_from_epoch == 0
    floor = 0.9 if run_name == "digits_run" else 0.6  # synthetic: chance is 0.1, label noise caps it near 0.91
    assert res.best_val_accuracy >= floor, res.history
    assert all(np.isfinite(list(h.values())).all() for h in res.history)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    # the returned model is back on the CPU, in the default memory format
    for t in res.model.state_dict().values():
        assert t.device.type == "cpu" and t.is_contiguous()
    assert not res.model.training and res.compile_seconds == 0.0


def test_resume_after_sigkill(tmp_path):
    """Train in a subprocess, SIGKILL it once a checkpoint of epoch >= 1 is on disk,
    run it again: it resumes from the checkpoint's epoch and finishes."""
    ck, epochs = tmp_path / "ck.pt", 20
    cmd = [sys.executable, "-m", "tests.gpu.train_child", str(ck), "--device", common.DEVICE, "--epochs", str(epochs)]
    first = subprocess.Popen(
        [*cmd, "--epoch-sleep", "0.5"], cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if ck.exists() and load_checkpoint(ck)["epoch"] >= 1:
                os.kill(first.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if first.poll() is None and time.monotonic() >= deadline:
            first.kill()
        _, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, err[-2000:]

    killed = load_checkpoint(ck)
    at = int(killed["epoch"])
    assert 1 <= at < epochs and killed["finished"] is False
    assert all(t.device.type == "cpu" for t in all_tensors(killed))

    second = subprocess.run([*cmd, "--epoch-sleep", "0"], cwd=common.ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    out = json.loads(second.stdout.strip().splitlines()[-1])
    assert common.on_device(out["device"])
    assert out["resumed_from_epoch"] == at
    assert out["epochs_run"] == epochs and out["history_epochs"] == list(range(1, epochs + 1))
    assert out["best_val_accuracy"] >= 0.9
    done = load_checkpoint(ck)
    assert done["epoch"] == epochs and done["finished"] is True
    assert done["history"][:at] == killed["history"]  # the epochs before the kill are kept, not rerun


# ----------------------------------------------------------------------------- checkpoints
def test_gpu_checkpoints_load_on_a_cpu_only_process(digits_run, tmp_path):
    """Both checkpoints a GPU run writes hold CPU tensors only: a process that sees no
    GPU loads them with plain torch.load, and its predictor labels as ours does."""
    for path in (digits_run.checkpoint, digits_run.final):
        assert all(t.device.type == "cpu" for t in all_tensors(load_checkpoint(path)))
    np.save(tmp_path / "x.npy", digits_run.x_test)
    code = (
        "import sys, numpy as np, torch\n"
        "from lepton_core.checkpoint import model_from_checkpoint\n"
        "from lepton_core.predictor import Predictor\n"
        "assert not torch.cuda.is_available()\n"
        "state = torch.load(sys.argv[1], weights_only=True)\n"  # no map_location
        "model, cfg = model_from_checkpoint(state, 'best_model')\n"
        "p = Predictor.from_checkpoint(torch.load(sys.argv[2], weights_only=True))\n"
        "np.save(sys.argv[4], p.logits(np.load(sys.argv[3])))\n"
    )
    out = tmp_path / "logits.npy"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(digits_run.checkpoint),
            str(digits_run.final),
            str(tmp_path / "x.npy"),
            str(out),
        ],
        cwd=common.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = Predictor.from_checkpoint(digits_run.final, device="cpu").logits(digits_run.x_test)
    theirs = np.load(out)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)  # CPU vs CPU
    assert np.array_equal(theirs.argmax(1), ours.argmax(1))
    # the per-epoch checkpoint's best weights are the returned model's
    model, _ = model_from_checkpoint(load_checkpoint(digits_run.checkpoint), "best_model")
    for k, v in digits_run.result.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# ----------------------------------------------------------------------------- predictor
@pytest.mark.parametrize("run_name", ["digits_run", "synthetic_run"])
def test_cpu_predictor_gives_the_gpu_labels(run_name, request, fp32_numerics):
    run = request.getfixturevalue(run_name)
    cpu, gpu = predictors(run.final)
    assert common.on_device(next(gpu.model.parameters()).device)
    assert next(cpu.model.parameters()).device.type == "cpu"
    pc, pg, differ = compare_labels(cpu, gpu, run.x_test, LOGIT_ATOL_FP32)
    print(f"{run_name}: {differ} of {len(run.x_test)} test labels differ (near ties only)")
    assert pc.names == [run.preprocessing.classes[i] for i in pc.labels]
    np.testing.assert_allclose(pc.probabilities, pg.probabilities, rtol=0, atol=1e-4)
    # the CPU predictor reproduces the validation accuracy training measured on the GPU
    val_acc = float((cpu.predict(run.x_val).labels == run.y_val).mean())
    print(f"{run_name}: val accuracy in training {run.result.best_val_accuracy:.4f}, CPU predictor {val_acc:.4f}")
    assert abs(val_acc - run.result.best_val_accuracy) <= VAL_ACC_ATOL


@pytest.mark.parametrize("run_name", ["digits_run", "synthetic_run"])
def test_predictor_with_default_cuda_numerics(run_name, request):
    """What serving on the GPU does by default (TF32 convolutions) still agrees with the CPU."""
    run = request.getfixturevalue(run_name)
    _, _, differ = compare_labels(*predictors(run.final), run.x_test, LOGIT_ATOL_DEFAULT)
    print(f"{run_name} (default numerics): {differ} of {len(run.x_test)} test labels differ (near ties only)")


# ----------------------------------------------------------------------------- evaluation and gate
def test_evaluation_and_gate_agree_between_cpu_and_gpu(digits_run, digits_champion, fp32_numerics):
    x, y = digits_run.x_test, digits_run.y_test
    n = len(y)
    ch_cpu, ch_gpu = predictors(digits_run.final)
    champ_cpu, champ_gpu = predictors(digits_champion.final)
    _, _, d1 = compare_labels(ch_cpu, ch_gpu, x, LOGIT_ATOL_FP32)
    _, _, d2 = compare_labels(champ_cpu, champ_gpu, x, LOGIT_ATOL_FP32)
    # each differing label (a near tie) moves a count by one: the metrics' tolerance
    tol = FLOAT_ATOL + (d1 + d2) / n

    m_cpu = classification_metrics(y, ch_cpu.predict(x).labels, ch_cpu.classes)
    m_gpu = classification_metrics(y, ch_gpu.predict(x).labels, ch_gpu.classes)
    for k in SUMMARY_KEYS:
        assert m_cpu[k] == pytest.approx(m_gpu[k], abs=tol), k
    for c in ch_cpu.classes:
        for k in ("precision", "recall", "f1"):
            assert m_cpu["per_class"][c][k] == pytest.approx(m_gpu["per_class"][c][k], abs=tol * n), (c, k)
    assert m_cpu["accuracy"] >= 0.9

    params = PromoteParams()
    stats = {}
    for side, (chal, champ) in {"cpu": (ch_cpu, champ_cpu), "gpu": (ch_gpu, champ_gpu)}.items():
        z, a = correct_mask(chal, x, y), correct_mask(champ, x, y)
        stats[side] = (mcnemar_exact(a, z), decide_promotion(z, a, params))
    (b_c, c_c, p_c), dec_c = stats["cpu"]
    (b_g, c_g, p_g), dec_g = stats["gpu"]
    print(
        f"McNemar cpu b={b_c} c={c_c} p={p_c:.6g}; gpu b={b_g} c={c_g} p={p_g:.6g}; "
        f"decision {dec_c.promote} / {dec_g.promote}: {dec_c.reason}"
    )
    assert b_c + c_c > 0  # the two models disagree somewhere: the test has something to compare
    assert abs(b_c - b_g) <= d1 + d2 and abs(c_c - c_g) <= d1 + d2
    if d1 + d2 == 0:
        assert (b_c, c_c) == (b_g, c_g) and p_c == pytest.approx(p_g, abs=FLOAT_ATOL)
    assert dec_c.promote == dec_g.promote
    assert dec_c.challenger_accuracy == pytest.approx(dec_g.challenger_accuracy, abs=tol)
    assert dec_c.champion_accuracy == pytest.approx(dec_g.champion_accuracy, abs=tol)
    assert dec_c.p_value == pytest.approx(dec_g.p_value, abs=FLOAT_ATOL if d1 + d2 == 0 else 1.0)


# ----------------------------------------------------------------------------- amp and compile
def test_fp32_and_compiled_training_on_cuda(digits, digits_run, tmp_path):
    from lepton_core.predictor import Preprocessing

    pre = Preprocessing.from_meta(digits.meta)
    fp32 = train_on_prepared(digits, common.digits_params(epochs=3, amp=False), pre, progress=False)
    assert common.on_device(fp32.device) and fp32.best_val_accuracy >= 0.8, fp32.history

    params = common.digits_params(epochs=3, compile=True)
    ck = tmp_path / "ck.pt"
    comp = train_on_prepared(digits, params, pre, ck, progress=False)
    print(f"compile warm-up: {comp.compile_seconds:.1f} s")
    assert comp.compile_seconds > 0 and common.on_device(comp.device)
    assert comp.best_val_accuracy >= 0.8, comp.history
    # the compiled run's weights and checkpoint keep the plain module's names
    plain = set(build_model(comp.model_config).state_dict())
    assert type(comp.model) is type(digits_run.result.model)
    assert set(comp.model.state_dict()) == plain == set(load_checkpoint(ck)["model"])
    # compile is no part of a checkpoint's identity: the finished run is found without it
    again = train_on_prepared(digits, common.digits_params(epochs=3), pre, ck, progress=False)
    assert again.resumed_from_epoch == 3 and again.epochs_run == 3 and again.compile_seconds == 0.0
