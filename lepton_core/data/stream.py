"""The prepare stage for image folders, streamed: memory bounded by the chunk size,
not by the dataset.

Two passes over the folder: the first lists the files and reads their headers only
(formats.scan_imagefolder); the second decodes `chunk` images at a time, hashes each
one as it comes and appends its pixels to a scratch file in the output folder. Dedup
and the split then need only the hashes and labels (prepare.plan_split), and each
split's `.npy` is written row by row from the scratch file at the row's place in the
split. The bytes written are those of the in-memory path (`np.save` of the same
arrays): the same data gives the same DVC version either way.

What stays in memory grows with the number of files (their names, labels and 16-byte
hashes), never with their pixels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import DTypeLike

from lepton_core.data.formats import (
    ImageFolderScan,
    Quarantined,
    RawDataset,
    combine_datasets,
    grey_mode,
    iter_imagefolder,
    scan_imagefolder,
    to_planes,
)
from lepton_core.data.plan import SPLITS, describe, dump_json, plan_split
from lepton_core.errors import DataError
from lepton_core.fileio import publish_dir

CHUNK = 1024  # images decoded and written at a time
_SCRATCH = ".decoded.u8"


def _npy_header(fh: BinaryIO, shape: tuple[int, ...], dtype: DTypeLike) -> int:
    """Write the header `np.save` writes for an array of this shape and dtype; return
    where the data starts."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fh, d)
    return fh.tell()


class _Sink:
    """Appends sample rows to the scratch file, hashing each (as prepare.content_hashes)."""

    def __init__(self, path: Path, chunk: int):
        self.fh = path.open("wb")
        self.chunk = chunk
        self.rows: list[np.ndarray] = []
        self.hashes: list[bytes] = []
        self.labels: list[int] = []

    def add(self, planes: np.ndarray, label: int) -> None:
        self.rows.append(planes)
        self.labels.append(label)
        if len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        block = np.ascontiguousarray(np.stack(self.rows))
        flat = block.reshape(len(block), -1)
        self.hashes += [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in flat]
        self.fh.write(block.tobytes())
        self.rows = []

    def close(self) -> None:
        self.flush()
        self.fh.close()


def _decode_base(scan: ImageFolderScan, scratch: Path, chunk: int) -> tuple[_Sink, bool]:
    """Decode the folder into the scratch file. Whether the set is RGB (grey images
    then join as three equal planes) is planned from the headers' modes and checked
    against the decoded images; should an image decode otherwise, the pass is redone
    with the decoded answer, as the in-memory loader would have it."""
    listed_q = list(scan.quarantined)
    rgb = any(not grey_mode(f[3]) for f in scan.found if f[2] == scan.size)
    for _ in range(2):
        scan.quarantined = list(listed_q)
        sink, saw_rgb = _Sink(scratch, chunk), False
        for a, label, _rel in iter_imagefolder(scan):
            saw_rgb |= a.ndim == 3
            sink.add(to_planes(a, rgb), label)
        sink.close()
        if saw_rgb == rgb or not sink.labels:
            return sink, rgb
        rgb = saw_rgb
    raise DataError(f"{scan.root}: images decode differently on each read")  # pragma: no cover


def prepare_imagefolder(
    root: Path,
    out_dir: str | Path,
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    extra: list[tuple[RawDataset, str]] | None = None,
    extra_quarantined: list[Quarantined] | None = None,
    meta_extra: dict[str, Any] | None = None,
    chunk: int = CHUNK,
) -> dict[str, Any]:
    """Validate, dedup, split and pack an image folder into `out_dir` chunk by chunk
    (published whole or not at all, like prepare.write_prepared). `extra`: labelled
    batches (dataset, name) appended as prepare.combine_datasets would, and
    `extra_quarantined` records after theirs. Returns the report."""
    chunk = max(1, int(chunk))
    out: dict[str, dict[str, Any]] = {}

    def build(tmp: Path) -> None:
        scan = scan_imagefolder(root)
        scratch = tmp / _SCRATCH
        sink, rgb = _decode_base(scan, scratch, chunk)
        if not sink.labels:
            raise DataError(f"{scan.root}: no readable PNG/JPEG images")
        h, w = scan.size
        shape = (3 if rgb else 1, h, w)
        quarantined = list(scan.quarantined)
        if extra:
            # the batches (small: accepted monitor batches) in memory, joined to an
            # empty base of the folder's shape: the rows and records combine_datasets keeps
            base = RawDataset(
                x=np.zeros((0, *shape), np.uint8), y=np.zeros(0, np.int64), classes=scan.classes, kind="image"
            )
            joined = combine_datasets(base, [d for d, _ in extra], [n for _, n in extra])
            quarantined += joined.quarantined
            with scratch.open("ab") as sink.fh:
                sink.chunk = chunk
                for xi, yi in zip(joined.x, joined.y.tolist()):
                    sink.add(xi, yi)
                sink.flush()
        quarantined += list(extra_quarantined or [])
        y = np.asarray(sink.labels, dtype=np.int64)
        n = len(y)
        plan = plan_split(
            y,
            np.ones(n, dtype=bool),
            sink.hashes,
            scan.classes,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
        del sink
        meta, report = describe(
            plan,
            kind="image",
            classes=scan.classes,
            feature_names=[],
            sample_shape=shape,
            dtype=np.uint8,
            raw_samples=n,
            quarantined=quarantined,
        )
        meta.update(meta_extra or {})
        _write_splits(scratch, tmp, plan.rows, shape, n, chunk)
        scratch.unlink()
        for s in SPLITS:
            np.save(tmp / f"y_{s}.npy", y[plan.rows[s]], allow_pickle=False)
        dump_json(meta, tmp / "meta.json")
        dump_json(report, tmp / "report.json")
        out["report"] = report

    publish_dir(out_dir, build)
    return out["report"]


def _write_splits(
    scratch: Path, tmp: Path, rows: dict[str, np.ndarray], shape: tuple[int, ...], n: int, chunk: int
) -> None:
    """Each split's x_<split>.npy from the scratch file: read in order, `chunk` rows at
    a time, every kept row written (pwrite) at its place in its split."""
    rb = int(np.prod(shape))
    where = np.full(n, -1, dtype=np.int64)  # split number of each raw row, -1: dropped
    pos = np.zeros(n, dtype=np.int64)
    fds, starts = [], []
    try:
        for i, s in enumerate(SPLITS):
            where[rows[s]] = i
            pos[rows[s]] = np.arange(len(rows[s]))
            path = tmp / f"x_{s}.npy"
            with path.open("wb") as fh:
                start = _npy_header(fh, (len(rows[s]), *shape), np.uint8)
                fh.truncate(start + rb * len(rows[s]))
            starts.append(start)
            fds.append(os.open(path, os.O_WRONLY))
        with scratch.open("rb") as src:
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                buf = src.read((hi - lo) * rb)
                if len(buf) != (hi - lo) * rb:
                    raise DataError("the prepare scratch file was cut short")
                view = memoryview(buf)
                for r in np.flatnonzero(where[lo:hi] >= 0).tolist():
                    i = int(where[lo + r])
                    os.pwrite(fds[i], view[r * rb : (r + 1) * rb], starts[i] + int(pos[lo + r]) * rb)
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
