"""Device-side augmentation (alternating flips, reflect-padded random shifts) and the
fast CIFAR-shaped network (a frozen patch-whitening first layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lepton_core.augment import augment_batch, epoch_generator, flip_bits, should_augment
from lepton_core.models import FastCNN, ModelConfig, build_model, model_config_for
from lepton_core.params import TrainParams


def test_flips_alternate_between_epochs():
    x = torch.rand(6, 3, 4, 5)
    idx = torch.arange(6)
    bits = flip_bits(6, seed=0, device=torch.device("cpu"))
    g = epoch_generator(0, 0, torch.device("cpu"))
    even, odd = (augment_batch(x, idx, e, bits, 0, g) for e in (0, 1))
    for i in range(6):
        flipped_even = torch.equal(even[i], x[i].flip(2))
        assert flipped_even == bool(bits[i]) and torch.equal(even[i], x[i]) != flipped_even
        assert torch.equal(odd[i], x[i] if flipped_even else x[i].flip(2))  # the other way next epoch


def test_translation_is_a_crop_of_the_reflect_padded_image_and_depends_on_the_epoch():
    x = torch.rand(16, 2, 7, 6)
    idx = torch.arange(16)
    t = 2
    padded = torch.nn.functional.pad(x, (t, t, t, t), mode="reflect")
    out = augment_batch(x, idx, 0, None, t, epoch_generator(3, 0, torch.device("cpu")))
    assert out.shape == x.shape
    shifts = set()
    for i in range(16):
        found = [
            (dy, dx)
            for dy in range(2 * t + 1)
            for dx in range(2 * t + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 7, dx : dx + 6])
        ]
        assert found, i
        shifts.add(found[0])
    assert len(shifts) > 3  # random per image, not one shift for the batch
    again = augment_batch(x, idx, 0, None, t, epoch_generator(3, 0, torch.device("cpu")))
    other = augment_batch(x, idx, 1, None, t, epoch_generator(3, 1, torch.device("cpu")))
    assert torch.equal(out, again) and not torch.equal(out, other)  # seeded by (seed, epoch)


def test_augmentation_is_off_by_default_on_the_cpu_and_for_grey_images():
    colour, grey, table = torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 28, 28), torch.zeros(2, 10)
    assert not should_augment("auto", colour, cuda=False)
    assert should_augment("auto", colour, cuda=True) and not should_augment("auto", grey, cuda=True)
    assert should_augment("on", grey, cuda=False) and not should_augment("on", table, cuda=True)
    assert not should_augment("off", colour, cuda=True)


def test_the_whitening_layer_decorrelates_2x2_patches():
    cfg = ModelConfig(kind="fastcnn", input_shape=(3, 16, 16), n_classes=4, width=4)
    m = build_model(cfg)
    assert isinstance(m, FastCNN) and not any(p.requires_grad for p in m.whiten.parameters())
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 3, 16, 16, generator=g)
    mix = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.3, 0.0], [0.5, 0.5, 0.4]])  # correlated channels
    x = torch.einsum("dc,bchw->bdhw", mix, noise)
    x = x + 0.7 * x.roll(1, 3)  # and correlated neighbours
    m.fit_whitening(x, eps=1e-7)
    z = m.whiten(x)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(z.T)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert m(x[:5]).shape == (5, 4)


def test_fastcnn_trains_with_augmentation_and_rebuilds_from_its_checkpoint(tmp_path):
    from lepton_core.data.formats import RawDataset
    from lepton_core.data.prepare import prepare_dataset
    from lepton_core.predictor import Predictor, Preprocessing
    from lepton_core.train import save_trained_model, train_on_prepared

    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 3, 12, 12)).astype(np.uint8)
    for k in range(3):  # a bright channel per class: learnable in a few epochs
        x[y == k, k] += 150
    prepared = prepare_dataset(
        RawDataset(x=x, y=y, classes=["r", "g", "b"], kind="image"), val_fraction=0.2, test_fraction=0.2, seed=0
    )
    params = TrainParams(
        model="fastcnn", width=4, epochs=4, batch_size=32, augment="on", translate=1, patience=0, lr=3e-3
    )
    pre = Preprocessing.from_meta(prepared.meta)
    cfg = model_config_for(prepared.meta, "fastcnn", 4, 2, 0.0)
    assert cfg.kind == "fastcnn"
    result = train_on_prepared(prepared, params, pre, progress=False)
    assert result.best_val_accuracy > 0.8
    ckpt = save_trained_model(result, params, pre, prepared.meta, tmp_path / "m.pt")
    p = Predictor.from_checkpoint(ckpt)
    acc = float((p.predict(prepared.x["test"]).labels == prepared.y["test"]).mean())
    assert acc > 0.8
    assert torch.equal(p.model.whiten.weight, result.model.whiten.weight)  # the fitted layer travels


def test_fastcnn_refuses_images_too_small_for_its_poolings():
    with pytest.raises(ValueError, match="at least 9x9"):
        build_model(ModelConfig(kind="fastcnn", input_shape=(1, 8, 8), n_classes=10))
