"""Models trained once per session on the GPU, for the tests in this folder.
Fixtures only run for tests that run, so without CUDA (all skipped) nothing here runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_core.models import ModelConfig
from lepton_core.params import TrainParams
from lepton_core.predictor import Preprocessing, check_samples, model_input
from lepton_core.train import TrainResult, save_trained_model, train_model, train_on_prepared
from tests.gpu import common


@dataclass
class Run:
    """A training run on the GPU and the checkpoints it wrote."""

    result: TrainResult
    params: TrainParams
    preprocessing: Preprocessing
    checkpoint: Path  # the per-epoch (resume) checkpoint
    final: Path  # save_trained_model's checkpoint of the best weights
    x_val: np.ndarray  # raw samples
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits():
    return common.digits_prepared()


def _digits_run(prepared, tmp: Path, **kw) -> Run:
    params = common.digits_params(**kw)
    pre = Preprocessing.from_meta(prepared.meta)
    res = train_on_prepared(prepared, params, pre, tmp / "ck.pt", progress=False)
    final = save_trained_model(res, params, pre, prepared.meta, tmp / "model.pt")
    return Run(
        res,
        params,
        pre,
        tmp / "ck.pt",
        final,
        prepared.x["val"],
        prepared.y["val"],
        prepared.x["test"],
        prepared.y["test"],
    )


@pytest.fixture(scope="session")
def digits_run(digits, tmp_path_factory) -> Run:
    """The challenger: 8 epochs on the digits."""
    return _digits_run(digits, tmp_path_factory.mktemp("digits"), epochs=8)


@pytest.fixture(scope="session")
def digits_champion(digits, tmp_path_factory) -> Run:
    """A weaker model (2 epochs, another seed) to play the champion in the gate."""
    return _digits_run(digits, tmp_path_factory.mktemp("champion"), epochs=2, seed=1)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Run:
    """The CIFAR-shaped CNN on 50,000 synthetic 3x32x32 images, 3 epochs."""
    tmp = tmp_path_factory.mktemp("synthetic")
    x_tr, y_tr = common.synthetic_cifar(50_000, seed=0)
    x_val, y_val = common.synthetic_cifar(5_000, seed=1)
    x_te, y_te = common.synthetic_cifar(5_000, seed=2)
    pre = common.SYNTH_PRE
    cfg = ModelConfig(kind="cnn", input_shape=(3, 32, 32), n_classes=10, width=32, depth=2)
    params = TrainParams(device=common.DEVICE, epochs=3, batch_size=256, lr=3e-3, patience=0, seed=0)

    def inputs(x):
        return model_input(check_samples(x, pre), pre, cfg)

    res = train_model(
        cfg,
        params,
        inputs(x_tr),
        torch.from_numpy(y_tr),
        inputs(x_val),
        torch.from_numpy(y_val),
        checkpoint_path=tmp / "ck.pt",
        progress=False,
    )
    meta = {
        "kind": "image",
        "input_shape": [3, 32, 32],
        "dtype": "uint8",
        "x_scale": 1 / 255,
        "n_classes": 10,
        "classes": list(pre.classes),
        "source": "synthetic",
    }
    final = save_trained_model(res, params, pre, meta, tmp / "model.pt")
    return Run(res, params, pre, tmp / "ck.pt", final, x_val, y_val, x_te, y_te)


@pytest.fixture()
def fp32_numerics():
    """cuDNN and cuBLAS in true fp32 (no TF32) while a test compares with the CPU."""
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
