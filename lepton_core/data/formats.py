"""Loaders for the raw formats Lepton reads. Each returns a `RawDataset`:

    x: (N, C, H, W) uint8 for images, (N, F) float32 for tables
    y: (N,) int64 class indices
    quarantined: samples that could not be read, with the reason

A loader never crashes on one bad sample: it quarantines it and goes on. A whole
source that is missing or unusable raises `DataError` (one line for the user).
"""

from __future__ import annotations

import zlib
import importlib.util
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lepton_core.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class RawDataset:
    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    kind: str  # "image" | "tabular"
    feature_names: list[str] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)  # {"item": str, "reason": str}


def _quarantine(ds_list: list[dict], item: str, reason: str) -> None:
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
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        # decompressobj keeps every byte it could inflate, so a truncated .gz
        # still yields its complete items (gzip.decompress would raise instead)
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            return d.decompress(raw) + d.flush()
        except zlib.error:
            return b""
    return raw


def read_idx(path: Path) -> tuple[np.ndarray, int]:
    """Read an IDX file. Returns (array of the complete items, number of items declared)."""
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path.name}: not an IDX file")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path.name}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    item = int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
    complete = min(dims[0], (len(data) - header) // item) if item else dims[0]
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
    xs, ys, quarantined = [], [], []
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
        if n_img != n_lbl:
            raise DataError(f"{split}: {n_img} images but {n_lbl} labels declared")
        n = min(len(images), len(labels))
        for i in range(n, n_img):
            _quarantine(quarantined, f"{img_path.name}[{i}]", "truncated file")
        xs.append(images[:n, None].astype(np.uint8))
        ys.append(labels[:n].astype(np.int64))
    if not found:
        raise DataError(f"{root}: no MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
    return RawDataset(
        x=np.concatenate(xs), y=np.concatenate(ys), classes=[str(i) for i in range(10)],
        kind="image", quarantined=quarantined,
    )


# ---------------------------------------------------------------- CIFAR-10
class _SafeUnpickler(pickle.Unpickler):
    # CIFAR batches are pickles; refuse anything but plain containers and numpy arrays
    # so a crafted file cannot run code.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any decode failure is the file's problem, not a crash
        raise DataError(f"{path.name}: unreadable CIFAR batch ({e.__class__.__name__})") from None
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
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    xs, ys, quarantined = [], [], []
    for path in files:
        try:
            batch = _load_cifar_batch(path)
        except DataError as e:
            _quarantine(quarantined, path.name, str(e))
            continue
        data = np.asarray(batch.get("data"))
        labels = np.asarray(batch.get("labels"), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            _quarantine(quarantined, path.name, f"unexpected batch shape {data.shape}")
            continue
        xs.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))  # rows are R, G, B planes
        ys.append(labels)
    if not xs:
        raise DataError(f"{root}: no readable CIFAR-10 batch")
    return RawDataset(
        x=np.concatenate(xs), y=np.concatenate(ys), classes=classes, kind="image",
        quarantined=quarantined,
    )


# ---------------------------------------------------------------- image folders
def load_imagefolder(root: Path) -> RawDataset:
    from PIL import Image  # decoding PNG/JPEG needs Pillow; imported only for this format

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: an image folder must be a directory of class folders")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders")
    decoded: list[tuple[np.ndarray, int, str]] = []
    quarantined: list[dict] = []
    for label, cdir in enumerate(class_dirs):
        for path in sorted(cdir.rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = str(path.relative_to(root))
            try:
                with Image.open(path) as img:
                    img.load()  # raises on truncated or corrupt data
                    mode = "L" if img.mode in ("1", "L", "I;16", "I", "F") else "RGB"
                    arr = np.asarray(img.convert(mode), dtype=np.uint8)
            except Exception as e:
                _quarantine(quarantined, rel, f"unreadable image ({e.__class__.__name__})")
                continue
            decoded.append((arr, label, rel))
    if not decoded:
        raise DataError(f"{root}: no readable PNG/JPEG images")
    # Grey images join an RGB set as three equal planes; the commonest size wins and
    # images of another size are quarantined (resizing would silently change the data).
    sizes: dict[tuple[int, int], int] = {}
    for a, _, _ in decoded:
        sizes[a.shape[:2]] = sizes.get(a.shape[:2], 0) + 1
    size = max(sizes, key=lambda s: (sizes[s], s))
    rgb = any(a.ndim == 3 for a, _, _ in decoded if a.shape[:2] == size)
    xs, ys = [], []
    for a, label, rel in decoded:
        if a.shape[:2] != size:
            _quarantine(quarantined, rel, f"size {a.shape[1]}x{a.shape[0]} != {size[1]}x{size[0]}")
            continue
        if rgb:
            a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a
            xs.append(a.transpose(2, 0, 1))  # (H, W, C) -> (C, H, W)
        else:
            xs.append(a[None])
        ys.append(label)
    return RawDataset(
        x=np.stack(xs), y=np.asarray(ys, dtype=np.int64),
        classes=[d.name for d in class_dirs], kind="image", quarantined=quarantined,
    )


# ---------------------------------------------------------------- tables
def load_table(path: Path, label_column: str, labelled: bool = True) -> RawDataset:
    """A CSV/Parquet table; `labelled=False` also reads one without the label column
    (samples to score), with no classes and every label -1."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except Exception as e:
        raise DataError(f"{path.name}: unreadable table ({e.__class__.__name__})") from None
    if label_column not in df.columns:
        if labelled:
            raise DataError(f"{path.name}: no label column {label_column!r} (set data.label_column)")
        bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
        if bad:
            raise DataError(f"{path.name}: non-numeric feature columns: {', '.join(map(str, bad[:5]))}")
        return RawDataset(x=df.to_numpy(dtype=np.float32), y=np.full(len(df), -1, np.int64), classes=[],
                          kind="tabular", feature_names=[str(c) for c in df.columns])
    features = [c for c in df.columns if c != label_column]
    if not features:
        raise DataError(f"{path.name}: no feature columns besides {label_column!r}")
    bad = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DataError(f"{path.name}: non-numeric feature columns: {', '.join(map(str, bad[:5]))}")
    labels = df[label_column]
    quarantined: list[dict] = []
    missing = labels.isna().to_numpy()
    for i in np.flatnonzero(missing):
        _quarantine(quarantined, f"row {i}", "missing label")
    df = df.loc[~missing]
    classes = sorted(df[label_column].unique().tolist(), key=lambda v: (str(type(v)), v))
    index = {c: i for i, c in enumerate(classes)}
    y = df[label_column].map(index).to_numpy(dtype=np.int64)
    x = df[features].to_numpy(dtype=np.float32)
    return RawDataset(
        x=x, y=y, classes=[str(c) for c in classes], kind="tabular",
        feature_names=[str(c) for c in features], quarantined=quarantined,
    )


def load_raw(fmt: str, path: str | Path | None, label_column: str = "label", labelled: bool = True) -> RawDataset:
    """Load any supported format; the one entry point the prepare stage uses."""
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
        return load_table(p, label_column, labelled)
    raise DataError(f"unknown format {fmt!r} (digits, mnist, cifar10, imagefolder, csv)")


def combine_datasets(base: RawDataset, others: list[RawDataset], names: list[str]) -> RawDataset:
    """Append other datasets to `base`, matching classes by name.

    A sample of a class `base` does not know, or of another shape, is quarantined
    (named after its source), so the model's label space never changes silently.
    """
    xs, ys, quarantined = [base.x], [base.y], list(base.quarantined)
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
            ds = RawDataset(x=ds.x[:, order], y=ds.y, classes=ds.classes, kind=ds.kind,
                            feature_names=list(base.feature_names), quarantined=[])
        if ds.kind != base.kind or ds.x.shape[1:] != base.x.shape[1:]:
            quarantined.append({"item": name, "reason": f"shape {ds.x.shape[1:]} != {base.x.shape[1:]}"})
            continue
        mapped = np.array([index.get(ds.classes[int(c)], -1) for c in ds.y], dtype=np.int64)
        for i in np.flatnonzero(mapped < 0):
            quarantined.append({"item": f"{name}[{i}]", "reason": f"unknown class {ds.classes[int(ds.y[i])]!r}"})
        keep = mapped >= 0
        xs.append(ds.x[keep].astype(base.x.dtype))
        ys.append(mapped[keep])
    return RawDataset(
        x=np.concatenate(xs), y=np.concatenate(ys), classes=list(base.classes), kind=base.kind,
        feature_names=list(base.feature_names), quarantined=quarantined,
    )
