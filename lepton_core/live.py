"""Two versions judged on live traffic: the prediction log's answers of A and B
(the champion's, a canary's, a shadow's), paired on (request_id, instance), and the
true labels clients posted for them.

The figures are the gate's (lepton_core.gate) on other evidence: agreement on the
requests both scored, accuracy or RMSE on the pairs with a label, McNemar's exact test
(classification) or the one-sided paired t-test on squared errors (regression), with A
in the champion's place and B in the challenger's. Each version's figures on all of
its own labelled requests are given too: a canary and the champion answer different
requests, so they have no pairs but each has its own accuracy.

Frames in (`answers`): request_id, instance, answer (a class index, or the predicted
value for regression); feedback: request_id, instance, label (one per instance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from lepton_core.gate import TOLERANCE_EPS, mcnemar_report, paired_t_worse
from lepton_core.params import PromoteParams

KEY = ["request_id", "instance"]


def _metric(answer: np.ndarray, label: np.ndarray, regression: bool) -> dict[str, float | None]:
    """Accuracy, or RMSE; None on no rows."""
    if regression:
        sq = (answer.astype(np.float64) - label.astype(np.float64)) ** 2
        return {"rmse": float(math.sqrt(sq.mean())) if len(sq) else None}
    return {"accuracy": float((answer.astype(np.int64) == label.astype(np.int64)).mean()) if len(answer) else None}


def own_figures(answers: pd.DataFrame, feedback: pd.DataFrame, regression: bool) -> dict[str, Any]:
    """One version on every instance it scored: how many, how many got a label, and
    its accuracy (or RMSE) on those."""
    labelled = answers.merge(feedback, on=KEY, how="inner")
    return {
        "instances": int(len(answers)),
        "labelled": int(len(labelled)),
        **_metric(labelled["answer"].to_numpy(), labelled["label"].to_numpy(), regression),
    }


def _paired_test(a: np.ndarray, b: np.ndarray, y: np.ndarray, regression: bool) -> dict[str, Any]:
    """The gate's paired test on the labelled pairs, keyed as `lepton compare` keys it."""
    if regression:
        yv = y.astype(np.float64)
        a_sq, b_sq = (a.astype(np.float64) - yv) ** 2, (b.astype(np.float64) - yv) ** 2
        mean_d, t, p = paired_t_worse(a_sq, b_sq)
        return {
            "test": "paired t-test on squared errors (one-sided: B worse than A)",
            "a_closer": int((b_sq > a_sq).sum()),
            "b_closer": int((b_sq < a_sq).sum()),
            "mean_sq_err_diff": mean_d,
            "t_statistic": t,
            "p_value": p,
        }
    a_right, b_right = a.astype(np.int64) == y.astype(np.int64), b.astype(np.int64) == y.astype(np.int64)
    return mcnemar_report(a_right, b_right)


def paired_figures(a: pd.DataFrame, b: pd.DataFrame, feedback: pd.DataFrame, regression: bool) -> dict[str, Any]:
    """A's and B's answers on the instances both scored: agreement (classification:
    the share with the same class; regression: the mean absolute difference), and on
    the pairs with a label each one's accuracy (RMSE) and the paired test (None
    without a labelled pair)."""
    pairs = a.merge(b, on=KEY, how="inner", suffixes=("_a", "_b"))
    va, vb = pairs["answer_a"].to_numpy(), pairs["answer_b"].to_numpy()
    out: dict[str, Any] = {"instances": int(len(pairs))}
    if regression:
        diff = np.abs(va.astype(np.float64) - vb.astype(np.float64))
        out["mean_abs_diff"] = float(diff.mean()) if len(diff) else None
    else:
        out["agreement"] = float((va.astype(np.int64) == vb.astype(np.int64)).mean()) if len(pairs) else None
    labelled = pairs.merge(feedback, on=KEY, how="inner")
    la, lb, y = labelled["answer_a"].to_numpy(), labelled["answer_b"].to_numpy(), labelled["label"].to_numpy()
    out["labelled"] = int(len(labelled))
    out["a"] = _metric(la, y, regression)
    out["b"] = _metric(lb, y, regression)
    out["paired_test"] = _paired_test(la, lb, y, regression) if len(labelled) else None
    return out


def live_figures(a: pd.DataFrame, b: pd.DataFrame, feedback: pd.DataFrame, regression: bool) -> dict[str, Any]:
    """Everything `lepton compare --live` reports on A and B (see the module's doc)."""
    return {
        "task": "regression" if regression else "classification",
        "a": own_figures(a, feedback, regression),
        "b": own_figures(b, feedback, regression),
        "paired": paired_figures(a, b, feedback, regression),
    }


@dataclass(frozen=True)
class LiveDecision:
    """The live half of a promotion: B (the challenger) against A (the champion) on
    the labelled requests both scored."""

    promote: bool
    reason: str
    pairs: int  # instances both scored
    labelled_pairs: int  # ... with a label
    agreement: float | None  # classification: share of pairs with the same class
    champion_metric: float | None  # accuracy, or RMSE (regression), on the labelled pairs
    challenger_metric: float | None
    p_value: float | None

    def as_tags(self) -> dict[str, str]:
        return {f"lepton.gate.live_{k}": "" if v is None else str(v) for k, v in asdict(self).items()}


def decide_live(figures: dict[str, Any], params: PromoteParams) -> LiveDecision:
    """Whether the live evidence lets B replace A, with the gate's own semantics:
    too few labelled pairs (promote.min_live_pairs) refuses; so does a drop beyond
    promote.tolerance (regression: RMSE beyond promote.rmse_tolerance, relative) or a
    paired test that finds B worse at promote.alpha."""
    p = figures["paired"]
    regression = figures["task"] == "regression"
    key = "rmse" if regression else "accuracy"
    test = p["paired_test"] or {}
    champ, chal, pv = p["a"].get(key), p["b"].get(key), test.get("p_value")
    evidence = (p["instances"], p["labelled"], p.get("agreement"), champ, chal, pv)
    if p["labelled"] < params.min_live_pairs:
        why = (
            f"only {p['labelled']} labelled live requests were scored by both "
            f"(promote.min_live_pairs {params.min_live_pairs})"
        )
        return LiveDecision(False, why, *evidence)
    assert champ is not None and chal is not None and pv is not None  # labelled pairs exist
    if not all(math.isfinite(v) for v in (champ, chal, pv)):  # inf > inf is False: never let it through
        return LiveDecision(False, f"the live figures are not finite numbers ({champ}, {chal}, p={pv})", *evidence)
    if regression:
        if chal > champ * (1 + params.rmse_tolerance) + TOLERANCE_EPS:
            why = f"live RMSE {chal:.4g} > champion {champ:.4g} x (1 + tolerance {params.rmse_tolerance})"
            return LiveDecision(False, why, *evidence)
        if pv < params.alpha:
            why = f"significantly worse than champion on live traffic (paired t-test p={pv:.4g} < {params.alpha})"
            return LiveDecision(False, why, *evidence)
        return LiveDecision(True, f"live RMSE {chal:.4g} vs champion {champ:.4g} (p={pv:.4g})", *evidence)
    if champ - chal > params.tolerance + TOLERANCE_EPS:
        why = f"live accuracy {chal:.4f} < champion {champ:.4f} - tolerance {params.tolerance}"
        return LiveDecision(False, why, *evidence)
    if test["only_a_right"] > test["only_b_right"] and pv < params.alpha:
        why = f"significantly worse than champion on live traffic (McNemar p={pv:.4g} < {params.alpha})"
        return LiveDecision(False, why, *evidence)
    return LiveDecision(True, f"live accuracy {chal:.4f} vs champion {champ:.4f} (McNemar p={pv:.4g})", *evidence)
