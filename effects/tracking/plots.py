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
