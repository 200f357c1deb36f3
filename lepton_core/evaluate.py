"""Classification metrics on a frozen split."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_core.predictor import Predictor

SUMMARY_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")


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


def correct_mask(predictor: Predictor, x_raw: np.ndarray, y: np.ndarray) -> NDArray[np.bool_]:
    """(N,) bool: which raw samples the predictor labels right (what the gate compares)."""
    correct: NDArray[np.bool_] = predictor.logits(x_raw).argmax(1) == y
    return correct


def evaluate_predictor(predictor: Predictor, x_raw: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """classification_metrics of a predictor on raw samples, through its own preprocessing."""
    return classification_metrics(y, predictor.logits(x_raw).argmax(1), predictor.classes)
