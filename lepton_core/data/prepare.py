"""The prepare stage's core: validate -> drop duplicates -> split -> pack.

Packed layout of a prepared dataset (a folder, versioned as one unit by DVC):
    x_{train,val,test}.npy   (N, C, H, W) uint8 images or (N, F) float32 tables
    y_{train,val,test}.npy   (N,) int64 class indices, or float64 targets (regression)
    meta.json                shapes, classes, scale: what a model needs to be built
    report.json              what validation quarantined and dropped, and why
Everything is written byte-deterministically (`np.save`, sorted JSON), so the same
raw data and params always give the same DVC hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_core.data.fingerprint import resolve_path
from lepton_core.data.formats import Quarantined, RawDataset, combine_datasets, load_raw
from lepton_core.data.plan import (  # noqa: F401 - re-exported: prepare's public names
    SPLITS,
    SplitPlan,
    describe,
    drop_duplicates,
    dump_json,
    plan_split,
    split_dataset,
)
from lepton_core.errors import DataError
from lepton_core.fileio import publish_dir
from lepton_core.params import DataParams


@dataclass
class Prepared:
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    meta: dict[str, Any]  # meta.json
    report: dict[str, Any]  # report.json


def validate(ds: RawDataset) -> tuple[np.ndarray, list[Quarantined]]:
    """Return a keep-mask over samples and the quarantine records for the rest."""
    n = len(ds.y)
    if ds.x.ndim < 2 or len(ds.x) != n:
        raise DataError(f"samples and labels disagree: x {ds.x.shape}, y {ds.y.shape}")
    if not (np.issubdtype(ds.x.dtype, np.integer) or np.issubdtype(ds.x.dtype, np.floating)):
        raise DataError(f"unsupported sample dtype {ds.x.dtype}")
    keep = np.ones(n, dtype=bool)
    records: list[Quarantined] = []
    if ds.task == "regression":
        bad_label = ~np.isfinite(np.asarray(ds.y, dtype=np.float64))
        for i in np.flatnonzero(bad_label):
            records.append({"item": f"sample {i}", "reason": "target NaN or inf"})
    else:
        bad_label = (ds.y < 0) | (ds.y >= len(ds.classes))
        for i in np.flatnonzero(bad_label):
            records.append({"item": f"sample {i}", "reason": f"label {int(ds.y[i])} out of range"})
    keep &= ~bad_label
    if np.issubdtype(ds.x.dtype, np.floating):
        finite = np.isfinite(ds.x.reshape(n, -1)).all(axis=1)
        for i in np.flatnonzero(~finite & keep):
            records.append({"item": f"sample {i}", "reason": "NaN or inf value"})
        keep &= finite
    return keep, records


def content_hashes(x: np.ndarray) -> list[bytes]:
    if len(x) == 0:
        return []
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def prepare_dataset(
    ds: RawDataset, *, val_fraction: float, test_fraction: float, seed: int, test_split: str = "random"
) -> Prepared:
    """Validate, dedup, split and pack. `test_split="canonical"` takes the format's
    own test rows (`ds.test_rows`: MNIST's t10k, CIFAR-10's test_batch) as the test
    split, so accuracies compare with published figures; val is then drawn from the
    rest. Without such rows, and with "random", the test split is drawn like val."""
    keep, records = validate(ds)
    quarantined = list(ds.quarantined) + records
    regression = ds.task == "regression"
    # regression: duplicates conflict when their targets differ; the split is
    # stratified on target quantiles (target_strata), so every split spans the range
    labels = np.unique(ds.y, return_inverse=True)[1].reshape(-1).astype(np.int64) if regression else ds.y
    plan = plan_split(
        labels,
        keep,
        content_hashes(ds.x[keep]),
        ds.classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        test_split=test_split,
        test_rows=ds.test_rows,
        strata=target_strata(ds.y) if regression else None,
    )
    dtype = np.uint8 if ds.x.dtype == np.uint8 else np.float32
    meta, report = describe(
        plan,
        kind=ds.kind,
        classes=ds.classes,
        feature_names=ds.feature_names,
        sample_shape=ds.x.shape[1:],
        dtype=dtype,
        raw_samples=len(ds.y),
        quarantined=quarantined,
    )
    y = {s: ds.y[plan.rows[s]] for s in SPLITS}
    if regression:
        y = {s: v.astype(np.float64) for s, v in y.items()}
        describe_target(meta, report, y)
    return Prepared(
        x={s: ds.x[plan.rows[s]].astype(dtype, copy=False) for s in SPLITS},
        y=y,
        meta=meta,
        report=report,
    )


def target_strata(y: np.ndarray, bins: int = 10) -> np.ndarray:
    """(N,) int64 quantile bin of each target (up to `bins` bins of about equal count;
    non-finite targets in bin 0, quarantined anyway): what a regression split is
    stratified on."""
    v = np.asarray(y, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if len(finite) == 0:
        return np.zeros(len(v), dtype=np.int64)
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))
    out: np.ndarray = np.searchsorted(edges, np.nan_to_num(v), side="right").astype(np.int64)
    return out


def describe_target(meta: dict[str, Any], report: dict[str, Any], y: dict[str, np.ndarray]) -> None:
    """A regression dataset's meta and report: one output, no classes, and the training
    split's target mean and standard deviation (the model learns standardised targets;
    the predictor answers in the target's units)."""
    train = y["train"]
    std = float(train.std()) if len(train) > 1 else 1.0
    meta.update(
        task="regression",
        n_classes=0,
        classes=[],
        n_outputs=1,
        target={"mean": float(train.mean()), "std": std if std > 0 else 1.0},
    )
    report.pop("class_counts", None)
    every = np.concatenate([y[s] for s in SPLITS])
    report["target_summary"] = {
        s: {"n": int(len(v)), "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
        for s, v in (*((s, y[s]) for s in SPLITS), ("all", every))
        if len(v)
    }


def write_prepared(prep: Prepared, out_dir: str | Path) -> Path:
    """Write the packed arrays into a sibling temp folder, then swap it into place,
    so a crash never leaves a half-written dataset at `out_dir`."""

    def build(tmp: Path) -> None:
        for s in SPLITS:
            np.save(tmp / f"x_{s}.npy", np.ascontiguousarray(prep.x[s]), allow_pickle=False)
            y_dtype = np.float64 if prep.meta.get("task") == "regression" else np.int64
            np.save(tmp / f"y_{s}.npy", prep.y[s].astype(y_dtype), allow_pickle=False)
        dump_json(prep.meta, tmp / "meta.json")
        dump_json(prep.report, tmp / "report.json")

    return publish_dir(out_dir, build)


def read_prepared(path: str | Path) -> Prepared:
    p = Path(path)
    if not (p / "meta.json").exists():
        raise DataError(f"{p}: not a prepared dataset (no meta.json)")
    x = {s: np.load(p / f"x_{s}.npy", allow_pickle=False) for s in SPLITS}
    y = {s: np.load(p / f"y_{s}.npy", allow_pickle=False) for s in SPLITS}
    meta = json.loads((p / "meta.json").read_text())
    report = json.loads((p / "report.json").read_text()) if (p / "report.json").exists() else {}
    return Prepared(x=x, y=y, meta=meta, report=report)


def prepare_from_params(
    params: DataParams, out_dir: str | Path, base_dir: Path | None = None, extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Load the raw data the params name, fold in `extra` labelled batches
    ({"format", "path", "id"}: those the monitor accepted), validate, dedup, split
    and write the packed dataset. The batch ids and the label column are written
    into meta.json, so the data version itself records its inputs.

    What `dvc repro`'s prepare stage and the Prefect task both call. Returns the
    validation report."""
    extra = sorted(extra or [], key=lambda b: b["id"])
    if params.format == "imagefolder":  # streamed: memory bounded by the chunk, not the folder
        from lepton_core.data.stream import prepare_imagefolder

        loaded, names, unreadable = _load_extra(extra, params)
        root = resolve_path(params.path, base_dir)
        if root is None:  # as load_raw says it (DataParams already asks for a path)
            raise DataError(f"format {params.format!r} needs a data path")
        if not root.exists():
            raise DataError(f"{root}: no such file or folder")
        return prepare_imagefolder(
            root,
            out_dir,
            val_fraction=params.val_fraction,
            test_fraction=params.test_fraction,
            seed=params.seed,
            extra=list(zip(loaded, names)),
            extra_quarantined=unreadable,
            meta_extra={"label_column": params.label_column, "monitored_batches": names},
        )
    if params.format == "custom":
        from lepton_core.data.loader import load_custom

        raw = load_custom(params, base_dir)
    else:
        raw = load_raw(params.format, resolve_path(params.path, base_dir), params.label_column, task=params.task)
    loaded, names, unreadable = _load_extra(extra, params)
    if extra:
        raw = combine_datasets(raw, loaded, names)
        raw.quarantined.extend(unreadable)
    prep = prepare_dataset(
        raw,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        seed=params.seed,
        test_split=params.test_split,
    )
    prep.meta["label_column"] = params.label_column
    prep.meta["monitored_batches"] = names  # the batches read; those set aside are in the report
    write_prepared(prep, out_dir)
    return prep.report


def _load_extra(
    extra: list[dict[str, Any]], params: DataParams
) -> tuple[list[RawDataset], list[str], list[Quarantined]]:
    loaded: list[RawDataset] = []
    names: list[str] = []
    unreadable: list[Quarantined] = []
    for b in extra:
        try:  # a batch accepted for another model (other label column, format) is set aside
            loaded.append(load_raw(b["format"], b["path"], params.label_column, task=params.task))
            names.append(b["id"])
        except DataError as e:
            unreadable.append({"item": b["id"], "reason": f"monitor batch not readable with these params: {e}"})
    return loaded, names, unreadable
