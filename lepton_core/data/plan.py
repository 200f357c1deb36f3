"""Dedup and split planned from content hashes and labels alone (no pixels): what the
in-memory prepare (prepare.py) and the streamed one (stream.py) share, so both pack
the same rows in the same order."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from lepton_core.data.formats import Quarantined
from lepton_core.errors import DataError

SPLITS = ("train", "val", "test")


def drop_duplicates(hashes: list[bytes], y: np.ndarray) -> tuple[np.ndarray, int]:
    """Keep one of each group of byte-identical samples.

    A group whose copies carry different labels is dropped whole (which label is
    right cannot be told, and keeping the first would depend on file order).
    Returns (keep mask, number of samples dropped for conflicting labels).
    """
    n = len(hashes)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep, 0
    # arrays rather than a set per sample: a few bytes a sample, for folders of millions
    h = np.empty(n, dtype=object)
    h[:] = hashes
    _, first, group = np.unique(h, return_index=True, return_inverse=True)  # first: stable, first copy
    group = group.reshape(-1)
    y = np.asarray(y, dtype=np.int64)
    span = int(y.max() - y.min()) + 1
    pairs = np.unique(group.astype(np.int64) * span + (y - y.min()))
    n_labels = np.bincount(pairs // span, minlength=len(first))  # distinct labels per group
    keep[first[n_labels == 1]] = True
    return keep, int((n_labels[group] > 1).sum())


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
        n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 else 0
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


@dataclass
class SplitPlan:
    """Which raw rows go where: `rows[s]` indexes the raw samples, in the packed order."""

    rows: dict[str, np.ndarray]
    y_kept: np.ndarray  # labels of the samples kept (after validation and dedup)
    duplicates: int
    conflicts: int
    canonical: bool


def plan_split(
    y: np.ndarray,
    keep: np.ndarray,
    hashes: list[bytes],
    classes: list[str],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    test_split: str = "random",
    test_rows: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> SplitPlan:
    """Dedup and split the raw rows `keep` marks as valid, given their content hashes
    (`hashes`: one per kept row). Needs no pixels: the in-memory and the streamed
    prepare share it, so both pack the same rows in the same order. `strata` (raw rows'
    groups; default the labels) is what the split is stratified on: a regression
    target's quantile bins, while `y` (codes of distinct target values) finds conflicts."""
    kept = np.flatnonzero(keep)
    y = y[kept]
    groups = (y if strata is None else np.asarray(strata)[kept]).astype(np.int64)
    if len(y) == 0:
        raise DataError("no usable samples after validation")
    unique, n_conflicts = drop_duplicates(hashes, y)
    n_dupes = int((~unique).sum()) - n_conflicts
    y = y[unique]
    groups = groups[unique]
    hashes = [h for h, u in zip(hashes, unique) if u]
    present = np.unique(y)
    if len(y) == 0:
        raise DataError("no usable samples after removing conflicting duplicates")
    if len(present) < 2:
        if not classes:
            raise DataError("every target has the same value: nothing to learn")
        raise DataError(f"the dataset has one class ({classes[int(present[0])]!r}); need at least two")
    canonical = None
    if test_split == "canonical" and test_rows is not None:
        canonical = np.asarray(test_rows, dtype=bool)[keep][unique]
        if not canonical.any() or canonical.all():
            canonical = None  # dedup left one side empty: fall back to a drawn split
    if canonical is None:
        idx = split_dataset(groups, hashes, val_fraction, test_fraction, seed)
    else:
        rest = np.flatnonzero(~canonical)
        part = split_dataset(groups[rest], [hashes[i] for i in rest], val_fraction, 0.0, seed)
        test = np.flatnonzero(canonical)
        test = test[sorted(range(len(test)), key=lambda i: hashes[test[i]])]  # content order, not file order
        # (a regression target needs no seen value: its codes are not classes)
        unseen = sorted(set(np.unique(y[test]).tolist()) - set(np.unique(y[rest]).tolist())) if classes else []
        if unseen:
            names = ", ".join(repr(classes[int(k)]) for k in unseen[:10])
            raise DataError(
                f"the canonical test split holds classes the training files lack ({names}): a model trained "
                "on them could not score those; add their training files, or set data.test_split=random"
            )
        idx = {"train": rest[part["train"]], "val": rest[part["val"]], "test": test}
    if len(idx["test"]) == 0 or len(idx["val"]) == 0:
        per = "per class " if classes else ""
        raise DataError(f"too few samples {per}to split into train/val/test")
    orig = kept[np.flatnonzero(unique)]
    return SplitPlan(
        rows={s: orig[idx[s]] for s in SPLITS},
        y_kept=y,
        duplicates=n_dupes,
        conflicts=n_conflicts,
        canonical=canonical is not None,
    )


def describe(
    plan: SplitPlan,
    *,
    kind: str,
    classes: list[str],
    feature_names: list[str],
    sample_shape: tuple[int, ...],
    dtype: DTypeLike,
    raw_samples: int,
    quarantined: list[Quarantined],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """meta.json and report.json of a planned split."""
    y = plan.y_kept
    meta = {
        "kind": kind,
        "input_shape": list(sample_shape),
        "dtype": str(np.dtype(dtype)),
        "x_scale": 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0,
        "n_classes": len(classes),
        "classes": list(classes),
        "feature_names": list(feature_names),
        "counts": {s: int(len(plan.rows[s])) for s in SPLITS},
        "test_split": "canonical" if plan.canonical else "random",
    }
    reasons: dict[str, int] = {}
    for r in quarantined:
        key = r["reason"].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    report = {
        "raw_samples": int(raw_samples),
        "quarantined": len(quarantined),
        "quarantined_by_reason": dict(sorted(reasons.items())),
        "quarantined_items": quarantined[:1000],
        "duplicates_dropped": plan.duplicates,
        "conflicting_label_duplicates_dropped": plan.conflicts,
        "kept": int(len(y)),
        "class_counts": {classes[int(c)]: int((y == c).sum()) for c in np.unique(y)} if classes else {},
    }
    return meta, report


def dump_json(obj: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
