"""Offline batch scoring (`lepton predict`): a file or folder of raw samples, scored
by the model behind an alias, written as one parquet file (atomically).

The file's columns: a classifier's `label`, `class_name`, `confidence`, `probabilities`
(and `true_label` when the data carried labels); a regression model's `value`, in the
target's units (and `true_value` when the table carried the target column)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from effects.data.data_source import detect_format
from effects.runtime.settings import Settings, get_settings
from effects.tracking.registry import load_alias
from lepton_core.data.formats import RawDataset, load_raw
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
    # a regression model's target column is a number: read it as one from a table
    # (other formats carry class labels, which mean nothing to it, so none are kept)
    regression_table = pre.regression and fmt == "csv"
    try:
        raw = load_raw(
            fmt, data, pre.label_column, labelled=False, task="regression" if regression_table else "classification"
        )
    except DataError as e:
        raise DataError(str(e)) from None
    table_rows = pd.DataFrame(raw.x, columns=raw.feature_names) if raw.kind == "tabular" else None
    n = len(raw.x)
    outs = []
    bar = Progress(max(n, 1), "predict", enabled=progress)
    for i in range(0, n, chunk):
        part = table_rows.iloc[i : i + chunk] if table_rows is not None else raw.x[i : i + chunk]
        logits = predictor.logits(part)
        outs.append(pre.values(logits) if pre.regression else softmax(logits))
        bar.update(min(chunk, n - i))
    bar.close()
    summary = {
        "rows": n,
        "quarantined": len(raw.quarantined),
        "model": model_name,
        "version": str(mv.version),
        "out": str(out),
    }
    if pre.regression:
        values = np.concatenate(outs) if outs else np.zeros(0, np.float64)
        targets = raw.y if regression_table and _has_column(data, pre.label_column) else None
        table = _value_table(values, targets, summary)
    else:
        table = _label_table(outs, raw, pre.classes, summary)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    atomic_write(out, buf.getvalue())
    return summary


def _label_table(probs: list[np.ndarray], raw: RawDataset, classes: tuple[str, ...], summary: dict):
    """A classifier's predictions (and the accuracy, into `summary`, when the data
    carried labels of the model's classes)."""
    import pandas as pd

    n = len(raw.x)
    p = np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32)
    labels = p.argmax(1)
    table = pd.DataFrame(
        {
            "label": labels.astype(np.int64),
            "class_name": [classes[i] for i in labels],
            "confidence": p.max(1) if len(p) else np.zeros(0),
            "probabilities": [row.tolist() for row in p],
        }
    )
    known = raw.y is not None and len(raw.y) == n and len(raw.classes) > 0
    if known:  # the file carried labels: keep them by name, in the model's class indices
        index = {c: i for i, c in enumerate(classes)}
        table["true_label"] = [index.get(raw.classes[int(c)], -1) if c >= 0 else -1 for c in raw.y]
    if known and n and (table["true_label"] >= 0).all():
        summary["accuracy"] = float((table["true_label"] == table["label"]).mean())
    return table


def _value_table(values: np.ndarray, targets: np.ndarray | None, summary: dict):
    """A regression model's predicted values (and, when the table carried the target,
    the true values, with the RMSE and MAE into `summary`)."""
    import pandas as pd

    table = pd.DataFrame({"value": values.astype(np.float64)})
    if targets is not None and len(targets) == len(values):
        table["true_value"] = targets.astype(np.float64)
        if len(values):
            err = values - table["true_value"].to_numpy()
            summary["rmse"] = float(np.sqrt(np.mean(err**2)))
            summary["mae"] = float(np.mean(np.abs(err)))
    return table


def _has_column(path: Path, column: str) -> bool:
    """Whether a CSV/Parquet table has `column` (read from its header alone): without
    it the loader fills the targets with placeholders, which are no true values."""
    import pandas as pd

    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return column in pq.read_schema(path).names
    return column in pd.read_csv(path, nrows=0).columns
