"""The one predictor: raw samples in (checked), labels, names and probabilities out,
the same preprocessing whatever calls it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lepton_core.errors import InputError
from lepton_core.models import ModelConfig, build_model
from lepton_core.params import TrainParams
from lepton_core.predictor import LOGITS_TOLERANCE, Predictor, Preprocessing, check_samples
from lepton_core.train import TrainResult, save_trained_model

IMG = Preprocessing(kind="image", input_shape=(1, 4, 4), dtype="uint8", scale=1 / 255, classes=("a", "b", "c"))
TAB = Preprocessing(
    kind="tabular",
    input_shape=(3,),
    dtype="float32",
    scale=1.0,
    classes=("x", "y"),
    feature_names=("f1", "f2", "f3"),
    label_column="species",
)


def _cnn_predictor() -> Predictor:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", input_shape=(1, 4, 4), n_classes=3, width=4, depth=1)
    return Predictor(build_model(cfg).eval(), cfg, IMG)


def test_images_are_checked_scaled_and_answered():
    p = _cnn_predictor()
    x = np.random.default_rng(0).integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    pred = p.predict(x)
    assert pred.labels.shape == (5,) and pred.probabilities.shape == (5, 3)
    assert np.allclose(pred.probabilities.sum(1), 1.0, atol=1e-6)
    assert (pred.labels == pred.probabilities.argmax(1)).all()
    assert pred.names == [IMG.classes[i] for i in pred.labels]
    # (N, H, W) one-channel images and int arrays within 0..255 read the same
    assert np.array_equal(p.logits(x[:, 0]), p.logits(x))
    assert np.array_equal(p.logits(x.astype(np.int64)), p.logits(x))
    # the input really is scaled by the stored scale
    expected = p.model(torch.from_numpy(x).float() / 255).detach().numpy()
    assert np.allclose(p.logits(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    "bad, why",
    [
        (np.zeros((2, 1, 5, 4), np.uint8), "shape"),
        (np.zeros((2, 16), np.uint8), "shape"),
        (np.zeros((2, 1, 4, 4), np.float32), "dtype"),  # already-scaled or 0..16 floats: refused
        (np.full((2, 1, 4, 4), 300, np.int64), "0..255"),
        (np.array(["a", "b"]), "dtype|shape"),
        (np.zeros((2, 1, 4, 4), np.bool_), "dtype bool"),
        (np.zeros((2, 1, 4, 4), np.complex64), "dtype complex64"),
        (np.zeros((2, 1, 4, 4), "m8[s]"), "dtype timedelta64"),  # numpy counts it an integer; no pixel is one
    ],
)
def test_bad_image_input_is_one_clear_error(bad, why):
    with pytest.raises(InputError, match=why):
        check_samples(bad, IMG)


def test_tables_by_column_name_and_non_finite_refused():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    df = pd.DataFrame({"species": ["x", "y"], "f3": x[:, 2], "f1": x[:, 0], "f2": x[:, 1]})
    assert np.array_equal(check_samples(df, TAB), x)  # reordered by name, label ignored
    with pytest.raises(InputError, match="lacks feature columns: f2"):
        check_samples(df.drop(columns="f2"), TAB)
    with pytest.raises(InputError, match="NaN or infinite"):
        check_samples(np.array([[1.0, np.nan, 3.0]]), TAB)


def test_checkpoint_round_trip_carries_the_preprocessing(tmp_path):
    p = _cnn_predictor()
    result = TrainResult(
        model=p.model,
        model_config=p.model_config,
        epochs_run=1,
        best_epoch=1,
        best_val_accuracy=0.5,
        resumed_from_epoch=0,
        stopped_early=False,
    )
    meta = {
        "kind": "image",
        "input_shape": [1, 4, 4],
        "dtype": "uint8",
        "x_scale": 1 / 255,
        "classes": ["a", "b", "c"],
        "feature_names": [],
    }
    path = save_trained_model(result, TrainParams(), IMG, meta, tmp_path / "m.pt")
    q = Predictor.from_checkpoint(path)
    assert q.preprocessing == IMG
    x = np.random.default_rng(1).integers(0, 256, (3, 1, 4, 4), dtype=np.uint8)
    assert np.allclose(q.logits(x), p.logits(x), atol=1e-6)
    # an older checkpoint without the preprocessing entry derives it from its meta
    state = torch.load(path, weights_only=True)
    del state["preprocessing"]
    assert Predictor.from_checkpoint(state).preprocessing == IMG


# ---------------------------------------------------------------- serving: compiled networks
@pytest.mark.parametrize(
    "cfg, pre",
    [
        (ModelConfig(kind="cnn", input_shape=(1, 4, 4), n_classes=3, width=4, depth=1), IMG),
        (ModelConfig(kind="mlp", input_shape=(3,), n_classes=2), TAB),
    ],
)
def test_a_built_in_network_is_compiled_for_serving_with_the_eager_models_logits(cfg, pre):
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # BatchNorm statistics as training leaves them, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    p = Predictor(model, cfg, pre)
    rng = np.random.default_rng(1)
    x = (
        rng.integers(0, 256, (7, *pre.input_shape), dtype=np.uint8)
        if pre.kind == "image"
        else rng.normal(size=(7, 3)).astype(np.float32)
    )
    eager = p.forward(p.to_input(x))
    eager_one = p.forward(p.to_input(x[:1]))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert p.compile_for_serving(max_batch=8) is True and p._compiled is not None
    # the eager model (which explanations use) is left as it was
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items()) and not model.training
    one, many = p._compiled
    calls: list[str] = []
    p._compiled = (lambda t: calls.append("one") or one(t), lambda t: calls.append("many") or many(t))  # type: ignore[assignment]
    compiled = p.forward(p.checked_input(p.check(x)))
    compiled_one = p.forward(p.checked_input(p.check(x[:1])))
    assert calls == ["many", "one"]  # a pass of one instance and a pass of more each take their module
    calls.clear()
    p.batch_size = 3
    p.forward(p.checked_input(p.check(x)))  # 7 instances in chunks of 3, 3 and 1
    assert calls == ["many", "many", "one"]
    # folded BatchNorm and other kernels round differently: close, at every batch size
    np.testing.assert_allclose(compiled, eager, **LOGITS_TOLERANCE)
    np.testing.assert_allclose(compiled_one, eager_one, **LOGITS_TOLERANCE)
    assert (compiled.argmax(1) == eager.argmax(1)).all()


def test_a_model_that_branches_on_its_input_stays_eager(monkeypatch):
    """A team's model (kind custom) may branch on its input, which a trace would freeze:
    it is never compiled. A built-in network whose compiled modules give other logits
    than the eager model (checked on three batch sizes) keeps running eagerly."""

    class Branchy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) if x.sum() > 0 else -self.lin(x)

    custom = ModelConfig(kind="custom", input_shape=(3,), n_classes=2, class_path="team.Branchy")
    p = Predictor(Branchy().eval(), custom, TAB)
    assert p.compile_for_serving() is False and p._compiled is None
    x = np.array([[-1.0, -1.0, -1.0]], np.float32)
    with torch.no_grad():
        assert np.array_equal(p.forward(p.to_input(x)), -p.model.lin(torch.from_numpy(x)).numpy())

    mlp = ModelConfig(kind="mlp", input_shape=(3,), n_classes=2)
    p = Predictor(build_model(mlp).eval(), mlp, TAB)
    # the module for passes of many, then the one for a single instance, off by more than the tolerance
    with monkeypatch.context() as m:
        m.setattr(torch.jit, "optimize_for_inference", lambda module: lambda t: module(t) + 1e-3)
        assert p.compile_for_serving() is False and p._compiled is None
    with monkeypatch.context() as m:
        m.setattr(torch.jit, "freeze", lambda module: lambda t: module(t) + 1e-3)
        assert p.compile_for_serving() is False and p._compiled is None
    # one that agrees at first and drifts once TorchScript settles on a plan (the check after the warm-up)
    calls = {"n": 0}

    def drifting(module):
        def run(t):
            calls["n"] += 1
            return module(t) + (1e-3 if calls["n"] > 6 else 0.0)

        return run

    with monkeypatch.context() as m:
        m.setattr(torch.jit, "optimize_for_inference", drifting)
        assert p.compile_for_serving(max_batch=4) is False and p._compiled is None
    assert p.compile_for_serving(max_batch=4) is True  # the real ones agree
    monkeypatch.setattr(torch.jit, "trace", lambda model, example: lambda t: model(t))  # not a module: no freeze
    assert p.compile_for_serving() is False and p._compiled is None
