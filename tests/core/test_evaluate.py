"""Classification metrics vs hand computation and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from lepton_core.evaluate import classification_metrics, confusion_matrix, evaluate_predictor
from lepton_core.models import ModelConfig, build_model
from lepton_core.predictor import Predictor, Preprocessing


def test_hand_made_predictions():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["n"] == 5
    # precision a=1/2 b=2/3 c=0 (never predicted), recall a=1/2 b=1 c=0
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_perfect_predictions():
    y = np.array([2, 0, 1, 1, 0, 2, 2])
    m = classification_metrics(y, y.copy(), ["x", "y", "z"])
    assert m["accuracy"] == m["precision_macro"] == m["recall_macro"] == m["f1_macro"] == 1.0
    assert np.array_equal(np.array(m["confusion_matrix"]), np.diag([2, 2, 3]))


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    n = int(rng.integers(20, 300))
    y_true = rng.integers(0, k, n)
    # mostly right, sometimes a random class
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, k, n))
    m = classification_metrics(y_true, y_pred, [str(i) for i in range(k)])
    labels = np.unique(y_true)  # macro over classes present in y_true
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    kw = dict(labels=labels, average="macro", zero_division=0)
    assert m["precision_macro"] == pytest.approx(skm.precision_score(y_true, y_pred, **kw))
    assert m["recall_macro"] == pytest.approx(skm.recall_score(y_true, y_pred, **kw))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y_true, y_pred, **kw))
    np.testing.assert_array_equal(
        np.array(m["confusion_matrix"]), skm.confusion_matrix(y_true, y_pred, labels=list(range(k)))
    )
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
    for i in range(k):
        pc = m["per_class"][str(i)]
        assert pc["precision"] == pytest.approx(p[i]) and pc["recall"] == pytest.approx(r[i])
        assert pc["f1"] == pytest.approx(f[i]) and pc["support"] == s[i]


def test_class_absent_from_truth_is_left_out_of_macro():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class 2 predicted but never true
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["recall_macro"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["precision_macro"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["per_class"]["c"]["support"] == 0 and m["per_class"]["c"]["precision"] == 0.0


def test_confusion_matrix_counts():
    y_true = np.array([0, 1, 2, 2, 2, 1, 0, 0])
    y_pred = np.array([0, 2, 2, 2, 1, 1, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    expected = np.zeros((4, 4), np.int64)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm.sum() == 8 and cm[3].sum() == 0
    assert cm[0, 0] == 2 and cm[0, 2] == 1 and cm[2, 1] == 1


def test_predictor_logits_in_batches_and_empty():
    torch.manual_seed(0)
    cfg = ModelConfig(kind="mlp", input_shape=(4,), n_classes=3, width=8, depth=1)
    model = build_model(cfg).eval()
    pre = Preprocessing(kind="tabular", input_shape=(4,), dtype="float32", scale=1.0, classes=("a", "b", "c"))
    p = Predictor(model, cfg, pre, batch_size=3)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    out = p.logits(x)
    assert isinstance(out, np.ndarray) and out.shape == (10, 3) and out.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
    assert p.logits(x[:0]).shape == (0, 3)
    metrics = evaluate_predictor(p, x, out.argmax(1))
    assert metrics["accuracy"] == 1.0 and metrics["n"] == 10
