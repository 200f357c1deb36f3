"""SmallCNN / MLP shapes and the automatic model choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lepton_core.models import MLP, ModelConfig, SmallCNN, build_model, model_config_for


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 12)])
def test_small_cnn_output_shape(shape):
    torch.manual_seed(0)
    cfg = ModelConfig(kind="cnn", input_shape=shape, n_classes=7, width=8, depth=1)
    model = build_model(cfg)
    assert isinstance(model, SmallCNN)
    x = torch.rand(5, *shape)
    model.train()
    assert model(x).shape == (5, 7)
    model.eval()
    out = model(x)
    assert out.shape == (5, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # the last conv block works at <= 4x4 before global pooling
    size = min(shape[1:])
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.features)
    assert size // 2**pools <= 4 and (pools == 0 or size // 2 ** (pools - 1) > 4)


def test_cnn_depth_and_width():
    cfg = ModelConfig(kind="cnn", input_shape=(1, 28, 28), n_classes=10, width=16, depth=2)
    model = SmallCNN(cfg)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    # 28 -> 14 -> 7 -> 3: four blocks of `depth` convs, channels doubling
    assert len(convs) == 4 * 2
    assert [c.out_channels for c in convs[::2]] == [16, 32, 64, 128]
    assert model.head[-1].out_features == 10


def test_cnn_eval_is_batch_independent():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="cnn", input_shape=(3, 32, 32), n_classes=4, width=8))
    model.eval()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[2:3], model(x[2:3]))


def test_mlp_shape_and_scaler():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="mlp", input_shape=(6,), n_classes=3, width=16, depth=3)
    model = build_model(cfg)
    assert isinstance(model, MLP)
    assert sum(isinstance(m, nn.Linear) for m in model.net) == 4
    x = torch.randn(50, 6) * 10 + 5
    model.fit_scaler(x)
    torch.testing.assert_close(model.mean, x.mean(0))
    torch.testing.assert_close(model.std, x.std(0))
    model.eval()
    assert model(x).shape == (50, 3)
    # the scaler is part of the state (it travels in checkpoints)
    assert {"mean", "std"} <= set(model.state_dict())
    # a constant feature does not divide by zero
    x[:, 2] = 1.0
    model.fit_scaler(x)
    assert torch.isfinite(model(x)).all()


def test_build_model_rejects_wrong_ranks():
    with pytest.raises(ValueError):
        build_model(ModelConfig(kind="cnn", input_shape=(10,), n_classes=2))
    with pytest.raises(ValueError):
        build_model(ModelConfig(kind="mlp", input_shape=(1, 8, 8), n_classes=2))


def test_model_config_for():
    img = {"kind": "image", "input_shape": [1, 8, 8], "n_classes": 10}
    tab = {"kind": "tabular", "input_shape": [13], "n_classes": 3}
    c = model_config_for(img, "auto", 32, 2, 0.1)
    assert c.kind == "cnn" and c.input_shape == (1, 8, 8) and c.n_classes == 10
    m = model_config_for(tab, "auto", 64, 3, 0.2)
    assert m.kind == "mlp" and m.input_shape == (13,) and m.n_classes == 3
    assert (m.width, m.depth, m.dropout) == (64, 3, 0.2)
    # forcing an MLP on images flattens them
    f = model_config_for(img, "mlp", 32, 2, 0.1)
    assert f.kind == "mlp" and f.input_shape == (64,)
    assert build_model(f)(torch.rand(2, 64)).shape == (2, 10)
    assert model_config_for(img, "cnn", 8, 1, 0.0).kind == "cnn"


def test_model_config_roundtrips_through_json():
    cfg = ModelConfig(kind="cnn", input_shape=(3, 32, 32), n_classes=10, width=8)
    assert ModelConfig.model_validate(cfg.model_dump(mode="json")) == cfg
