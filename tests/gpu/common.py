"""Data and settings shared by the GPU tests and the training subprocess they kill."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from lepton_core.data.formats import RawDataset, load_digits
from lepton_core.data.prepare import Prepared, prepare_dataset
from lepton_core.errors import DataError
from lepton_core.params import TrainParams
from lepton_core.predictor import Preprocessing

DEVICE = "cuda"  # what the tests train and predict on
ROOT = Path(__file__).resolve().parents[2]

# The synthetic CIFAR-shaped set: uint8 (N, 3, 32, 32) images of 10 classes.
SYNTH_PRE = Preprocessing(
    kind="image", input_shape=(3, 32, 32), dtype="uint8", scale=1 / 255, classes=tuple(str(i) for i in range(10))
)


def on_device(device: str | torch.device) -> bool:
    """Whether `device` (a TrainResult's, a tensor's) is of DEVICE's type."""
    return torch.device(device).type == torch.device(DEVICE).type


def digits_raw() -> RawDataset:
    """scikit-learn's digits through `load_digits`; where scikit-learn is missing, the
    same arrays saved from `load_digits` elsewhere, named by LEPTON_DIGITS_NPZ."""
    try:
        return load_digits()
    except DataError:
        path = os.environ.get("LEPTON_DIGITS_NPZ")
        if not path:
            raise
        z = np.load(path, allow_pickle=False)
        return RawDataset(x=z["x"], y=z["y"], classes=[str(i) for i in range(10)], kind="image")


def digits_prepared() -> Prepared:
    return prepare_dataset(digits_raw(), val_fraction=0.15, test_fraction=0.2, seed=0)


def digits_params(**kw) -> TrainParams:
    base = dict(device=DEVICE, epochs=8, batch_size=64, lr=3e-3, patience=0, seed=0)
    base.update(kw)
    return TrainParams(**base)


def synthetic_cifar(n: int, seed: int, label_noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels. Each class is a blocky
    colour template (3x4x4 upsampled to 32x32) under a random gain plus Gaussian
    noise; a share `label_noise` of the labels is redrawn at random, so no model is
    right on every image. The templates are fixed; `seed` draws the samples."""
    templates = np.random.default_rng(1234).integers(0, 256, (10, 3, 4, 4)).astype(np.float32)
    templates = templates.repeat(8, axis=2).repeat(8, axis=3)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.empty((n, 3, 32, 32), np.uint8)
    for s in range(0, n, 5000):  # in chunks: bounded memory
        yy = y[s : s + 5000]
        gain = rng.uniform(0.3, 0.7, (len(yy), 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal((len(yy), 3, 32, 32), dtype=np.float32) * 60
        x[s : s + 5000] = np.clip(templates[yy] * gain + noise + 64, 0, 255).astype(np.uint8)
    flip = rng.random(n) < label_noise
    y = np.where(flip, rng.integers(0, 10, n), y)
    return x, y.astype(np.int64)
