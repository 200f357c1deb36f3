"""Metrics on a frozen split: classification (accuracy, macro P/R/F1, confusion
matrix) or regression (RMSE, MAE, R²)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_core.predictor import BasePredictor

SUMMARY_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")
REGRESSION_KEYS = ("rmse", "mae", "r2")


def summary_keys(metrics: dict[str, Any]) -> tuple[str, ...]:
    """The headline metrics of a metrics dict, whichever task made it."""
    return REGRESSION_KEYS if metrics.get("task") == "regression" else SUMMARY_KEYS


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE and R² (1 - SSE/SST; 0 for a constant target) in the target's units."""
    y = np.asarray(y_true, dtype=np.float64)
    err = np.asarray(y_pred, dtype=np.float64) - y
    n = len(y)
    sse = float((err**2).sum())
    sst = float(((y - y.mean()) ** 2).sum()) if n else 0.0
    return {
        "task": "regression",
        "rmse": float(np.sqrt(sse / n)) if n else 0.0,
        "mae": float(np.abs(err).mean()) if n else 0.0,
        "r2": 1.0 - sse / sst if sst > 0 else 0.0,
        "n": int(n),
        "target_mean": float(y.mean()) if n else 0.0,
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts; rows are true classes, columns predictions."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """accuracy, macro precision/recall/F1 and per-class metrics.

    Macro averages are over the classes present in `y_true` (a class absent from
    the test split has no recall to average).
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    return {
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "precision_macro": float(precision[present].mean()) if present.any() else 0.0,
        "recall_macro": float(recall[present].mean()) if present.any() else 0.0,
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(len(y_true)),
        "per_class": {
            classes[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(k)
        },
        "confusion_matrix": cm.tolist(),
    }


def correct_mask(predictor: BasePredictor, x_raw: np.ndarray, y: np.ndarray) -> NDArray[np.bool_]:
    """(N,) bool: which raw samples the predictor labels right (what the gate compares)."""
    correct: NDArray[np.bool_] = predictor.logits(x_raw).argmax(1) == y
    return correct


def squared_errors(predictor: BasePredictor, x_raw: np.ndarray, y: np.ndarray) -> NDArray[np.float64]:
    """(N,) float64: each raw sample's squared error in the target's units (what the
    regression gate compares, row by row)."""
    err: NDArray[np.float64] = (predictor.values(x_raw) - np.asarray(y, dtype=np.float64)) ** 2
    return err


def gate_evidence(predictor: BasePredictor, x_raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, what the gate pairs across two versions: right/wrong, or squared errors."""
    return squared_errors(predictor, x_raw, y) if predictor.regression else correct_mask(predictor, x_raw, y)


def evaluate_predictor(predictor: BasePredictor, x_raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The task's metrics of a predictor on raw samples, through its own preprocessing."""
    if predictor.regression:
        return regression_metrics(y, predictor.values(x_raw))
    return classification_metrics(y, predictor.logits(x_raw).argmax(1), predictor.classes)


def logged_test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """What a training run records of its evaluation: `test_<headline>` for each
    summary key, and `test_f1_class_<name>` for each class whose name fits a metric key."""
    out = {f"test_{k}": float(metrics[k]) for k in summary_keys(metrics) if k in metrics}
    for name, v in metrics.get("per_class", {}).items():
        if name.isidentifier() or name.isalnum():
            out[f"test_f1_class_{name}"] = float(v["f1"])
    return out
