"""Drift features and verdicts, and synthetic drift for demonstrations.

Images are described by features a person can read, computed per image on the
grey-level picture scaled to [0, 1]:

    mean_intensity   average grey level
    contrast         standard deviation of the grey levels
    ink_fraction     share of pixels brighter than 0.5
    edge_energy      mean absolute difference between neighbouring pixels
    center_x/y       intensity-weighted centre, 0 = left/top, 1 = right/bottom
    spread_x/y       intensity-weighted standard deviation around that centre
    asymmetry        mean |image - its mirror image| (left-right)

and the model's outputs: the predicted class and its softmax confidence, or, for a
regression model, the predicted `value` in the target's units (the column the
serving endpoint's prediction log has too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from lepton_core.predictor import Predictor

IMAGE_FEATURES = (
    "mean_intensity",
    "contrast",
    "ink_fraction",
    "edge_energy",
    "center_x",
    "center_y",
    "spread_x",
    "spread_y",
    "asymmetry",
)


def image_features(x: np.ndarray) -> dict[str, np.ndarray]:
    """x: (N, C, H, W) floats in [0, 1] -> one (N,) array per feature."""
    g = x.mean(axis=1) if x.ndim == 4 else x  # (N, H, W) grey levels
    n, h, w = g.shape
    flat = g.reshape(n, -1)
    mass = flat.sum(1) + 1e-8
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    col = g.sum(1)  # (N, W): mass per column
    row = g.sum(2)  # (N, H): mass per row
    cx = (col * xs).sum(1) / mass
    cy = (row * ys).sum(1) / mass
    sx = np.sqrt(np.maximum((col * xs**2).sum(1) / mass - cx**2, 0))
    sy = np.sqrt(np.maximum((row * ys**2).sum(1) / mass - cy**2, 0))
    dx = np.abs(np.diff(g, axis=2)).mean(axis=(1, 2))
    dy = np.abs(np.diff(g, axis=1)).mean(axis=(1, 2))
    return {
        "mean_intensity": flat.mean(1),
        "contrast": flat.std(1),
        "ink_fraction": (flat > 0.5).mean(1),
        "edge_energy": (dx + dy) / 2,
        "center_x": cx,
        "center_y": cy,
        "spread_x": sx,
        "spread_y": sy,
        "asymmetry": np.abs(g - g[:, :, ::-1]).mean(axis=(1, 2)),
    }


def output_features(logits: np.ndarray) -> dict[str, np.ndarray]:
    """logits (N, K) -> predicted class (N,) int64 and softmax confidence (N,)."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    return {"prediction": p.argmax(1).astype(np.int64), "confidence": p.max(1).astype(np.float64)}


# ---------------------------------------------------------------- feature frames
DRIFT_EVENT = "lepton.drift.detected"  # the Prefect event the monitor emits and retrain reacts to
VALUE_COLUMN = "value"  # a regression model's predicted number (the prediction log's name for it)
PREDICTION_COLUMN = "prediction"  # a classifier's predicted class index


def output_column(regression: bool) -> str:
    """The column of a feature frame that holds the model's answer."""
    return VALUE_COLUMN if regression else PREDICTION_COLUMN


def feature_frame(
    x: np.ndarray,
    logits: np.ndarray,
    kind: str,
    feature_names: list[str],
    labels: np.ndarray | None,
    values: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per sample: f_<feature> columns, prediction, confidence (and label);
    with `values` (a regression model's predicted targets) `value` in place of
    prediction and confidence, and labels kept as numbers.

    x: model input, images (N, C, H, W) in [0, 1] or tables (N, F) raw; logits (N, K)."""
    import pandas as pd

    if kind == "image":
        cols = {f"f_{k}": v for k, v in image_features(x).items()}
    else:
        names = feature_names or [str(i) for i in range(x.shape[1])]
        cols = {f"f_{n}": x[:, i].astype(np.float64) for i, n in enumerate(names)}
    df = pd.DataFrame(cols)
    if values is not None:
        # one real-valued output: a softmax "class" and "confidence" of it would be constant
        df[VALUE_COLUMN] = np.asarray(values, dtype=np.float64)
    else:
        for k, v in output_features(logits).items():
            df[k] = v
    if labels is not None:
        df["label"] = labels.astype(np.float64 if values is not None else np.int64)
    return df


def predictor_frame(predictor: Predictor, samples: Any, labels: np.ndarray | None) -> pd.DataFrame:
    """The feature frame of raw samples as the predictor reads them (InputError if it cannot)."""
    raw = predictor.check(samples)
    pre = predictor.preprocessing
    x = predictor.to_input(raw).numpy() if pre.kind == "image" else raw.astype(np.float32)
    logits = predictor.logits(raw)
    values = pre.values(logits) if pre.regression else None
    return feature_frame(x, logits, pre.kind, list(pre.feature_names), labels, values)


# ---------------------------------------------------------------- verdicts
@dataclass(frozen=True)
class DriftThresholds:
    drift_share: float  # share of drifted features that counts as drift
    max_accuracy_drop: float  # accuracy drop (labels present) that counts as drift
    min_rows: int  # fewer usable rows: "insufficient data"
    prediction_drift: bool = True  # a drifted prediction distribution counts as drift
    max_rmse_increase: float = 0.25  # regression: relative RMSE increase (labels present) that counts as drift


@dataclass
class Verdict:
    status: str  # "drift" | "no drift" | "insufficient data" | "schema mismatch"
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return self.status == "drift"

    def line(self) -> str:
        return self.status + (": " + "; ".join(self.reasons) if self.reasons else "")


def rmse_increase(reference: float, current: float) -> float:
    """current / reference - 1 (0.41: 41 % worse); a perfect reference makes any error an
    infinite increase."""
    if reference > 0:
        return current / reference - 1.0
    return math.inf if current > 0 else 0.0


def _number(v: float) -> str:
    """58.3, 0.0412, 1,234: three significant digits without an exponent below 1000."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def decide_drift(
    share_drifted: float,
    prediction_drifted: bool,
    accuracy_drop: float | None,
    t: DriftThresholds,
    *,
    rmse: tuple[float, float] | None = None,
    regression: bool = False,
) -> Verdict:
    """The verdict. Classification: `accuracy_drop` of a labelled batch. Regression
    (`regression=True`): the predicted values' distribution is the prediction, and
    `rmse` = (reference RMSE, batch RMSE) of a labelled batch."""
    reasons = []
    if share_drifted >= t.drift_share:
        reasons.append(f"{share_drifted:.0%} of features drifted (threshold {t.drift_share:.0%})")
    if t.prediction_drift and prediction_drifted:
        what = "predicted values" if regression else "predicted classes"
        reasons.append(f"the distribution of {what} drifted")
    if accuracy_drop is not None and accuracy_drop >= t.max_accuracy_drop:
        reasons.append(f"accuracy dropped by {accuracy_drop:.3f} (threshold {t.max_accuracy_drop})")
    scores = {"share_drifted": float(share_drifted), "prediction_drifted": float(prediction_drifted)}
    if accuracy_drop is not None:
        scores["accuracy_drop"] = float(accuracy_drop)
    if rmse is not None:
        ref, cur = float(rmse[0]), float(rmse[1])
        increase = rmse_increase(ref, cur)
        if increase >= t.max_rmse_increase:
            reasons.append(
                f"RMSE rose by {increase:.0%} ({_number(ref)} -> {_number(cur)}; threshold {t.max_rmse_increase:.0%})"
            )
        scores.update(reference_rmse=ref, current_rmse=cur, rmse_increase=increase)
    return Verdict("drift" if reasons else "no drift", reasons, scores)


# ---------------------------------------------------------------- the retrain a drift event starts
# The monitor puts `monitor.retrain_init` into the drift event's payload; the retrain
# deployment's trigger (lepton.deploy) turns it into the `train` parameter of the run
# it starts, so the setting of the monitor run that saw the drift decides.
RETRAIN_INIT_KEY = "retrain_init"
WARM_START = "champion"  # train.init_from of a warm start from the model being monitored


def drift_payload_fields(retrain_init: str) -> dict[str, str]:
    """What the drift event carries for the retrain it triggers."""
    if retrain_init not in ("scratch", WARM_START):
        raise ValueError(f"monitor.retrain_init {retrain_init!r}: scratch or champion")
    return {RETRAIN_INIT_KEY: retrain_init}


def retrain_init_from(payload: dict[str, Any], deployed: str | None) -> str | None:
    """train.init_from of the retrain a drift event with `payload` starts: the champion
    for a warm start, else what the deployment was given (`deployed`)."""
    return WARM_START if payload.get(RETRAIN_INIT_KEY) == WARM_START else deployed


# ---------------------------------------------------------------- synthetic drift
STRENGTHS = {"none": 0.0, "low": 0.25, "mild": 0.25, "medium": 0.5, "high": 1.0}
KINDS = ("rotate", "noise", "brightness", "class-prior")


def parse_strength(s: str | float) -> float:
    if isinstance(s, (int, float)):
        v = float(s)
    elif s.lower() in STRENGTHS:
        v = STRENGTHS[s.lower()]
    else:
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"strength {s!r}: use low|medium|high or a number in [0, 1]") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"strength {s!r} must be within [0, 1]")
    return v


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    """Nearest-neighbour rotation about the centre; (H, W), zeros outside.
    (Bilinear sampling would also blur the strokes, a second drift we do not want.)"""
    h, w = img.shape
    a = math.radians(degrees)
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    src_x = np.rint(math.cos(a) * xx + math.sin(a) * yy + (w - 1) / 2).astype(int)
    src_y = np.rint(-math.sin(a) * xx + math.cos(a) * yy + (h - 1) / 2).astype(int)
    ok = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    out = np.zeros_like(img)
    out[ok] = img[src_y[ok], src_x[ok]]
    return out


def simulate_drift(
    x: np.ndarray, y: np.ndarray, kind: str, strength: float, seed: int = 0, n_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Derive a drifted batch from held-out images.

    x: (N, C, H, W) uint8; returns uint8 images and labels. `strength` in [0, 1]:
    rotate up to 60 degrees, noise up to sigma 0.5, brightness up to -60% ink,
    class-prior: up to 95% of the batch from two classes.
    """
    rng = np.random.default_rng(seed)
    xf = x.astype(np.float64) / 255.0
    if kind == "rotate":
        angles = rng.uniform(0.5, 1.0, len(x)) * 60.0 * strength * rng.choice([-1, 1], len(x))
        xf = np.stack([np.stack([_rotate(c, a) for c in img]) for img, a in zip(xf, angles)])
    elif kind == "noise":
        xf = xf + rng.normal(0.0, 0.5 * strength, xf.shape)
    elif kind == "brightness":
        xf = xf * (1.0 - 0.6 * strength) + 0.1 * strength
    elif kind == "class-prior":
        favoured = rng.choice(n_classes, size=2, replace=False)
        weights = np.where(np.isin(y, favoured), 1.0, max(1e-3, 1.0 - strength))
        n = len(y)
        idx = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
        return x[idx], y[idx]
    else:
        raise ValueError(f"unknown drift kind {kind!r} ({', '.join(KINDS)})")
    return np.clip(np.rint(xf * 255.0), 0, 255).astype(np.uint8), y.copy()
