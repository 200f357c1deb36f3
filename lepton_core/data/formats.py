"""Loaders for the raw formats Lepton reads. Each returns a `RawDataset`:

    x: (N, C, H, W) uint8 for images, (N, F) float32 for tables
    y: (N,) int64 class indices
    quarantined: samples that could not be read, with the reason

A loader never crashes on one bad sample: it quarantines it and goes on. A whole
source that is missing or unusable raises `DataError` (one line for the user).

Memory is bounded by what the files hold, never by what a header claims: a count or
shape read from a file is checked against the bytes that are there before anything
is allocated for it, gzip streams are inflated no further than their header
declares, pickles may build no array larger than their own file, and an image's
pixel count is read from its header before it is decoded.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lepton_core.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Largest image decoded (4096 x 4096): the model trains at the images' own size, and
# a small PNG can declare gigapixels (Pillow itself only refuses beyond ~179 M).
MAX_IMAGE_PIXELS = 4096 * 4096
# A truncated IDX file keeps its complete items and quarantines the missing ones; a
# header that declares more missing items than this (and than the file holds) is no
# truncated download but a wrong or crafted header, refused without a record per item.
IDX_MISSING_SLACK = 1024

# One sample (or file) left out, and why: {"item": str, "reason": str}
Quarantined = dict[str, str]


@dataclass
class RawDataset:
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    kind: str  # "image" | "tabular"
    feature_names: list[str] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    # (N,) bool: the format's own test split (MNIST's t10k files, CIFAR-10's test_batch);
    # None where the format has none
    test_rows: np.ndarray | None = None
    # classification: y (N,) int64 class indices into `classes`; regression: y (N,)
    # float64 target values and no classes
    task: str = "classification"


def _quarantine(ds_list: list[Quarantined], item: str, reason: str) -> None:
    ds_list.append({"item": item, "reason": reason})


# ---------------------------------------------------------------- digits
def digits_file() -> Path:
    # scikit-learn ships the 1,797 UCI digits as a gzipped CSV; read it directly
    # (find_spec does not import sklearn, which keeps this module light).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled digits need scikit-learn installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"scikit-learn's digits file is missing ({path.name})")
    return path


def load_digits() -> RawDataset:
    table = np.loadtxt(digits_file(), delimiter=",", dtype=np.float64)  # (1797, 65)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    # 0..16 ink counts -> 0..255 so every image format shares one scale.
    x = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return RawDataset(x=x, y=labels, classes=[str(i) for i in range(10)], kind="image")


# ---------------------------------------------------------------- MNIST IDX
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _inflate(raw: bytes, limit: int) -> bytes:
    """At most `limit` bytes of a gzip stream. Every byte that inflates is kept, so
    a truncated .gz still yields its complete items (gzip.decompress would raise);
    the stream is never inflated beyond what the header asked for."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    buf = raw
    try:
        while len(out) < limit:
            piece = d.decompress(buf, min(limit - len(out), 1 << 23))
            out += piece
            buf = d.unconsumed_tail
            if d.eof or (not piece and not buf):
                break
    except zlib.error:
        pass  # damaged further on: keep what came out before the damage
    return bytes(out)


def read_idx(path: Path) -> tuple[np.ndarray, int]:
    """Read an IDX file. Returns (array of the complete items, number of items declared).

    The header is checked against the bytes the file holds before anything is
    allocated: a header that declares far more items than are there (a crafted
    file: 2**31 items in a 10-item file) is refused in one line."""
    raw = path.read_bytes()
    gz = raw[:2] == b"\x1f\x8b"
    data = _inflate(raw, 4) if gz else raw
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path.name}: not an IDX file")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{path.name}: IDX header declares no dimensions")
    header = 4 + 4 * ndim
    if gz:
        data = _inflate(raw, header)
    if len(data) < header:
        raise DataError(f"{path.name}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    item = dtype.itemsize
    for d in dims[1:]:  # Python ints: no overflow, whatever the header says
        item *= d
    if item == 0:
        raise DataError(f"{path.name}: IDX header declares empty items {tuple(dims[1:])}")
    if gz:
        data = _inflate(raw, header + dims[0] * item)
    complete = min(dims[0], (len(data) - header) // item)
    if dims[0] - complete > max(complete, IDX_MISSING_SLACK):
        raise DataError(
            f"{path.name}: IDX header declares {dims[0]} items of {item} bytes but the file holds "
            f"{complete} (a wrong header or a file cut short)"
        )
    arr = np.frombuffer(data, dtype=dtype, count=complete * (item // dtype.itemsize), offset=header)
    return arr.reshape((complete, *dims[1:])), dims[0]


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    # torchvision-style names use '.' instead of '-'
    alt = stem.replace("-idx", ".idx")
    for name in (alt, alt + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def load_mnist(root: Path) -> RawDataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MNIST expects a folder of IDX files")
    xs: list[NDArray[np.uint8]] = []
    ys: list[NDArray[np.int64]] = []
    tests: list[NDArray[np.bool_]] = []
    quarantined: list[Quarantined] = []
    found = False
    for split in ("train", "t10k"):
        img_path = _find(root, f"{split}-images-idx3-ubyte")
        lbl_path = _find(root, f"{split}-labels-idx1-ubyte")
        if img_path is None and lbl_path is None:
            continue
        if img_path is None or lbl_path is None:
            raise DataError(f"{root}: {split} images and labels must both be present")
        found = True
        images, n_img = read_idx(img_path)
        labels, n_lbl = read_idx(lbl_path)
        if images.ndim != 3:
            raise DataError(f"{img_path.name}: expected (N, H, W) images, got {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{lbl_path.name}: expected (N,) labels, got {labels.shape}")
        for path, arr in ((img_path, images), (lbl_path, labels)):
            if arr.dtype != np.uint8:
                raise DataError(f"{path.name}: MNIST holds unsigned bytes (IDX type 0x08), not {arr.dtype}")
        if n_img != n_lbl:
            raise DataError(f"{split}: {n_img} images but {n_lbl} labels declared")
        n = min(len(images), len(labels))
        for i in range(n, n_img):
            _quarantine(quarantined, f"{img_path.name}[{i}]", "truncated file")
        xs.append(images[:n, None].astype(np.uint8))
        ys.append(labels[:n].astype(np.int64))
        tests.append(np.full(n, split == "t10k"))
    if not found:
        raise DataError(f"{root}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
    test_rows = np.concatenate(tests)
    return RawDataset(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        classes=[str(i) for i in range(10)],
        kind="image",
        quarantined=quarantined,
        # canonical only when both halves are there
        test_rows=test_rows if test_rows.any() and not test_rows.all() else None,
    )


# ---------------------------------------------------------------- CIFAR-10
class _SafeUnpickler(pickle.Unpickler):
    # CIFAR batches are pickles; refuse anything but plain containers and numpy arrays
    # so a crafted file cannot run code, and let no array grow beyond the file's size
    # (numpy's pickles start from an empty array whose shape the pickle chooses).
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._limit = len(data)

    def find_class(self, module: str, name: str) -> Any:  # a class, or the bounded reconstruct
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found
        limit = self._limit

        # the arguments come from the pickle: anything at all until checked
        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            dims = shape if isinstance(shape, tuple) else (shape,)
            n = np.dtype(dtype).itemsize
            for d in dims:
                n *= int(d)
            if n < 0 or n > limit:
                raise pickle.UnpicklingError(f"an array of {n} bytes in a {limit}-byte file")
            return found(subtype, shape, dtype)

        return reconstruct


def _load_cifar_batch(path: Path) -> dict[str, Any]:
    try:
        # the whole file in memory (bounded by its size): a length inside the pickle
        # can then never make a read allocate more than the file holds
        obj = _SafeUnpickler(path.read_bytes()).load()
    except Exception as e:  # any decode failure is the file's problem, not a crash
        raise DataError(
            f"{path.name}: unreadable CIFAR batch ({e.__class__.__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path.name}: not a CIFAR batch")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar10(root: Path) -> RawDataset:
    root = Path(root)
    if root.is_dir() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise DataError(f"{root}: CIFAR-10 expects the folder of python batches")
    files = sorted(root.glob("data_batch_*")) + sorted(root.glob("test_batch"))
    if not files:
        raise DataError(f"{root}: no CIFAR-10 batches (data_batch_1 ... test_batch)")
    classes = [str(i) for i in range(10)]
    if (root / "batches.meta").exists():
        meta = _load_cifar_batch(root / "batches.meta")
        names = meta.get("label_names")
        if names is not None and not (isinstance(names, (list, tuple)) and 2 <= len(names) <= 100_000):
            raise DataError("batches.meta: label_names must be a list of class names")
        if names:
            classes = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]
    xs: list[NDArray[np.uint8]] = []
    ys: list[NDArray[np.int64]] = []
    tests: list[NDArray[np.bool_]] = []
    quarantined: list[Quarantined] = []
    for path in files:
        try:
            batch = _load_cifar_batch(path)
        except DataError as e:
            _quarantine(quarantined, path.name, str(e))
            continue
        try:
            data = np.asarray(batch.get("data"))
            labels = np.asarray(batch.get("labels"), dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            _quarantine(quarantined, path.name, f"unreadable data or labels ({e.__class__.__name__})")
            continue
        if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data):
            _quarantine(quarantined, path.name, f"unexpected batch shape {data.shape}")
            continue
        if data.dtype.kind not in "ui" or (data.size and (data.min() < 0 or data.max() > 255)):
            _quarantine(quarantined, path.name, f"pixels are not bytes 0..255 ({data.dtype})")
            continue
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
        ys.append(labels)
        tests.append(np.full(len(labels), path.name == "test_batch"))
    if not xs:
        raise DataError(f"{root}: no readable CIFAR-10 batch")
    test_rows = np.concatenate(tests)
    return RawDataset(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        classes=classes,
        kind="image",
        quarantined=quarantined,
        test_rows=test_rows if test_rows.any() and not test_rows.all() else None,
    )


# ---------------------------------------------------------------- image folders
@dataclass
class ImageFolderScan:
    """What the headers of an image folder say, before any pixel is decoded."""

    root: Path
    classes: list[str]
    # (rel, label, (h, w), mode) per image in file order; the path is root / rel (no Path
    # objects: a few hundred bytes each, for every file of a large folder)
    found: list[tuple[str, int, tuple[int, int], str]]
    quarantined: list[Quarantined]
    size: tuple[int, int]  # the commonest (h, w): images of another size are quarantined


def grey_mode(mode: str) -> bool:
    return mode in ("1", "L", "I;16", "I", "F")


def scan_imagefolder(root: Path) -> ImageFolderScan:
    """List an image folder and read every image's header (no pixels decoded): the
    commonest size wins and images of another size will be quarantined (resizing would
    silently change the data), so only images that will be kept are decoded, and none
    larger than MAX_IMAGE_PIXELS."""
    from PIL import Image  # decoding PNG/JPEG needs Pillow; imported only for this format

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: an image folder must be a directory of class folders")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders")
    quarantined: list[Quarantined] = []
    found: list[tuple[str, int, tuple[int, int], str]] = []
    for label, cdir in enumerate(class_dirs):
        for path in sorted(cdir.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = str(path.relative_to(root))
            try:
                # PNG and JPEG only: Pillow would otherwise guess any format from the
                # bytes (EPS among them, which it hands to Ghostscript)
                with Image.open(path, formats=["PNG", "JPEG"]) as img:
                    w, h = img.size
                    mode = img.mode
            except Image.DecompressionBombError:  # Pillow's own ceiling, far above ours
                _quarantine(quarantined, rel, f"image size outside 1..{MAX_IMAGE_PIXELS} pixels")
                continue
            except Exception as e:
                _quarantine(quarantined, rel, f"unreadable image ({e.__class__.__name__})")
                continue
            if w * h > MAX_IMAGE_PIXELS or w * h == 0:
                _quarantine(quarantined, rel, f"image size {w}x{h} outside 1..{MAX_IMAGE_PIXELS} pixels")
                continue
            found.append((rel, label, (h, w), sys.intern(mode)))
    if not found:
        raise DataError(f"{root}: no readable PNG/JPEG images")
    sizes: dict[tuple[int, int], int] = {}
    for f in found:
        sizes[f[2]] = sizes.get(f[2], 0) + 1
    size = max(sizes, key=lambda s: (sizes[s], s))
    return ImageFolderScan(root, [d.name for d in class_dirs], found, quarantined, size)


def decode_image(path: Path) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB uint8 pixels; raises on truncated or corrupt data."""
    from PIL import Image

    with Image.open(path, formats=["PNG", "JPEG"]) as img:
        img.load()  # raises on truncated or corrupt data
        mode = "L" if grey_mode(img.mode) else "RGB"
        return np.asarray(img.convert(mode), dtype=np.uint8)


def iter_imagefolder(scan: ImageFolderScan) -> Iterator[tuple[NDArray[np.uint8], int, str]]:
    """Yield (pixels, label, rel) for each image of the commonest size, in file order,
    decoding one at a time; the others are quarantined into `scan.quarantined` as met."""
    for rel, label, hw, _mode in scan.found:
        if hw != scan.size:
            _quarantine(scan.quarantined, rel, f"size {hw[1]}x{hw[0]} != {scan.size[1]}x{scan.size[0]}")
            continue
        try:
            arr = decode_image(scan.root / rel)
        except Exception as e:
            _quarantine(scan.quarantined, rel, f"unreadable image ({e.__class__.__name__})")
            continue
        yield arr, label, rel


def to_planes(a: np.ndarray, rgb: bool) -> np.ndarray:
    """(C, H, W): grey images join an RGB set as three equal planes."""
    if rgb:
        a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a
        return a.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return a[None]


def load_imagefolder(root: Path) -> RawDataset:
    """The whole folder in memory (monitor batches, scoring); the prepare stage streams
    large folders instead (lepton_core.data.stream)."""
    scan = scan_imagefolder(root)
    decoded = list(iter_imagefolder(scan))
    if not decoded:
        raise DataError(f"{scan.root}: no readable PNG/JPEG images")
    rgb = any(a.ndim == 3 for a, _, _ in decoded)
    return RawDataset(
        x=np.stack([to_planes(a, rgb) for a, _, _ in decoded]),
        y=np.asarray([label for _, label, _ in decoded], dtype=np.int64),
        classes=scan.classes,
        kind="image",
        quarantined=scan.quarantined,
    )


# ---------------------------------------------------------------- tables
def load_table(path: Path, label_column: str, labelled: bool = True, task: str = "classification") -> RawDataset:
    """A CSV/Parquet table; `labelled=False` also reads one without the label column
    (samples to score), with no classes and every label -1. With `task="regression"`
    the label column is a number to predict (y float64)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            _check_parquet_size(path)
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path.name}: unreadable table ({e.__class__.__name__})") from None
    if len(df.columns) != len(set(map(str, df.columns))):
        raise DataError(f"{path.name}: duplicate column names")
    if label_column not in df.columns:
        if labelled:
            raise DataError(f"{path.name}: no label column {label_column!r} (set data.label_column)")
        bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataError(f"{path.name}: non-numeric feature columns: {', '.join(map(str, bad[:5]))}")
        return RawDataset(
            x=df.to_numpy(dtype=np.float32),
            y=np.full(len(df), -1, np.float64 if task == "regression" else np.int64),
            classes=[],
            kind="tabular",
            feature_names=[str(c) for c in df.columns],
            task=task,
        )
    features = [c for c in df.columns if c != label_column]
    if not features:
        raise DataError(f"{path.name}: no feature columns besides {label_column!r}")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DataError(f"{path.name}: non-numeric feature columns: {', '.join(map(str, bad[:5]))}")
    names = [str(c) for c in features]
    what = f"{path.name}: label column {label_column!r}"
    y, classes, quarantined, keep = labels_of(df[label_column].to_numpy(), task, what)
    x = df.loc[keep, features].to_numpy(dtype=np.float32)
    return RawDataset(
        x=x, y=y[keep], classes=classes, kind="tabular", feature_names=names, quarantined=quarantined, task=task
    )


# A float label column under classification is a number to predict rather than
# classes when it holds more distinct values than this with fractions among them, or
# more than MAX_FLOAT_WHOLE_CLASSES whole ones (class labels come as ints or text)
MAX_FLOAT_CLASSES, MAX_FLOAT_WHOLE_CLASSES = 20, 100


def labels_of(values: np.ndarray, task: str, what: str) -> tuple[np.ndarray, list[str], list[Quarantined], np.ndarray]:
    """Raw label values -> (y, classes, quarantined rows, keep mask). Classification:
    class indices into the sorted distinct values (their text the class names); a float
    column with many distinct fractional values is refused as a regression target.
    Regression: the values as float64. Rows without a usable label are quarantined and
    left out of `keep`."""
    import pandas as pd

    values = np.asarray(values)
    quarantined: list[Quarantined] = []
    if task == "regression":
        if not (np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_):
            numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
            if np.isnan(numeric).all() and len(values):
                raise DataError(f"{what} is not numeric; data.task=regression needs a number to predict")
        else:
            numeric = values.astype(np.float64)
        finite = np.isfinite(numeric)
        for i in np.flatnonzero(~finite):
            _quarantine(quarantined, f"row {i}", "missing or non-numeric target")
        return numeric, [], quarantined, finite
    missing = np.asarray(pd.isna(values), dtype=bool)
    for i in np.flatnonzero(missing):
        _quarantine(quarantined, f"row {i}", "missing label")
    present = values[~missing]
    if np.issubdtype(present.dtype, np.floating):
        distinct = np.unique(present)
        fractional = distinct[distinct != np.round(distinct)]
        if len(distinct) > MAX_FLOAT_WHOLE_CLASSES or (len(distinct) > MAX_FLOAT_CLASSES and len(fractional)):
            example = (fractional if len(fractional) else distinct)[0]
            raise DataError(
                f"{what} holds {len(distinct)} distinct numbers such as {example:g}: "
                "a number to predict, not classes; set data.task=regression"
            )
    classes = sorted(pd.unique(present).tolist(), key=lambda v: (str(type(v)), v))
    index = {c: i for i, c in enumerate(classes)}
    y = np.full(len(values), -1, dtype=np.int64)
    y[~missing] = [index[v] for v in present.tolist()]
    return y, [str(c) for c in classes], quarantined, ~missing


# A parquet file may expand by at most this factor when read (gzip's own ceiling is
# about 1,032), beyond a floor that any ordinary table stays under.
TABLE_EXPANSION, TABLE_FLOOR_BYTES = 1100, 256 << 20


def _check_parquet_size(path: Path) -> None:
    """Refuse a parquet file whose metadata declares far more data than it holds (a
    few KB can declare a billion rows of one repeated value), before reading it."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    declared = meta.num_rows * max(meta.num_columns, 1) * 8  # as float64/int64 in memory
    budget = max(TABLE_FLOOR_BYTES, TABLE_EXPANSION * path.stat().st_size)
    if declared > budget:
        raise DataError(
            f"{path.name}: declares {meta.num_rows} rows x {meta.num_columns} columns "
            f"({declared} bytes in memory) in a {path.stat().st_size}-byte file"
        )


def load_raw(
    fmt: str, path: str | Path | None, label_column: str = "label", labelled: bool = True, task: str = "classification"
) -> RawDataset:
    """Load any supported format (but `custom`, which lepton_core.data.loader runs);
    the one entry point the prepare stage uses."""
    if task == "regression" and fmt != "csv":
        raise DataError(f"data.task=regression needs a table (csv) or a custom loader, not format {fmt!r}")
    if fmt == "digits":
        return load_digits()
    if path is None:
        raise DataError(f"format {fmt!r} needs a data path")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if fmt == "mnist":
        return load_mnist(p)
    if fmt == "cifar10":
        return load_cifar10(p)
    if fmt == "imagefolder":
        return load_imagefolder(p)
    if fmt == "csv":
        return load_table(p, label_column, labelled, task)
    raise DataError(f"unknown format {fmt!r} (digits, mnist, cifar10, imagefolder, csv)")


def combine_datasets(base: RawDataset, others: list[RawDataset], names: list[str]) -> RawDataset:
    """Append other datasets to `base`, matching classes by name.

    A sample of a class `base` does not know, or of another shape, is quarantined
    (named after its source), so the model's label space never changes silently.
    """
    xs, ys, quarantined = [base.x], [base.y], list(base.quarantined)
    tests = [base.test_rows] if base.test_rows is not None else None  # added rows never test
    index = {c: i for i, c in enumerate(base.classes)}
    for ds, name in zip(others, names):
        quarantined += [{"item": f"{name}:{q['item']}", "reason": q["reason"]} for q in ds.quarantined]
        if ds.kind == base.kind == "tabular" and list(ds.feature_names) != list(base.feature_names):
            # tables join by column name, never by position
            missing = [f for f in base.feature_names if f not in ds.feature_names]
            if missing:
                quarantined.append({"item": name, "reason": f"lacks feature columns {', '.join(missing[:5])}"})
                continue
            order = [list(ds.feature_names).index(f) for f in base.feature_names]
            ds = RawDataset(
                x=ds.x[:, order],
                y=ds.y,
                classes=ds.classes,
                kind=ds.kind,
                feature_names=list(base.feature_names),
                quarantined=[],
            )
        if ds.kind != base.kind or ds.x.shape[1:] != base.x.shape[1:]:
            quarantined.append({"item": name, "reason": f"shape {ds.x.shape[1:]} != {base.x.shape[1:]}"})
            continue
        if base.task == "regression":  # targets join as they are; no class set to match
            mapped, keep = np.asarray(ds.y, dtype=np.float64), np.ones(len(ds.y), dtype=bool)
        else:
            mapped = np.array([index.get(ds.classes[int(c)], -1) for c in ds.y], dtype=np.int64)
            for i in np.flatnonzero(mapped < 0):
                quarantined.append({"item": f"{name}[{i}]", "reason": f"unknown class {ds.classes[int(ds.y[i])]!r}"})
            keep = mapped >= 0
        xs.append(ds.x[keep].astype(base.x.dtype))
        ys.append(mapped[keep])
        if tests is not None:
            tests.append(np.zeros(int(keep.sum()), dtype=bool))
    return RawDataset(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        classes=list(base.classes),
        kind=base.kind,
        feature_names=list(base.feature_names),
        quarantined=quarantined,
        test_rows=np.concatenate(tests) if tests is not None else None,
        task=base.task,
    )
