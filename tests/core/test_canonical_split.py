"""Canonical test splits: MNIST's t10k files and CIFAR-10's test_batch are the test
split when present (data.test_split: canonical, the default), so accuracies compare
with published figures; `random` draws it like val; without them, drawn as before."""

from __future__ import annotations

import numpy as np

from lepton_core.data.formats import load_cifar10, load_mnist
from lepton_core.data.prepare import prepare_dataset, prepare_from_params, read_prepared
from lepton_core.params import DataParams
from tests.core.test_formats import cifar_images, mnist_arrays, write_cifar_batch, write_mnist_split


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_mnist_t10k_samples_are_the_test_split(tmp_path):
    tr_x, tr_y = mnist_arrays(300, seed=0, h=12, w=12)
    te_x, te_y = mnist_arrays(80, seed=1, h=12, w=12)
    write_mnist_split(tmp_path, "train", tr_x, tr_y, gz=False)
    write_mnist_split(tmp_path, "t10k", te_x, te_y, gz=True)
    raw = load_mnist(tmp_path)
    assert raw.test_rows is not None and int(raw.test_rows.sum()) == 80
    out = tmp_path / "prepared"
    prepare_from_params(DataParams(format="mnist", path=str(tmp_path)), out)  # canonical by default
    p = read_prepared(out)
    assert p.meta["test_split"] == "canonical"
    assert _rows(p.x["test"]) == _rows(te_x[:, None])  # exactly the t10k images
    assert sorted(p.y["test"].tolist()) == sorted(te_y.tolist())
    assert not (_rows(p.x["train"]) | _rows(p.x["val"])) & _rows(te_x[:, None])
    assert len(p.y["train"]) + len(p.y["val"]) == 300
    # random: drawn from all 380 like before
    r = prepare_dataset(raw, val_fraction=0.15, test_fraction=0.2, seed=0, test_split="random")
    assert r.meta["test_split"] == "random" and _rows(r.x["test"]) != _rows(te_x[:, None])


def test_cifar_test_batch_is_the_test_split(tmp_path):
    _, r1, l1 = cifar_images(60, seed=0)
    ht, rt, lt = cifar_images(30, seed=1)
    write_cifar_batch(tmp_path / "data_batch_1", r1, l1)
    write_cifar_batch(tmp_path / "test_batch", rt, lt)
    raw = load_cifar10(tmp_path)
    p = prepare_dataset(raw, val_fraction=0.15, test_fraction=0.2, seed=0, test_split="canonical")
    assert p.meta["test_split"] == "canonical"
    assert _rows(p.x["test"]) == _rows(np.ascontiguousarray(ht.transpose(0, 3, 1, 2)))
    assert len(p.y["test"]) == 30


def test_only_training_files_fall_back_to_a_drawn_split(tmp_path):
    tr_x, tr_y = mnist_arrays(200, seed=0, h=12, w=12)
    write_mnist_split(tmp_path, "train", tr_x, tr_y, gz=False)
    raw = load_mnist(tmp_path)
    assert raw.test_rows is None
    p = prepare_dataset(raw, val_fraction=0.15, test_fraction=0.2, seed=0, test_split="canonical")
    assert p.meta["test_split"] == "random" and 0 < len(p.y["test"]) < 200


def test_a_canonical_test_split_with_classes_the_training_files_lack_is_refused(tmp_path):
    """MNIST files whose t10k holds digits 5-9 while the training files hold 0-4: a
    model would train fine and score 0 on the test split; prepare refuses, naming them."""
    import pytest

    from lepton_core.errors import DataError

    tr_x, tr_y = mnist_arrays(300, seed=0, h=12, w=12)
    te_x, te_y = mnist_arrays(80, seed=1, h=12, w=12)
    tr_y, te_y = tr_y % 5, 5 + te_y % 5
    write_mnist_split(tmp_path, "train", tr_x, tr_y, gz=False)
    write_mnist_split(tmp_path, "t10k", te_x, te_y, gz=True)
    with pytest.raises(DataError, match=r"holds classes the training files lack \('5', '6', '7', '8', '9'\)"):
        prepare_from_params(DataParams(format="mnist", path=str(tmp_path)), tmp_path / "prepared")
    # drawn at random instead, every class is in every split's reach
    p = prepare_dataset(load_mnist(tmp_path), val_fraction=0.15, test_fraction=0.2, seed=0, test_split="random")
    assert p.meta["test_split"] == "random"
