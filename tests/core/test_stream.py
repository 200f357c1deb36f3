"""The streamed prepare of image folders: the bytes of the in-memory path, with memory
bounded by the chunk size rather than by the folder."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lepton_core.data.formats import load_imagefolder
from lepton_core.data.prepare import combine_datasets, prepare_dataset, prepare_from_params, write_prepared
from lepton_core.data.stream import prepare_imagefolder
from lepton_core.errors import DataError
from lepton_core.params import DataParams

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path, *, rgb_every: int = 0, n: int = 40, seed: int = 0, hw=(12, 10)) -> Path:
    """Grey images (every `rgb_every`-th RGB), plus a duplicate, a cross-class conflict,
    a non-image, a wrong-sized and a truncated image per class."""
    rng = np.random.default_rng(seed)
    for c in "abc":
        (root / c).mkdir(parents=True)
        for i in range(n):
            if rgb_every and i % rgb_every == 0:
                Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8), "RGB").save(root / c / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 256, hw, dtype=np.uint8), "L").save(root / c / f"{i}.png")
        Image.open(root / c / "1.png").save(root / c / "dup.png")
        (root / c / "junk.png").write_bytes(b"not a png")
        Image.fromarray(rng.integers(0, 256, (5, 5), dtype=np.uint8)).save(root / c / "small.png")
        raw = (root / c / "3.png").read_bytes()
        (root / c / "trunc.png").write_bytes(raw[: len(raw) // 2])
    Image.open(root / "a" / "2.png").save(root / "b" / "conflict.png")
    return root


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("rgb_every", [0, 7])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_streamed_prepare_writes_the_bytes_of_the_in_memory_path(tmp_path, rgb_every, chunk):
    raw = make_folder(tmp_path / "raw", rgb_every=rgb_every)
    batch = make_folder(tmp_path / "batch", rgb_every=3, n=4, seed=1)
    ds = load_imagefolder(raw)
    extra = load_imagefolder(batch)
    joined = combine_datasets(ds, [extra], ["b1"])
    joined.quarantined.append({"item": "b0", "reason": "unreadable"})
    prep = prepare_dataset(joined, val_fraction=0.15, test_fraction=0.2, seed=3)
    prep.meta["label_column"] = "label"
    write_prepared(prep, tmp_path / "memory")

    report = prepare_imagefolder(
        raw,
        tmp_path / "streamed",
        val_fraction=0.15,
        test_fraction=0.2,
        seed=3,
        extra=[(extra, "b1")],
        extra_quarantined=[{"item": "b0", "reason": "unreadable"}],
        meta_extra={"label_column": "label"},
        chunk=chunk,
    )
    assert report == prep.report
    assert report["duplicates_dropped"] >= 3 and report["conflicting_label_duplicates_dropped"] >= 2
    assert digests(tmp_path / "streamed") == digests(tmp_path / "memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch", "memory", "raw", "streamed"]  # no scratch


def test_prepare_from_params_streams_image_folders_with_the_same_bytes(tmp_path, monkeypatch):
    raw = make_folder(tmp_path / "raw", rgb_every=5)
    params = DataParams(format="imagefolder", path=str(raw))
    prepare_from_params(params, tmp_path / "streamed")
    meta = json.loads((tmp_path / "streamed" / "meta.json").read_text())
    assert meta["test_split"] == "random" and meta["input_shape"] == [3, 12, 10]
    called = []
    monkeypatch.setattr("lepton_core.data.stream.prepare_imagefolder", lambda *a, **k: called.append(1))
    prepare_from_params(params, tmp_path / "x")
    assert called  # the prepare stage takes the streamed path for image folders
    prep = prepare_dataset(load_imagefolder(raw), val_fraction=0.15, test_fraction=0.2, seed=0)
    prep.meta.update(label_column="label", monitored_batches=[])
    write_prepared(prep, tmp_path / "memory")
    assert digests(tmp_path / "streamed") == digests(tmp_path / "memory")


def test_a_failed_streamed_prepare_leaves_the_old_version_and_no_scratch(tmp_path):
    raw = make_folder(tmp_path / "raw")
    out = tmp_path / "out"
    prepare_imagefolder(raw, out, val_fraction=0.15, test_fraction=0.2, seed=0)
    before = digests(out)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(one / "only" / "0.png")
    with pytest.raises(DataError, match="one class"):
        prepare_imagefolder(one, out, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert digests(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "out", "raw"]


_RSS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lepton_core.data.formats import load_imagefolder
    from lepton_core.data.prepare import prepare_dataset, write_prepared
    from lepton_core.data.stream import prepare_imagefolder

    mode, small, big, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])

    def run(src, dst):
        if mode == "stream":
            prepare_imagefolder(src, dst, val_fraction=0.15, test_fraction=0.2, seed=0, chunk=32)
        else:
            write_prepared(prepare_dataset(load_imagefolder(src), val_fraction=0.15, test_fraction=0.2,
                                           seed=0), dst)

    def status(key):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
        return int(line.split()[1]) * 1024

    run(small, out / "warm")  # imports and first-use allocations out of the way
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    base = status("VmRSS:")
    run(big, out / "big")
    print(status("VmHWM:") - base)
""")


def test_streamed_prepare_memory_is_bounded_by_the_chunk_not_the_folder(tmp_path):
    """Peak RSS growth (VmHWM after clear_refs, in a fresh process) while preparing 600 RGB 96x96
    images (16.6 MB of pixels): the in-memory path holds several copies of them; the
    streamed one holds a chunk (32 images, 0.9 MB) and the file list."""
    rng = np.random.default_rng(0)
    big = tmp_path / "big"
    for c in range(3):
        (big / str(c)).mkdir(parents=True)
        for i in range(200):
            Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(
                big / str(c) / f"{i}.png", compress_level=0
            )
    pixels = 600 * 3 * 96 * 96
    small = make_folder(tmp_path / "small", rgb_every=1, n=10, hw=(96, 96))
    growth = {}
    for mode in ("stream", "memory"):
        (tmp_path / mode).mkdir()
        r = subprocess.run(
            [sys.executable, "-c", _RSS, mode, str(small), str(big), str(tmp_path / mode)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        growth[mode] = int(r.stdout.split()[-1])
    assert digests(tmp_path / "stream" / "big") == digests(tmp_path / "memory" / "big")
    assert growth["memory"] > 2 * pixels, growth  # the measurement sees the in-memory copies
    assert growth["stream"] < pixels / 3, growth
