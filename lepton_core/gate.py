"""The promotion gate: absolute floor, tolerance on accuracy, and McNemar's exact
test on the paired predictions of challenger and champion over the same examples."""

from __future__ import annotations

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
