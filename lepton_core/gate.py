"""The promotion gate: absolute floor, tolerance on accuracy, and McNemar's exact
test on the paired predictions of challenger and champion over the same examples.

Regression: a ceiling on RMSE and/or floor on R², a relative tolerance on RMSE, and a
one-sided paired t-test on the per-row squared-error differences
d_i = e_chal,i² − e_champ,i² (Diebold and Mariano's test of equal predictive accuracy
under squared loss). A test of the median error (Wilcoxon, sign) would pass a
challenger whose few large errors make its RMSE far worse; the mean of d is what the
MSE, and so the RMSE, compares."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from math import comb

import numpy as np

from lepton_core.params import PromoteParams


def mcnemar_exact(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> tuple[int, int, float]:
    """Two-sided exact McNemar test.

    b = examples only the champion gets right, c = only the challenger.
    Under H0 (equal error rates) b ~ Binomial(b + c, 1/2).
    Returns (b, c, p_value).
    """
    a = np.asarray(champion_correct, dtype=bool)
    z = np.asarray(challenger_correct, dtype=bool)
    if a.shape != z.shape:
        raise ValueError("paired predictions must cover the same examples")
    b = int((a & ~z).sum())
    c = int((~a & z).sum())
    n = b + c
    if n == 0:
        return b, c, 1.0
    k = min(b, c)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return b, c, float(min(1.0, 2 * tail))


def mcnemar_report(a_right: np.ndarray, b_right: np.ndarray) -> dict[str, int | float | str]:
    """McNemar's exact test of A against B (A in the champion's place), as `lepton
    compare` reports it: the discordant and concordant counts and the p-value."""
    only_a, only_b, p = mcnemar_exact(a_right, b_right)
    return {
        "test": "McNemar exact (two-sided)",
        "only_a_right": only_a,
        "only_b_right": only_b,
        "both_right": int((a_right & b_right).sum()),
        "both_wrong": int((~a_right & ~b_right).sum()),
        "p_value": p,
    }


TOLERANCE_EPS = 1e-9


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_accuracy: float
    champion_accuracy: float | None
    p_value: float | None
    only_champion_right: int | None = None  # b
    only_challenger_right: int | None = None  # c

    def as_tags(self) -> dict[str, str]:
        return {f"lepton.gate.{k}": "" if v is None else str(v) for k, v in asdict(self).items()}


def decide_promotion(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    params: PromoteParams,
) -> Decision:
    """Decide whether the challenger replaces the champion.

    `*_correct` are boolean (N,) arrays over the same test examples; `None` when
    there is no champion (or it cannot be evaluated on this data).
    """
    z = np.asarray(challenger_correct, dtype=bool)
    acc = float(z.mean()) if len(z) else 0.0
    if acc < params.min_accuracy:
        return Decision(False, f"accuracy {acc:.4f} below floor {params.min_accuracy}", acc, None, None)
    if champion_correct is None:
        return Decision(True, "no champion to beat; floor met", acc, None, None)
    champ = float(np.asarray(champion_correct, dtype=bool).mean())
    b, c, p = mcnemar_exact(champion_correct, z)
    # accuracies are ratios of counts: a drop equal to the tolerance, up to float
    # rounding (0.900 - 0.895 vs 0.005), is within it
    if champ - acc > params.tolerance + TOLERANCE_EPS:
        return Decision(
            False,
            f"accuracy {acc:.4f} < champion {champ:.4f} - tolerance {params.tolerance}",
            acc,
            champ,
            p,
            b,
            c,
        )
    if b > c and p < params.alpha:
        return Decision(
            False,
            f"significantly worse than champion (McNemar p={p:.4g} < {params.alpha})",
            acc,
            champ,
            p,
            b,
            c,
        )
    return Decision(True, f"not worse than champion {champ:.4f} (McNemar p={p:.4g})", acc, champ, p, b, c)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, dof: float) -> float:
    """P(T > t) for Student's t with `dof` degrees of freedom."""
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return tail if t >= 0 else 1.0 - tail


def paired_t_worse(champion_sq_err: np.ndarray, challenger_sq_err: np.ndarray) -> tuple[float, float, float]:
    """One-sided paired t-test that the challenger's squared errors are larger on
    average: d = chal − champ per row; H1: mean(d) > 0. Returns (mean d, t, p)."""
    a = np.asarray(champion_sq_err, dtype=np.float64)
    z = np.asarray(challenger_sq_err, dtype=np.float64)
    if a.shape != z.shape:
        raise ValueError("paired errors must cover the same examples")
    d = z - a
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    if n < 2:
        return mean, 0.0, 1.0
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # identical differences: no evidence either way unless they are all worse
        return mean, (math.inf if mean > 0 else 0.0), (0.0 if mean > 0 else 1.0)
    t = mean / (sd / math.sqrt(n))
    return mean, float(t), float(t_sf(t, n - 1))


@dataclass(frozen=True)
class RegressionDecision:
    promote: bool
    reason: str
    challenger_rmse: float
    challenger_r2: float
    champion_rmse: float | None
    p_value: float | None
    mean_sq_err_diff: float | None = None  # mean of d_i = e_chal² − e_champ²
    t_statistic: float | None = None

    def as_tags(self) -> dict[str, str]:
        return {f"lepton.gate.{k}": "" if v is None else str(v) for k, v in asdict(self).items()}


def decide_regression(
    challenger_sq_err: np.ndarray,
    champion_sq_err: np.ndarray | None,
    y: np.ndarray,
    params: PromoteParams,
) -> RegressionDecision:
    """Decide whether a regression challenger replaces the champion, from the per-row
    squared errors of both over the same test rows `y` (None: no champion)."""
    z = np.asarray(challenger_sq_err, dtype=np.float64)
    yv = np.asarray(y, dtype=np.float64)
    rmse = float(np.sqrt(z.mean())) if len(z) else 0.0
    sst = float(((yv - yv.mean()) ** 2).sum()) if len(yv) else 0.0
    r2 = 1.0 - float(z.sum()) / sst if sst > 0 else 0.0
    if params.max_rmse is not None and rmse > params.max_rmse:
        return RegressionDecision(False, f"RMSE {rmse:.4g} above ceiling {params.max_rmse}", rmse, r2, None, None)
    if params.min_r2 is not None and r2 < params.min_r2:
        return RegressionDecision(False, f"R² {r2:.4f} below floor {params.min_r2}", rmse, r2, None, None)
    if champion_sq_err is None:
        floors = params.max_rmse is not None or params.min_r2 is not None
        why = "no champion to beat; floor met" if floors else "no champion to beat (no RMSE or R² floor set)"
        return RegressionDecision(True, why, rmse, r2, None, None)
    champ = float(np.sqrt(np.asarray(champion_sq_err, dtype=np.float64).mean()))
    mean_d, t, p = paired_t_worse(champion_sq_err, z)
    evidence = (rmse, r2, champ, p, mean_d, t)
    if rmse > champ * (1 + params.rmse_tolerance) + TOLERANCE_EPS:
        why = f"RMSE {rmse:.4g} > champion {champ:.4g} x (1 + tolerance {params.rmse_tolerance})"
        return RegressionDecision(False, why, *evidence)
    if p < params.alpha:
        why = f"significantly worse than champion (paired t-test on squared errors p={p:.4g} < {params.alpha})"
        return RegressionDecision(False, why, *evidence)
    return RegressionDecision(True, f"not worse than champion RMSE {champ:.4g} (paired t-test p={p:.4g})", *evidence)
