"""Folding accepted monitor batches into a dataset: tables join by column name, and a
batch these params cannot read is set aside with its reason, never a failed prepare."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from lepton_core.data.prepare import prepare_from_params, read_prepared
from lepton_core.params import DataParams


def _table(path, n, seed, columns):
    rng = np.random.default_rng(seed)
    species = np.array(["a", "b", "c"])[np.arange(n) % 3]
    centre = {"a": (0.0, 10.0, 20.0), "b": (5.0, 15.0, 25.0), "c": (9.0, 19.0, 29.0)}
    x = np.array([centre[s] for s in species]) + rng.normal(scale=0.5, size=(n, 3))
    df = pd.DataFrame(x, columns=["f1", "f2", "f3"])
    df["species"] = species
    df[columns].to_csv(path, index=False)
    return df


def test_a_reordered_batch_joins_by_column_name(tmp_path):
    _table(tmp_path / "base.csv", 90, 0, ["f1", "f2", "f3", "species"])
    batch = _table(tmp_path / "batch.csv", 30, 1, ["species", "f3", "f1", "f2"])
    params = DataParams(format="csv", path=str(tmp_path / "base.csv"), label_column="species")
    extra = [{"id": "batch-1", "format": "csv", "path": str(tmp_path / "batch.csv")}]
    prepare_from_params(params, tmp_path / "out", extra=extra)
    prep = read_prepared(tmp_path / "out")
    rows = np.concatenate([prep.x[s] for s in ("train", "val", "test")])
    expected = batch[["f1", "f2", "f3"]].to_numpy(np.float32)
    found = sum(any(np.allclose(r, e) for r in rows) for e in expected)
    assert found == 30  # every batch row, in the training column order
    assert prep.meta["monitored_batches"] == ["batch-1"]


def test_a_batch_these_params_cannot_read_is_set_aside(tmp_path):
    _table(tmp_path / "base.csv", 90, 0, ["f1", "f2", "f3", "species"])
    other = tmp_path / "other.csv"
    pd.DataFrame({"f1": [1.0], "label": ["x"]}).to_csv(other, index=False)  # another model's batch
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"f1": [1.0], "f2": [2.0], "species": ["a"]}).to_csv(missing, index=False)
    params = DataParams(format="csv", path=str(tmp_path / "base.csv"), label_column="species")
    extra = [
        {"id": "other-1", "format": "csv", "path": str(other)},
        {"id": "missing-1", "format": "csv", "path": str(missing)},
    ]
    report = prepare_from_params(params, tmp_path / "out", extra=extra)
    reasons = {q["item"]: q["reason"] for q in report["quarantined_items"]}
    assert "no label column" in reasons["other-1"]
    assert "lacks feature columns f3" in reasons["missing-1"]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["monitored_batches"] == ["missing-1"]  # read, then set aside by combine (counted in report)
    assert report["kept"] == 90
