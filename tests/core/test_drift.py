"""Drift features, verdict thresholds and the synthetic drift generator."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_core.data.formats import load_digits
from lepton_core.drift import (
    IMAGE_FEATURES,
    KINDS,
    DriftThresholds,
    decide_drift,
    image_features,
    output_features,
    parse_strength,
    simulate_drift,
)

T = DriftThresholds(drift_share=0.5, max_accuracy_drop=0.1, min_rows=50)


def test_image_features_on_hand_made_images():
    x = np.zeros((3, 1, 4, 4))
    x[1] = 1.0  # all ink
    x[2, 0, :, 3] = 1.0  # one bright column on the right
    f = image_features(x)
    assert set(f) == set(IMAGE_FEATURES)
    assert f["mean_intensity"].tolist() == [0.0, 1.0, 0.25]
    assert f["ink_fraction"].tolist() == [0.0, 1.0, 0.25]
    assert f["contrast"][1] == 0.0 and f["contrast"][2] > 0
    assert f["center_x"][2] == pytest.approx(7 / 8)  # column 3 of 4, centre at 3.5/4
    assert f["center_y"][2] == pytest.approx(0.5)
    assert f["spread_x"][2] == pytest.approx(0.0, abs=1e-3)  # one column: no horizontal spread
    assert f["asymmetry"][1] == 0.0 and f["asymmetry"][2] == pytest.approx(0.5)
    assert f["edge_energy"][1] == 0.0 and f["edge_energy"][2] > 0


def test_output_features_are_argmax_and_softmax_confidence():
    logits = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 10.0]])
    out = output_features(logits)
    assert out["prediction"].tolist()[1:] == [0, 1]
    assert out["confidence"][0] == pytest.approx(0.5)
    assert out["confidence"][1] == pytest.approx(np.exp(3) / (np.exp(3) + 1))


def test_verdict_thresholds():
    assert decide_drift(0.2, False, None, T).status == "no drift"
    v = decide_drift(0.6, False, None, T)
    assert v.drift and "60% of features" in v.line()
    assert decide_drift(0.0, True, None, T).drift
    assert not decide_drift(0.0, True, None, DriftThresholds(0.5, 0.1, 50, prediction_drift=False)).drift
    assert decide_drift(0.0, False, 0.15, T).drift
    assert not decide_drift(0.0, False, 0.05, T).drift


@pytest.mark.parametrize("kind", KINDS)
def test_simulated_drift_keeps_shapes_and_labels(kind):
    d = load_digits()
    x, y = d.x[:200], d.y[:200]
    xd, yd = simulate_drift(x, y, kind, 1.0, seed=3)
    assert xd.shape == x.shape and xd.dtype == np.uint8 and yd.shape == y.shape
    again = simulate_drift(x, y, kind, 1.0, seed=3)
    assert np.array_equal(again[0], xd) and np.array_equal(again[1], yd)  # seeded
    if kind != "class-prior":
        assert np.array_equal(yd, y)
        assert not np.array_equal(xd, x)


def test_strength_zero_changes_nothing_and_high_changes_features_more():
    d = load_digits()
    x, y = d.x[:300], d.y[:300]
    for kind in ("rotate", "noise", "brightness"):
        x0, _ = simulate_drift(x, y, kind, 0.0)
        assert np.array_equal(x0, x)
    base = image_features(x / 255.0)

    def shift(s):
        xd, _ = simulate_drift(x, y, "brightness", s)
        return abs(image_features(xd / 255.0)["ink_fraction"].mean() - base["ink_fraction"].mean())

    assert shift(1.0) > shift(0.25) > 0


def test_class_prior_drift_concentrates_on_two_classes():
    d = load_digits()
    _, yd = simulate_drift(d.x, d.y, "class-prior", 1.0, seed=1)
    counts = np.sort(np.bincount(yd, minlength=10))[::-1]
    assert counts[:2].sum() / len(yd) > 0.9


def test_parse_strength():
    assert parse_strength("high") == 1.0 and parse_strength("low") == 0.25 and parse_strength("0.3") == 0.3
    for bad in ("extreme", "2", "-1"):
        with pytest.raises(ValueError):
            parse_strength(bad)
