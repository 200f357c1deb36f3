"""Explanations: Integrated Gradients on the model input and permutation importance.

Each model here is trained (in a second or two) on data built so that the answer
depends on one known pixel or column only; the explanation must find it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from lepton_core.errors import LeptonError
from lepton_core.explain import attributions, permutation_importance
from lepton_core.models import ModelConfig, build_model
from lepton_core.predictor import BasePredictor, Predictor, Preprocessing

KEY_PIXEL = (2, 5)  # (row, column) of the one pixel that decides an image's class
KEY_COLUMN = 3  # the one column that decides a row's class (or value)
FEATURES = tuple(f"f{i}" for i in range(6))


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, regression: bool, steps: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = torch.nn.functional.mse_loss(out[:, 0], y) if regression else torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
    model.eval()


def _key_pixel_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) uint8 dim noise; class 1 when the key pixel is bright, else class 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (n, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 2, n)
    x[:, KEY_PIXEL[0], KEY_PIXEL[1]] = np.where(y == 1, rng.integers(200, 256, n), rng.integers(0, 90, n))
    return x, y


def _key_column_rows(n: int, seed: int, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = 2.0 * x[:, KEY_COLUMN] if regression else (x[:, KEY_COLUMN] > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def image_model() -> Predictor:
    torch.manual_seed(0)
    pre = Preprocessing(kind="image", input_shape=(1, 8, 8), dtype="uint8", scale=1 / 255, classes=("dark", "lit"))
    cfg = ModelConfig(kind="cnn", input_shape=(1, 8, 8), n_classes=2, width=8, depth=1, dropout=0.0)
    model = build_model(cfg)
    x, y = _key_pixel_images(300, seed=0)
    _fit(model, torch.from_numpy(x[:, None]).float() / 255, torch.from_numpy(y), False, steps=80)
    return Predictor(model, cfg, pre)


def _table_model(regression: bool) -> Predictor:
    torch.manual_seed(0)
    pre = Preprocessing(
        kind="tabular",
        input_shape=(len(FEATURES),),
        dtype="float32",
        scale=1.0,
        classes=() if regression else ("neg", "pos"),
        feature_names=FEATURES,
        task="regression" if regression else "classification",
    )
    cfg = ModelConfig(kind="mlp", input_shape=(len(FEATURES),), n_classes=1 if regression else 2, width=16, depth=1)
    model = build_model(cfg)
    x, y = _key_column_rows(300, seed=0, regression=regression)
    t = torch.from_numpy(x)
    model.fit_scaler(t)  # type: ignore[operator]
    _fit(model, t, torch.from_numpy(y).float() if regression else torch.from_numpy(y), regression, steps=200)
    return Predictor(model, cfg, pre)


@pytest.fixture(scope="module")
def table_model() -> Predictor:
    return _table_model(regression=False)


def test_the_key_pixel_gets_the_largest_attribution(image_model):
    x, y = _key_pixel_images(40, seed=1)
    assert (image_model.predict(x).labels == y).mean() > 0.9  # the model did learn the rule
    attr = attributions(image_model, x)
    assert attr.shape == x.shape and attr.dtype == np.float32  # (N, H, W) in, (N, H, W) out
    mean_abs = np.abs(attr).mean(0)
    assert np.unravel_index(mean_abs.argmax(), mean_abs.shape) == KEY_PIXEL
    # (N, C, H, W) in, (N, C, H, W) out, the same numbers
    assert np.allclose(attributions(image_model, x[:, None]), attr[:, None], atol=1e-6)


def test_attributions_explain_the_given_class_and_add_up(image_model):
    x, _ = _key_pixel_images(6, seed=2)
    logits = image_model.logits(x)
    for k in (0, 1):
        attr = attributions(image_model, x, targets=np.full(len(x), k), steps=64)
        # completeness: the shares sum to the output at the sample less the output at zeros
        at_zero = image_model.logits(np.zeros_like(x))[:, k]
        # (to within the path integral's numerical error: 2% of outputs some 10 apart)
        assert np.allclose(attr.reshape(len(x), -1).sum(1), logits[:, k] - at_zero, rtol=0.02, atol=0.02)


def test_the_key_column_gets_the_largest_attribution_and_importance(table_model):
    x, y = _key_column_rows(200, seed=1, regression=False)
    assert (table_model.predict(x).labels == y).mean() > 0.9
    attr = attributions(table_model, x)
    assert attr.shape == x.shape
    assert np.abs(attr).mean(0).argmax() == KEY_COLUMN
    importance = permutation_importance(table_model, x, y)
    assert importance.shape == (len(FEATURES),)
    assert importance.argmax() == KEY_COLUMN and importance[KEY_COLUMN] > 0.3
    # a DataFrame with the label among its columns reads the same; class names work as labels
    df = pd.DataFrame(x, columns=list(FEATURES)).assign(label=y)
    assert np.allclose(attributions(table_model, df), attr, atol=1e-6)
    names = np.array(table_model.classes)[y]
    assert np.allclose(permutation_importance(table_model, df, names), importance)


def test_regression_attributes_the_predicted_value():
    model = _table_model(regression=True)
    x, y = _key_column_rows(200, seed=1, regression=True)
    assert np.abs(np.abs(attributions(model, x)).mean(0)).argmax() == KEY_COLUMN
    importance = permutation_importance(model, x, y, repeats=2)
    assert importance.argmax() == KEY_COLUMN and importance[KEY_COLUMN] > 1.0  # RMSE rises by > 1


@pytest.mark.parametrize(
    "bad, why",
    [
        (np.zeros((2, 7, 8), np.uint8), "shape"),
        (np.zeros((2, 64), np.uint8), "shape"),
        (np.zeros((2, 8, 8), np.float32), "dtype"),
    ],
)
def test_wrong_input_is_one_line(image_model, bad, why):
    with pytest.raises(LeptonError, match=why) as e:
        attributions(image_model, bad)
    assert "\n" not in str(e.value)


def test_wrong_targets_and_labels_are_one_line(image_model, table_model):
    x, y = _key_pixel_images(3, seed=3)
    with pytest.raises(LeptonError, match="2 targets for 3 instances"):
        attributions(image_model, x, targets=np.array([0, 1]))
    with pytest.raises(LeptonError, match="class indices 0..1"):
        attributions(image_model, x, targets=np.array([0, 1, 2]))
    rows, labels = _key_column_rows(5, seed=3, regression=False)
    with pytest.raises(LeptonError, match="not among the model's classes: maybe"):
        permutation_importance(table_model, rows, np.array(["pos", "neg", "maybe", "pos", "neg"]))
    with pytest.raises(LeptonError, match="4 labels for 5 rows"):
        permutation_importance(table_model, rows, labels[:4])


class _NoGradients(BasePredictor):
    """A model with no PyTorch module behind it (as an ONNX Runtime variant)."""

    preprocessing = Preprocessing(kind="tabular", input_shape=(2,), dtype="float32", scale=1.0, classes=("a", "b"))

    def to_input(self, x: Any) -> torch.Tensor:
        return torch.from_numpy(self.check(x))

    def log_input(self, t: torch.Tensor) -> np.ndarray:
        return t.numpy()

    def forward(self, t: torch.Tensor) -> np.ndarray:
        return np.stack([t[:, 0].numpy(), -t[:, 0].numpy()], 1)


class _Detached(torch.nn.Module):
    """A network whose output is cut off from its input's gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, 2)
        return torch.stack([x[:, 0], -x[:, 0]], 1).detach()


def test_a_model_whose_output_has_no_gradient_is_one_line():
    pre = Preprocessing(kind="tabular", input_shape=(2,), dtype="float32", scale=1.0, classes=("a", "b"))
    p = Predictor(_Detached(), ModelConfig(kind="mlp", input_shape=(2,), n_classes=2), pre)
    with pytest.raises(LeptonError, match="no gradient with respect to its input"):
        attributions(p, np.ones((3, 2), np.float32))


def test_a_model_without_gradients_is_refused_in_one_line_but_permutes():
    p = _NoGradients()
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    with pytest.raises(LeptonError, match="need the PyTorch model"):
        attributions(p, x)
    importance = permutation_importance(p, x, (x[:, 0] < 0).astype(np.int64))
    assert importance[0] > 0.3 and importance[1] == 0.0  # model-free: only column 0 matters
