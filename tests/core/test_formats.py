"""Raw-format loaders, each fed small files written in the real on-disk format."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lepton_core.data.formats import (
    load_cifar10,
    load_digits,
    load_imagefolder,
    load_mnist,
    load_raw,
    load_table,
    read_idx,
)
from lepton_core.errors import DataError, LeptonError


# ----------------------------------------------------------------------------- MNIST IDX
def idx_bytes(arr: np.ndarray) -> bytes:
    """The real IDX layout: 0x00 0x00 <dtype 0x08=ubyte> <ndim>, big-endian uint32 dims, data."""
    assert arr.dtype == np.uint8
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def write_mnist_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> tuple[Path, Path]:
    img, lbl = idx_bytes(images), idx_bytes(labels)
    suffix = ".gz" if gz else ""
    ip = root / f"{split}-images-idx3-ubyte{suffix}"
    lp = root / f"{split}-labels-idx1-ubyte{suffix}"
    ip.write_bytes(gzip.compress(img) if gz else img)
    lp.write_bytes(gzip.compress(lbl) if gz else lbl)
    return ip, lp


def mnist_arrays(n: int, seed: int, h: int = 28, w: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_idx_header_is_the_real_one(tmp_path):
    images, labels = mnist_arrays(3, 0)
    ip, lp = write_mnist_split(tmp_path, "train", images, labels, gz=False)
    raw = ip.read_bytes()
    assert struct.unpack(">I", raw[:4])[0] == 0x00000803
    assert struct.unpack(">I", lp.read_bytes()[:4])[0] == 0x00000801
    arr, declared = read_idx(ip)
    assert declared == 3 and arr.shape == (3, 28, 28) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, images)
    lab, declared = read_idx(lp)
    assert declared == 3
    np.testing.assert_array_equal(lab, labels)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_train_and_t10k(tmp_path, gz):
    tr_x, tr_y = mnist_arrays(7, 1)
    te_x, te_y = mnist_arrays(4, 2)
    write_mnist_split(tmp_path, "train", tr_x, tr_y, gz)
    write_mnist_split(tmp_path, "t10k", te_x, te_y, gz)
    ds = load_mnist(tmp_path)
    assert ds.kind == "image"
    assert ds.x.shape == (11, 1, 28, 28) and ds.x.dtype == np.uint8
    assert ds.y.dtype == np.int64 and ds.y.shape == (11,)
    np.testing.assert_array_equal(ds.x[:7, 0], tr_x)
    np.testing.assert_array_equal(ds.x[7:, 0], te_x)
    np.testing.assert_array_equal(ds.y, np.concatenate([tr_y, te_y]).astype(np.int64))
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.quarantined == []


def test_mnist_torchvision_style_names(tmp_path):
    x, y = mnist_arrays(5, 3)
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(x))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(idx_bytes(y))
    ds = load_raw("mnist", tmp_path)
    np.testing.assert_array_equal(ds.x[:, 0], x)
    np.testing.assert_array_equal(ds.y, y)


def test_mnist_non_square_images(tmp_path):
    x, y = mnist_arrays(4, 4, h=5, w=9)
    write_mnist_split(tmp_path, "train", x, y, gz=False)
    ds = load_mnist(tmp_path)
    assert ds.x.shape == (4, 1, 5, 9)
    np.testing.assert_array_equal(ds.x[:, 0], x)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_mnist_truncated_images_keeps_complete_and_quarantines_rest(tmp_path, gz):
    x, y = mnist_arrays(10, 5)
    img = idx_bytes(x)
    header = 16
    # 6 complete images plus half of the 7th
    cut = header + 6 * 28 * 28 + 28 * 14
    data = img[:cut]
    if gz:
        # a gzip stream cut short: only what decompresses survives
        full = gzip.compress(data)
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(full)
        (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    else:
        (tmp_path / "train-images-idx3-ubyte").write_bytes(data)
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(y))
    ds = load_mnist(tmp_path)
    assert ds.x.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(ds.x[:, 0], x[:6])
    np.testing.assert_array_equal(ds.y, y[:6])
    assert len(ds.quarantined) == 4
    assert all(q["reason"] == "truncated file" for q in ds.quarantined)
    assert [q["item"] for q in ds.quarantined] == [
        f"train-images-idx3-ubyte{'.gz' if gz else ''}[{i}]" for i in range(6, 10)
    ]


def test_mnist_truncated_gzip_stream(tmp_path):
    """The .gz file itself is cut: complete images that decompress are kept, in order,
    and every declared image that is not kept is quarantined as "truncated file"."""
    import zlib

    n_total = 200
    x, y = mnist_arrays(n_total, 6)
    # random pixels are incompressible, so 60% of the stream holds ~119 whole images
    comp = gzip.compress(idx_bytes(x))
    cut = comp[: int(len(comp) * 0.6)]
    decodable = (len(zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)) - 16) // (28 * 28)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(cut)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    ds = load_mnist(tmp_path)
    n = len(ds.x)
    # NOTE: lepton recovers in 64 KiB chunks and drops the last partial chunk, so
    # fewer than `decodable` images come back (see the report); the prefix is exact.
    assert 0 < n <= decodable < n_total
    np.testing.assert_array_equal(ds.x[:, 0], x[:n])
    np.testing.assert_array_equal(ds.y, y[:n])
    assert len(ds.quarantined) == n_total - n
    assert {q["reason"] for q in ds.quarantined} == {"truncated file"}


def test_mnist_non_idx_file_raises(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"this is not an idx file at all\n" * 10)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="not an IDX file"):
        load_mnist(tmp_path)
    with pytest.raises(DataError):
        read_idx(tmp_path / "train-images-idx3-ubyte")


def test_mnist_empty_and_header_only_files(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(DataError):
        read_idx(p)
    q = tmp_path / "short_header"
    q.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + b"\x00\x00")
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(q)


def test_mnist_mismatched_counts_and_missing_half(tmp_path):
    x, y = mnist_arrays(5, 7)
    write_mnist_split(tmp_path, "train", x, y[:4], gz=False)
    with pytest.raises(DataError, match="5 images but 4 labels"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="must both be present"):
        load_mnist(tmp_path)


def test_mnist_folder_without_idx_files(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no MNIST IDX files"):
        load_mnist(tmp_path)
    with pytest.raises(DataError):
        load_mnist(tmp_path / "readme.txt")  # not a folder


# ----------------------------------------------------------------------------- CIFAR-10
def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    with path.open("wb") as f:
        pickle.dump(
            {
                b"batch_label": b"training batch",
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
            },
            f,
            protocol=protocol,
        )


CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar_meta(root: Path, names=CIFAR_NAMES) -> None:
    with (root / "batches.meta").open("wb") as f:
        pickle.dump({b"num_cases_per_batch": 10000, b"label_names": list(names), b"num_vis": 3072}, f)


def cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(N, 32, 32, 3) RGB images, their (N, 3072) row form (R plane, G plane, B plane) and labels."""
    rng = np.random.default_rng(seed)
    hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = np.concatenate([hwc[..., 0].reshape(n, -1), hwc[..., 1].reshape(n, -1), hwc[..., 2].reshape(n, -1)], axis=1)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return hwc, rows, labels


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch byte-for-byte in the style of the original (Python 2 cPickle, protocol 2):
    py2 `str` values as BINSTRING, the array via numpy.core.multiarray._reconstruct."""

    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if 0 <= v < 65536:
            return b"M" + struct.pack("<H", v)
        return b"J" + struct.pack("<i", v)

    dtype = (
        b"cnumpy\ndtype\n"
        + s(b"u1")
        + i(0)
        + i(1)
        + b"\x87R"
        + b"("
        + i(3)
        + s(b"|")
        + b"NNN"
        + i(-1)
        + i(-1)
        + i(0)
        + b"tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + i(0)
        + b"\x85"
        + s(b"b")
        + b"\x87R"
        + b"("
        + i(1)
        + i(data.shape[0])
        + i(data.shape[1])
        + b"\x86"
        + dtype
        + b"\x89"
        + s(data.tobytes())
        + b"tb"
    )
    label_list = b"](" + b"".join(i(v) for v in labels) + b"e"
    return (
        b"\x80\x02}("
        + s(b"batch_label")
        + s(b"training batch 1 of 5")
        + s(b"labels")
        + label_list
        + s(b"data")
        + array
        + b"u."
    )


def test_py2_style_pickle_is_a_valid_pickle():
    _, rows, labels = cifar_images(3, 0)
    obj = pickle.loads(py2_cifar_pickle(rows, labels), encoding="bytes")
    np.testing.assert_array_equal(obj[b"data"], rows)
    assert obj[b"labels"] == labels


def test_cifar10_batches_and_meta(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    h1, r1, l1 = cifar_images(4, 1)
    h2, r2, l2 = cifar_images(3, 2)
    ht, rt, lt = cifar_images(2, 3)
    write_cifar_batch(root / "data_batch_1", r1, l1)
    write_cifar_batch(root / "data_batch_2", r2, l2)
    write_cifar_batch(root / "test_batch", rt, lt)
    write_cifar_meta(root)
    # both the extracted folder and its parent are accepted
    for where in (root, tmp_path):
        ds = load_cifar10(where)
        assert ds.kind == "image"
        assert ds.x.shape == (9, 3, 32, 32) and ds.x.dtype == np.uint8
        hwc = np.concatenate([h1, h2, ht])
        # channel planes are R, G, B in that order
        np.testing.assert_array_equal(ds.x, hwc.transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ds.x[:, 0], hwc[..., 0])
        np.testing.assert_array_equal(ds.x[:, 2], hwc[..., 2])
        np.testing.assert_array_equal(ds.y, np.array(l1 + l2 + lt, dtype=np.int64))
        assert ds.classes == [n.decode() for n in CIFAR_NAMES]
        assert ds.quarantined == []


def test_cifar10_original_python2_pickles(tmp_path):
    h1, r1, l1 = cifar_images(5, 4)
    (tmp_path / "data_batch_1").write_bytes(py2_cifar_pickle(r1, l1))
    write_cifar_meta(tmp_path, names=[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"])
    ds = load_raw("cifar10", tmp_path)
    np.testing.assert_array_equal(ds.x, h1.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.y, l1)
    assert ds.classes == list("abcdefghij")


def test_cifar10_protocol2_from_python3(tmp_path):
    h1, r1, l1 = cifar_images(2, 5)
    write_cifar_batch(tmp_path / "data_batch_1", r1, l1, protocol=2)
    ds = load_cifar10(tmp_path)
    np.testing.assert_array_equal(ds.x, h1.transpose(0, 3, 1, 2))
    assert ds.classes == [str(i) for i in range(10)]  # no batches.meta: digit names


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_malicious_pickle_is_quarantined_not_executed(tmp_path):
    root = tmp_path / "batches"
    root.mkdir()
    marker = tmp_path / "PWNED"
    _, r1, l1 = cifar_images(3, 6)
    write_cifar_batch(root / "data_batch_1", r1, l1)
    with (root / "data_batch_2").open("wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f)
    assert b"system" in (root / "data_batch_2").read_bytes()
    ds = load_cifar10(root)
    assert not marker.exists()
    assert len(ds.x) == 3
    assert len(ds.quarantined) == 1
    q = ds.quarantined[0]
    assert q["item"] == "data_batch_2"
    assert "unreadable CIFAR batch" in q["reason"]


def test_cifar10_malicious_meta_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    _, r1, l1 = cifar_images(2, 7)
    write_cifar_batch(tmp_path / "data_batch_1", r1, l1)
    with (tmp_path / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": _Evil(marker)}, f)
    with pytest.raises(DataError):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar10_bad_shapes_quarantined_and_all_bad_raises(tmp_path):
    _, r1, l1 = cifar_images(3, 8)
    write_cifar_batch(tmp_path / "data_batch_1", r1[:, :100], l1)  # wrong row width
    write_cifar_batch(tmp_path / "data_batch_2", r1, l1[:2])  # labels do not match rows
    (tmp_path / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(DataError, match="no readable CIFAR-10 batch"):
        load_cifar10(tmp_path)
    write_cifar_batch(tmp_path / "data_batch_3", r1, l1)
    ds = load_cifar10(tmp_path)
    assert len(ds.x) == 3
    reasons = {q["item"]: q["reason"] for q in ds.quarantined}
    assert set(reasons) == {"data_batch_1", "data_batch_2", "test_batch"}
    assert reasons["data_batch_1"].startswith("unexpected batch shape")


def test_cifar10_missing_batches(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path)
    with pytest.raises(DataError):
        load_cifar10(tmp_path / "nope")


# ----------------------------------------------------------------------------- image folder
def save_gray(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path, format=fmt)


def test_imagefolder_grayscale_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    pngs = {}
    for cls in ("cat", "dog"):
        for k in range(3):
            arr = rng.integers(0, 256, (12, 10), dtype=np.uint8)
            save_gray(tmp_path / cls / f"{k}.png", arr)
            pngs[f"{cls}/{k}"] = arr
    flat = np.full((12, 10), 200, np.uint8)
    save_gray(tmp_path / "dog" / "z.jpg", flat, "JPEG")
    save_gray(tmp_path / "dog" / "z2.JPEG", flat, "JPEG")
    (tmp_path / "dog" / "notes.txt").write_text("not an image, ignored")
    ds = load_raw("imagefolder", tmp_path)
    assert ds.kind == "image"
    assert ds.classes == ["cat", "dog"]
    assert ds.x.shape == (8, 1, 12, 10) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1, 1, 1, 1])
    # sorted file order inside each class folder: 0.png 1.png 2.png z.jpg z2.JPEG
    for i, key in enumerate(["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]):
        np.testing.assert_array_equal(ds.x[i, 0], pngs[key])
    # JPEG is lossy, but a flat image stays (nearly) flat
    assert np.abs(ds.x[6:, 0].astype(int) - 200).max() <= 2
    assert ds.quarantined == []


def test_imagefolder_corrupt_files_are_quarantined(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        for k in range(3):
            save_gray(tmp_path / cls / f"{k}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "fake.png").write_text("I am a text file wearing a .png suffix")
    save_gray(tmp_path / "b" / "small.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    ds = load_imagefolder(tmp_path)
    assert ds.x.shape == (6, 1, 16, 16)
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1, 1])
    reasons = {q["item"]: q["reason"] for q in ds.quarantined}
    assert set(reasons) == {
        os.path.join("a", "truncated.png"),
        os.path.join("b", "fake.png"),
        os.path.join("b", "small.png"),
    }
    assert reasons[os.path.join("a", "truncated.png")].startswith("unreadable image")
    assert reasons[os.path.join("b", "fake.png")].startswith("unreadable image")
    assert reasons[os.path.join("b", "small.png")] == "size 8x8 != 16x16"


def test_imagefolder_rgb(tmp_path):
    rng = np.random.default_rng(2)
    arrs = []
    for cls in ("x", "y"):
        for k in range(2):
            arr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
            p = tmp_path / cls / f"{k}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, mode="RGB").save(p)
            arrs.append(arr)
    ds = load_imagefolder(tmp_path)
    assert ds.x.shape == (4, 3, 6, 7)
    np.testing.assert_array_equal(ds.x, np.stack(arrs).transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(ds.x[:, 0], np.stack(arrs)[..., 0])  # plane 0 is red


def test_imagefolder_grey_joins_rgb_as_three_equal_planes(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    (tmp_path / "c1").mkdir()
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c1" / "rgb.png")
    grey = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    save_gray(tmp_path / "c2" / "grey.png", grey)
    ds = load_imagefolder(tmp_path)
    assert ds.x.shape == (2, 3, 5, 5)
    for c in range(3):
        np.testing.assert_array_equal(ds.x[1, c], grey)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        load_imagefolder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="no readable PNG/JPEG images"):
        load_imagefolder(tmp_path)
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError):
        load_imagefolder(f)


# ----------------------------------------------------------------------------- tables
def test_csv_string_labels(tmp_path):
    p = tmp_path / "t.csv"
    pd.DataFrame(
        {"f1": [1.5, 2.0, 3.0, 4.0], "species": ["virginica", "setosa", "versicolor", "setosa"], "f2": [1, 2, 3, 4]}
    ).to_csv(p, index=False)
    ds = load_raw("csv", p, label_column="species")
    assert ds.kind == "tabular"
    assert ds.classes == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(ds.y, [2, 0, 1, 0])
    assert ds.y.dtype == np.int64
    assert ds.x.dtype == np.float32 and ds.x.shape == (4, 2)
    assert ds.feature_names == ["f1", "f2"]
    np.testing.assert_array_equal(ds.x, np.array([[1.5, 1], [2, 2], [3, 3], [4, 4]], np.float32))


def test_csv_integer_labels_sorted_numerically(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label\n0.1,10\n0.2,2\n0.3,1\n0.4,2\n")
    ds = load_table(p, "label")
    assert ds.classes == ["1", "2", "10"]
    np.testing.assert_array_equal(ds.y, [2, 1, 0, 1])


def test_parquet_table(tmp_path):
    p = tmp_path / "t.parquet"
    df = pd.DataFrame(
        {"x": np.arange(5, dtype=np.float64), "y": np.arange(5, dtype=np.int32) * 2, "target": list("babab")}
    )
    df.to_parquet(p)
    ds = load_raw("csv", p, label_column="target")
    assert ds.classes == ["a", "b"]
    np.testing.assert_array_equal(ds.y, [1, 0, 1, 0, 1])
    assert ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.x, df[["x", "y"]].to_numpy(np.float32))


def test_table_missing_label_is_quarantined(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,label\n1,x\n2,\n3,y\n")
    ds = load_table(p, "label")
    assert len(ds.x) == 2
    assert ds.classes == ["x", "y"]
    assert ds.quarantined == [{"item": "row 1", "reason": "missing label"}]


def test_table_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no label column 'label'"):
        load_table(p, "label")
    p.write_text("a,name,label\n1,foo,0\n2,bar,1\n")
    with pytest.raises(DataError, match="non-numeric feature columns: name"):
        load_table(p, "label")
    p.write_text("label\n0\n1\n")
    with pytest.raises(DataError, match="no feature columns"):
        load_table(p, "label")
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "missing.csv", "label")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="unreadable table"):
        load_table(bad, "label")


# ----------------------------------------------------------------------------- load_raw / digits
def test_load_raw_errors(tmp_path):
    with pytest.raises(DataError, match="unknown format"):
        load_raw("tiff", tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        load_raw("mnist", tmp_path / "does-not-exist")
    with pytest.raises(DataError, match="needs a data path"):
        load_raw("csv", None)
    with pytest.raises(LeptonError, match="unknown format"):  # caught by the CLI as a user error
        load_raw("tiff", tmp_path)


def test_load_digits():
    ds = load_raw("digits", None)
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.uint8
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.classes == [str(i) for i in range(10)]
    assert set(np.unique(ds.y)) == set(range(10))
    assert ds.x.min() == 0 and ds.x.max() == 255  # 0..16 ink counts rescaled to 0..255
    # agrees with scikit-learn's own loader
    from sklearn.datasets import load_digits as sk_load_digits

    sk = sk_load_digits()
    np.testing.assert_array_equal(ds.y, sk.target)
    np.testing.assert_array_equal(ds.x.reshape(1797, 64), np.rint(sk.data * 255 / 16).astype(np.uint8))
    assert load_digits().x.tobytes() == ds.x.tobytes()
