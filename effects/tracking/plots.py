"""Figures for the tracker (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_confusion_matrix(cm: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * k, 1.0 + 0.5 * k), dpi=100)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45 if k > 10 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (test split)")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > top / 2 else "black",
                )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_regression_plots(y_true: np.ndarray, y_pred: np.ndarray, out_dir: str | Path, title: str = "") -> list[Path]:
    """predicted_vs_actual.png (the diagonal is a perfect model) and residuals.png
    (residual = predicted - actual, against the prediction) for a regression test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    paths = []
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(y, p, s=10, alpha=0.6)
    lo, hi = (float(min(y.min(), p.min())), float(max(y.max(), p.max()))) if len(y) else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title(title or "predicted vs actual (test split)")
    fig.tight_layout()
    paths.append(out / "predicted_vs_actual.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(p, p - y, s=10, alpha=0.6)
    ax.axhline(0.0, color="grey", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (predicted - actual)")
    ax.set_title("residuals (test split)")
    fig.tight_layout()
    paths.append(out / "residuals.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
