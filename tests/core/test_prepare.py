"""prepare: validate -> de-duplicate -> stratified split -> deterministic packing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lepton_core.data.formats import RawDataset, load_digits
from lepton_core.data.prepare import (
    SPLITS,
    Prepared,
    content_hashes,
    drop_duplicates,
    prepare_dataset,
    read_prepared,
    split_dataset,
    validate,
    write_prepared,
)
from lepton_core.errors import DataError

VAL, TEST = 0.15, 0.2


def image_ds(n_per_class=(60, 40, 30), seed=0) -> RawDataset:
    rng = np.random.default_rng(seed)
    n = sum(n_per_class)
    x = rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8)
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n_per_class)]).astype(np.int64)
    return RawDataset(x=x, y=y, classes=[f"c{i}" for i in range(len(n_per_class))], kind="image")


def table_ds(n=120, f=4, k=3, seed=0) -> RawDataset:
    rng = np.random.default_rng(seed)
    return RawDataset(
        x=rng.normal(size=(n, f)).astype(np.float32),
        y=(np.arange(n) % k).astype(np.int64),
        classes=[str(i) for i in range(k)],
        kind="tabular",
        feature_names=[f"f{i}" for i in range(f)],
    )


def row_keys(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x.reshape(len(x), -1))}


def prep(ds, seed=0):
    return prepare_dataset(ds, val_fraction=VAL, test_fraction=TEST, seed=seed)


# ----------------------------------------------------------------------------- validation
def test_nan_and_inf_rows_quarantined():
    ds = table_ds()
    ds.x[3, 1] = np.nan
    ds.x[7, 0] = np.inf
    ds.x[11, 2] = -np.inf
    keep, records = validate(ds)
    assert np.flatnonzero(~keep).tolist() == [3, 7, 11]
    assert [r["item"] for r in records] == ["sample 3", "sample 7", "sample 11"]
    assert {r["reason"] for r in records} == {"NaN or inf value"}
    p = prep(ds)
    assert p.report["quarantined"] == 3
    assert p.report["quarantined_by_reason"] == {"NaN or inf value": 3}
    assert p.report["kept"] == 117 and p.report["raw_samples"] == 120
    for s in SPLITS:
        assert np.isfinite(p.x[s]).all()
    assert sum(len(p.y[s]) for s in SPLITS) == 117


def test_out_of_range_labels_quarantined():
    ds = table_ds()
    ds.y[0] = 3  # 3 classes: 0..2
    ds.y[5] = -1
    ds.x[5, 0] = np.nan  # bad label and NaN: recorded once
    keep, records = validate(ds)
    assert np.flatnonzero(~keep).tolist() == [0, 5]
    assert records == [
        {"item": "sample 0", "reason": "label 3 out of range"},
        {"item": "sample 5", "reason": "label -1 out of range"},
    ]
    p = prep(ds)
    assert p.report["quarantined"] == 2
    assert p.report["quarantined_by_reason"] == {"label -1 out of range": 1, "label 3 out of range": 1}
    assert all(((p.y[s] >= 0) & (p.y[s] < 3)).all() for s in SPLITS)


def test_loader_quarantine_carried_into_report():
    ds = image_ds()
    ds.quarantined = [
        {"item": "a.png", "reason": "unreadable image (OSError)"},
        {"item": "b.png", "reason": "unreadable image (UnidentifiedImageError)"},
        {"item": "img[9]", "reason": "truncated file"},
    ]
    p = prep(ds)
    assert p.report["quarantined"] == 3
    # the "(ExceptionName)" detail is folded away when counting by reason
    assert p.report["quarantined_by_reason"] == {"truncated file": 1, "unreadable image": 2}
    assert p.report["quarantined_items"][:3] == ds.quarantined


def test_validate_rejects_mismatched_shapes():
    ds = image_ds()
    bad = RawDataset(x=ds.x[:-1], y=ds.y, classes=ds.classes, kind="image")
    with pytest.raises(DataError):
        validate(bad)


# ----------------------------------------------------------------------------- duplicates
def test_exact_duplicates_dropped_and_counted():
    ds = image_ds()
    ds.x[10] = ds.x[0]
    ds.x[20] = ds.x[0]
    ds.x[70] = ds.x[65]
    ds.y[10] = ds.y[20] = ds.y[0]
    ds.y[70] = ds.y[65]
    hashes = content_hashes(ds.x)
    assert hashes[10] == hashes[0] and hashes[1] != hashes[0]
    keep, conflicts = drop_duplicates(hashes, ds.y)
    assert conflicts == 0
    assert np.flatnonzero(~keep).tolist() == [10, 20, 70]  # the first of each group stays
    p = prep(ds)
    assert p.report["duplicates_dropped"] == 3
    assert p.report["kept"] == 127
    all_rows = np.concatenate([p.x[s].reshape(len(p.x[s]), -1) for s in SPLITS])
    assert len(row_keys(all_rows)) == len(all_rows) == 127


def test_duplicates_with_conflicting_labels_are_all_dropped():
    ds = image_ds()
    ds.x[10] = ds.x[0]
    ds.y[10] = (ds.y[0] + 1) % len(ds.classes)
    keep, conflicts = drop_duplicates(content_hashes(ds.x), ds.y)
    assert conflicts == 2 and not keep[0] and not keep[10]
    p = prep(ds)
    assert p.report["conflicting_label_duplicates_dropped"] == 2
    assert p.report["duplicates_dropped"] == 0
    assert p.report["kept"] == len(ds.y) - 2


def test_all_samples_quarantined_is_a_one_line_error():
    ds = RawDataset(
        x=np.full((6, 3), np.nan, dtype=np.float32),
        y=np.array([0, 1, 0, 1, 0, 1]),
        classes=["a", "b"],
        kind="tabular",
    )
    with pytest.raises(DataError, match="no usable samples"):
        prep(ds)


def test_near_duplicates_are_kept():
    ds = image_ds()
    ds.x[10] = ds.x[0]
    ds.x[10, 0, 0, 0] ^= 1  # one bit differs
    assert prep(ds).report["duplicates_dropped"] == 0


# ----------------------------------------------------------------------------- errors
def test_one_class_raises():
    ds = image_ds(n_per_class=(20,))
    with pytest.raises(DataError, match="one class"):
        prep(ds)
    ds2 = image_ds(n_per_class=(20, 5))
    ds2.y[20:] = 7  # out of range: quarantined, leaving one class
    with pytest.raises(DataError, match="one class"):
        prep(ds2)


def test_too_few_samples_to_split_raises():
    ds = image_ds(n_per_class=(2, 2))
    with pytest.raises(DataError, match="too few samples"):
        prep(ds)


# ----------------------------------------------------------------------------- split
def test_split_deterministic_stratified_disjoint_covering():
    ds = image_ds(n_per_class=(200, 100, 40))
    p1, p2 = prep(ds, seed=3), prep(ds, seed=3)
    for s in SPLITS:
        np.testing.assert_array_equal(p1.x[s], p2.x[s])
        np.testing.assert_array_equal(p1.y[s], p2.y[s])
    keys = {s: row_keys(p1.x[s]) for s in SPLITS}
    assert keys["train"].isdisjoint(keys["val"])
    assert keys["train"].isdisjoint(keys["test"])
    assert keys["val"].isdisjoint(keys["test"])
    assert keys["train"] | keys["val"] | keys["test"] == row_keys(ds.x)
    assert p1.meta["counts"] == {s: len(p1.y[s]) for s in SPLITS}
    for c, n in enumerate((200, 100, 40)):
        n_test = int((p1.y["test"] == c).sum())
        n_val = int((p1.y["val"] == c).sum())
        n_train = int((p1.y["train"] == c).sum())
        assert n_test + n_val + n_train == n
        assert n_test == round(n * TEST) and n_val == round(n * VAL)
        assert abs(n_test / n - TEST) < 0.02 and abs(n_val / n - VAL) < 0.02
    # labels travel with their samples
    lookup = {r.tobytes(): int(label) for r, label in zip(ds.x.reshape(len(ds.x), -1), ds.y)}
    for s in SPLITS:
        for r, label in zip(p1.x[s].reshape(len(p1.x[s]), -1), p1.y[s]):
            assert lookup[r.tobytes()] == int(label)


def test_split_changes_with_seed():
    ds = image_ds(n_per_class=(100, 100))
    a, b = prep(ds, seed=0), prep(ds, seed=1)
    assert row_keys(a.x["test"]) != row_keys(b.x["test"])
    assert len(a.y["test"]) == len(b.y["test"])


def test_split_independent_of_input_order():
    ds = image_ds(n_per_class=(90, 60, 30), seed=5)
    ds.x[50] = ds.x[1]  # with a duplicate, too
    perm = np.random.default_rng(11).permutation(len(ds.y))
    shuffled = RawDataset(x=ds.x[perm], y=ds.y[perm], classes=ds.classes, kind="image")
    a, b = prep(ds, seed=2), prep(shuffled, seed=2)
    for s in SPLITS:
        assert row_keys(a.x[s]) == row_keys(b.x[s])
        # same order too, so the packed files (and the DVC hash) are identical
        np.testing.assert_array_equal(a.x[s], b.x[s])
        np.testing.assert_array_equal(a.y[s], b.y[s])
    assert a.report["duplicates_dropped"] + a.report["conflicting_label_duplicates_dropped"] >= 1
    assert a.report["duplicates_dropped"] == b.report["duplicates_dropped"]


def test_tiny_class_goes_to_train():
    y = np.array([0] * 30 + [1] * 2)
    hashes = content_hashes(np.arange(32, dtype=np.int64).reshape(32, 1))
    idx = split_dataset(y, hashes, VAL, TEST, seed=0)
    assert set(idx["train"].tolist()) >= {30, 31}
    assert sorted(np.concatenate([idx[s] for s in SPLITS]).tolist()) == list(range(32))


def test_tabular_meta_and_dtype():
    ds = table_ds()
    ds.x = ds.x.astype(np.float64)
    p = prep(ds)
    assert all(p.x[s].dtype == np.float32 for s in SPLITS)
    assert all(p.y[s].dtype == np.int64 for s in SPLITS)
    assert p.meta["kind"] == "tabular" and p.meta["x_scale"] == 1.0
    assert p.meta["input_shape"] == [4] and p.meta["feature_names"] == ["f0", "f1", "f2", "f3"]


def test_image_meta():
    p = prep(image_ds())
    assert p.meta["input_shape"] == [1, 6, 6]
    assert p.meta["dtype"] == "uint8" and p.meta["x_scale"] == pytest.approx(1 / 255)
    assert p.meta["n_classes"] == 3 and p.meta["classes"] == ["c0", "c1", "c2"]
    assert p.report["class_counts"] == {"c0": 60, "c1": 40, "c2": 30}


# ----------------------------------------------------------------------------- packing
def files_digest(folder) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


def test_write_read_roundtrip(tmp_path):
    ds = table_ds()
    ds.x[2, 0] = np.nan
    p = prep(ds)
    out = write_prepared(p, tmp_path / "prepared")
    assert out == tmp_path / "prepared"
    assert sorted(f.name for f in out.iterdir()) == sorted(
        [f"{a}_{s}.npy" for a in "xy" for s in SPLITS] + ["meta.json", "report.json"]
    )
    back = read_prepared(out)
    assert isinstance(back, Prepared)
    for s in SPLITS:
        np.testing.assert_array_equal(back.x[s], p.x[s])
        np.testing.assert_array_equal(back.y[s], p.y[s])
        assert back.x[s].dtype == p.x[s].dtype and back.y[s].dtype == np.int64
    assert back.meta == p.meta
    assert back.report == json.loads(json.dumps(p.report))


def test_write_prepared_is_byte_deterministic(tmp_path):
    ds = image_ds()
    ds.x[5] = ds.x[6]
    p1, p2 = prep(ds), prep(ds)
    a = write_prepared(p1, tmp_path / "a")
    b = write_prepared(p2, tmp_path / "b")
    da, db = files_digest(a), files_digest(b)
    assert len(da) == 8 and da == db
    # rewriting in place replaces the old folder and gives the same bytes again
    write_prepared(p1, a)
    assert files_digest(a) == da
    # no temp or ".old" folders are left next to the output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_rewrite_replaces_stale_files(tmp_path):
    out = tmp_path / "prep"
    write_prepared(prep(image_ds()), out)
    (out / "stale.txt").write_text("left over")
    p = prep(image_ds(seed=9))
    write_prepared(p, out)
    assert not (out / "stale.txt").exists()
    np.testing.assert_array_equal(read_prepared(out).x["train"], p.x["train"])


def test_read_prepared_rejects_other_folders(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        read_prepared(tmp_path)


def test_prepare_digits_end_to_end(tmp_path):
    p = prepare_dataset(load_digits(), val_fraction=VAL, test_fraction=TEST, seed=0)
    total = sum(len(p.y[s]) for s in SPLITS)
    assert total == p.report["kept"] == 1797 - p.report["duplicates_dropped"]
    assert p.meta["input_shape"] == [1, 8, 8]
    for s in SPLITS:
        assert set(np.unique(p.y[s])) == set(range(10))
    assert abs(len(p.y["test"]) / total - TEST) < 0.01
    assert abs(len(p.y["val"]) / total - VAL) < 0.01
