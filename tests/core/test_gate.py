"""Promotion gate: McNemar's exact test vs scipy and the decision rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from lepton_core.gate import Decision, decide_promotion, mcnemar_exact
from lepton_core.params import PromoteParams


def paired(b: int, c: int, both_right: int = 50, both_wrong: int = 5, seed: int = 0):
    """champion/challenger correctness with exactly b only-champion and c only-challenger wins."""
    champ = np.array([1] * b + [0] * c + [1] * both_right + [0] * both_wrong, dtype=bool)
    chall = np.array([0] * b + [1] * c + [1] * both_right + [0] * both_wrong, dtype=bool)
    perm = np.random.default_rng(seed).permutation(len(champ))
    return champ[perm], chall[perm]


@pytest.mark.parametrize(
    "b, c", [(0, 0), (1, 0), (0, 1), (5, 5), (3, 7), (10, 0), (0, 12), (17, 3), (40, 60), (120, 95), (6, 0)]
)
def test_mcnemar_matches_scipy(b, c):
    champ, chall = paired(b, c)
    b_, c_, p = mcnemar_exact(champ, chall)
    assert (b_, c_) == (b, c)
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5, alternative="two-sided").pvalue
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert 0.0 <= p <= 1.0
    # symmetric in who wins
    assert mcnemar_exact(chall, champ)[2] == pytest.approx(p)


def test_mcnemar_large_n_is_finite():
    champ, chall = paired(600, 500, both_right=100, both_wrong=0)
    _, _, p = mcnemar_exact(champ, chall)
    assert p == pytest.approx(binomtest(600, 1100, 0.5).pvalue, rel=1e-9)


def test_mcnemar_shape_mismatch():
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


P = PromoteParams(min_accuracy=0.5, tolerance=0.02, alpha=0.05)


def test_below_floor_not_promoted():
    chall = np.array([1] * 40 + [0] * 60, dtype=bool)
    d = decide_promotion(chall, None, P)
    assert d.promote is False and "below floor" in d.reason
    assert d.challenger_accuracy == pytest.approx(0.4)
    # even against a worse champion
    assert decide_promotion(chall, np.zeros(100, bool), P).promote is False


def test_no_champion_promoted():
    chall = np.array([1] * 90 + [0] * 10, dtype=bool)
    d = decide_promotion(chall, None, P)
    assert d.promote is True and d.champion_accuracy is None and d.p_value is None
    assert "no champion" in d.reason


def test_significantly_worse_not_promoted():
    # champion right on 30 examples the challenger misses, challenger on 5 -> p << 0.05;
    # accuracy drop 25% is also beyond tolerance; use a huge tolerance to isolate McNemar
    champ, chall = paired(30, 5, both_right=400, both_wrong=20)
    loose = PromoteParams(min_accuracy=0.5, tolerance=0.5, alpha=0.05)
    d = decide_promotion(chall, champ, loose)
    assert d.promote is False and "significantly worse" in d.reason
    assert (d.only_champion_right, d.only_challenger_right) == (30, 5)
    assert d.p_value == pytest.approx(binomtest(30, 35, 0.5).pvalue)


def test_within_tolerance_not_significant_promoted():
    champ, chall = paired(3, 1, both_right=180, both_wrong=16)  # challenger 2 fewer right of 200
    d = decide_promotion(chall, champ, P)
    assert d.challenger_accuracy == pytest.approx(181 / 200)
    assert d.champion_accuracy == pytest.approx(183 / 200)
    assert d.p_value > P.alpha
    assert d.promote is True and "not worse" in d.reason


def test_better_challenger_promoted_even_if_significant():
    champ, chall = paired(2, 30, both_right=150, both_wrong=18)
    d = decide_promotion(chall, champ, P)
    assert d.promote is True and d.p_value < 0.05


def test_drop_beyond_tolerance_not_promoted():
    # 6 fewer right out of 200 (3% > 2% tolerance) but not significant by McNemar
    champ, chall = paired(8, 2, both_right=170, both_wrong=20)
    d = decide_promotion(chall, champ, P)
    assert d.p_value > P.alpha
    assert d.promote is False and "tolerance" in d.reason


def test_drop_exactly_at_tolerance_is_accepted():
    strict = PromoteParams(min_accuracy=0.5, tolerance=0.005, alpha=0.05)
    champ, chall = paired(5, 0, both_right=895, both_wrong=100)  # 900 vs 895 of 1000
    d = decide_promotion(chall, champ, strict)
    assert d.p_value == pytest.approx(0.0625)
    assert d.promote is True
    # the same drop in float: 0.9 - 0.895 is not exactly 0.005, the epsilon decides
    assert 0.9 - 0.895 != 0.005
    # one more wrong answer is beyond the tolerance
    champ2, chall2 = paired(6, 0, both_right=894, both_wrong=100)
    assert decide_promotion(chall2, champ2, strict).promote is False


def test_decision_tags():
    d = decide_promotion(np.ones(10, bool), None, P)
    tags = d.as_tags()
    assert tags["lepton.gate.promote"] == "True"
    assert tags["lepton.gate.champion_accuracy"] == ""
    assert set(tags) == {f"lepton.gate.{k}" for k in Decision.__dataclass_fields__}
