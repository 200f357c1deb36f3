"""The prepare stage's core: validate -> drop duplicates -> split -> pack.

Packed layout of a prepared dataset (a folder, versioned as one unit by DVC):
    x_{train,val,test}.npy   (N, C, H, W) uint8 images or (N, F) float32 tables
    y_{train,val,test}.npy   (N,) int64
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

import numpy as np

from lepton_core.data.fingerprint import resolve_path
from lepton_core.data.formats import RawDataset, combine_datasets, load_raw
from lepton_core.errors import DataError
from lepton_core.fileio import publish_dir
from lepton_core.params import DataParams

SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    meta: dict
    report: dict


def validate(ds: RawDataset) -> tuple[np.ndarray, list[dict]]:
    """Return a keep-mask over samples and the quarantine records for the rest."""
    n = len(ds.y)
    if ds.x.ndim < 2 or len(ds.x) != n:
        raise DataError(f"samples and labels disagree: x {ds.x.shape}, y {ds.y.shape}")
    if not (np.issubdtype(ds.x.dtype, np.integer) or np.issubdtype(ds.x.dtype, np.floating)):
        raise DataError(f"unsupported sample dtype {ds.x.dtype}")
    keep = np.ones(n, dtype=bool)
    records: list[dict] = []
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


def drop_duplicates(hashes: list[bytes], y: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep one of each group of byte-identical samples.

    A group whose copies carry different labels is dropped whole (which label is
    right cannot be told, and keeping the first would depend on file order).
    Returns (keep mask, number of samples dropped for conflicting labels).
    """
    labels: dict[bytes, set[int]] = {}
    for h, label in zip(hashes, y.tolist()):
        labels.setdefault(h, set()).add(label)
    seen: set[bytes] = set()
    keep = np.zeros(len(hashes), dtype=bool)
    conflicts = 0
    for i, h in enumerate(hashes):
        if len(labels[h]) > 1:
            conflicts += 1
        elif h not in seen:
            seen.add(h)
            keep[i] = True
    return keep, conflicts


def split_dataset(
    y: np.ndarray, hashes: list[bytes], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified, seeded split that depends on sample content, not file order.

    Within each class, samples are ordered by a hash of (seed, content); the first
    `test_fraction` go to test, the next `val_fraction` to val. Reordering the raw
    files never moves a sample between splits.
    """
    salt = seed.to_bytes(8, "little", signed=True)
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(salt + h, digest_size=8).digest(), "big") for h in hashes],
        dtype=np.uint64,
    )
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    order = np.argsort(keys, kind="stable")
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[np.argsort(keys[idx], kind="stable")]
        n = len(idx)
        if n < 3:  # too few to stratify: all of it trains
            parts["train"].append(idx)
            continue
        n_test = max(1, int(round(n * test_fraction)))
        n_val = max(1, int(round(n * val_fraction)))
        n_test = min(n_test, n - 2)
        n_val = min(n_val, n - n_test - 1)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    out = {}
    for s, p in parts.items():
        idx = np.concatenate(p) if p else np.zeros(0, np.int64)
        # within a split, order by the same key: the packed bytes do not depend on file order
        out[s] = idx[np.argsort(rank[idx], kind="stable")]
    return out


def prepare_dataset(
    ds: RawDataset, *, val_fraction: float, test_fraction: float, seed: int
) -> Prepared:
    keep, records = validate(ds)
    quarantined = list(ds.quarantined) + records
    x, y = ds.x[keep], ds.y[keep]
    if len(y) == 0:
        raise DataError("no usable samples after validation")
    hashes = content_hashes(x)
    unique, n_conflicts = drop_duplicates(hashes, y)
    n_dupes = int((~unique).sum()) - n_conflicts
    x, y = x[unique], y[unique]
    hashes = [h for h, u in zip(hashes, unique) if u]
    present = np.unique(y)
    if len(y) == 0:
        raise DataError("no usable samples after removing conflicting duplicates")
    if len(present) < 2:
        raise DataError(f"the dataset has one class ({ds.classes[int(present[0])]!r}); need at least two")
    idx = split_dataset(y, hashes, val_fraction, test_fraction, seed)
    if len(idx["test"]) == 0 or len(idx["val"]) == 0:
        raise DataError("too few samples per class to split into train/val/test")
    if ds.x.dtype == np.uint8:
        scale = 1.0 / 255.0
    else:
        x = x.astype(np.float32)
        scale = 1.0
    meta = {
        "kind": ds.kind,
        "input_shape": list(x.shape[1:]),
        "dtype": str(x.dtype),
        "x_scale": scale,
        "n_classes": len(ds.classes),
        "classes": list(ds.classes),
        "feature_names": list(ds.feature_names),
        "counts": {s: int(len(idx[s])) for s in SPLITS},
    }
    reasons: dict[str, int] = {}
    for r in quarantined:
        key = r["reason"].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "raw_samples": int(len(ds.y)),
        "quarantined": len(quarantined),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "quarantined_items": quarantined[:1000],
        "duplicates_dropped": n_dupes,
        "conflicting_label_duplicates_dropped": n_conflicts,
        "kept": int(len(y)),
        "class_counts": {ds.classes[int(c)]: int((y == c).sum()) for c in present},
    }
    return Prepared(
        x={s: x[idx[s]] for s in SPLITS}, y={s: y[idx[s]] for s in SPLITS}, meta=meta, report=report
    )


def _dump_json(obj: dict, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_prepared(prep: Prepared, out_dir: str | Path) -> Path:
    """Write the packed arrays into a sibling temp folder, then swap it into place,
    so a crash never leaves a half-written dataset at `out_dir`."""

    def build(tmp: Path) -> None:
        for s in SPLITS:
            np.save(tmp / f"x_{s}.npy", np.ascontiguousarray(prep.x[s]), allow_pickle=False)
            np.save(tmp / f"y_{s}.npy", prep.y[s].astype(np.int64), allow_pickle=False)
        _dump_json(prep.meta, tmp / "meta.json")
        _dump_json(prep.report, tmp / "report.json")

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


def prepare_from_params(params: DataParams, out_dir: str | Path, base_dir: Path | None = None,
                        extra: list[dict] | None = None) -> dict:
    """Load the raw data the params name, fold in `extra` labelled batches
    ({"format", "path", "id"}: those the monitor accepted), validate, dedup, split
    and write the packed dataset. The batch ids and the label column are written
    into meta.json, so the data version itself records its inputs.

    What `dvc repro`'s prepare stage and the Prefect task both call. Returns the
    validation report."""
    raw = load_raw(params.format, resolve_path(params.path, base_dir), params.label_column)
    extra = sorted(extra or [], key=lambda b: b["id"])
    loaded, names, unreadable = [], [], []
    if extra:
        for b in extra:
            try:  # a batch accepted for another model (other label column, format) is set aside
                loaded.append(load_raw(b["format"], b["path"], params.label_column))
                names.append(b["id"])
            except DataError as e:
                unreadable.append({"item": b["id"], "reason": f"monitor batch not readable with these params: {e}"})
        raw = combine_datasets(raw, loaded, names)
        raw.quarantined.extend(unreadable)
    prep = prepare_dataset(
        raw, val_fraction=params.val_fraction, test_fraction=params.test_fraction, seed=params.seed
    )
    prep.meta["label_column"] = params.label_column
    prep.meta["monitored_batches"] = names  # the batches read; those set aside are in the report
    write_prepared(prep, out_dir)
    return prep.report
