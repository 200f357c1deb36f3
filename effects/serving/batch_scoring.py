"""Offline batch scoring (`lepton predict`): a file or folder of raw samples, scored
by the model behind an alias, written as one parquet file (atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from effects.data.data_source import detect_format
from effects.runtime.settings import Settings, get_settings
from effects.tracking.registry import load_alias
from lepton_core.data.formats import load_raw
from lepton_core.errors import DataError, LeptonError
from lepton_core.fileio import atomic_write
from lepton_core.predictor import softmax
from lepton_core.progress import Progress


def score_data(
    data: Path,
    fmt: str | None,
    out: Path,
    model_name: str,
    alias: str = "champion",
    chunk: int = 4096,
    progress: bool = True,
    settings: Settings | None = None,
) -> dict:
    """Score every readable sample of `data`; returns a summary. Samples the loaders
    quarantine (unreadable images, rows without a label) are counted, not scored."""
    import pandas as pd

    s = settings or get_settings()
    if not data.exists():
        raise LeptonError(f"{data}: no such file or folder")
    fmt = detect_format(data, fmt)
    if fmt == "predlog":
        raise LeptonError(f"{data}: a prediction log holds predictions already, not samples")
    mv, predictor = load_alias(model_name, alias, s)
    pre = predictor.preprocessing
    try:
        raw = load_raw(fmt, data, pre.label_column, labelled=False)
    except DataError as e:
        raise DataError(str(e)) from None
    table_rows = pd.DataFrame(raw.x, columns=raw.feature_names) if raw.kind == "tabular" else None
    n = len(raw.x)
    probs = []
    bar = Progress(max(n, 1), "predict", enabled=progress)
    for i in range(0, n, chunk):
        part = table_rows.iloc[i : i + chunk] if table_rows is not None else raw.x[i : i + chunk]
        probs.append(softmax(predictor.logits(part)))
        bar.update(min(chunk, n - i))
    bar.close()
    p = np.concatenate(probs) if probs else np.zeros((0, len(pre.classes)), np.float32)
    labels = p.argmax(1)
    table = pd.DataFrame(
        {
            "label": labels.astype(np.int64),
            "class_name": [pre.classes[i] for i in labels],
            "confidence": p.max(1) if len(p) else np.zeros(0),
            "probabilities": [row.tolist() for row in p],
        }
    )
    known = raw.y is not None and len(raw.y) == n and len(raw.classes) > 0
    if known:  # the file carried labels: keep them by name, in the model's class indices
        index = {c: i for i, c in enumerate(pre.classes)}
        table["true_label"] = [index.get(raw.classes[int(c)], -1) if c >= 0 else -1 for c in raw.y]
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(out, buf.getvalue())
    summary = {
        "rows": n,
        "quarantined": len(raw.quarantined),
        "model": model_name,
        "version": str(mv.version),
        "out": str(out),
    }
    if known and n and (table["true_label"] >= 0).all():
        summary["accuracy"] = float((table["true_label"] == table["label"]).mean())
    return summary
