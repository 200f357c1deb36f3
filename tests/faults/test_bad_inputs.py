"""A corpus of bad inputs: crafted and broken data files, malicious pickles, bad
params, names and paths. Each must end in the specific one-line error (or, for one
bad sample among good ones, a quarantine record that names it), quickly, with
memory bounded by the files themselves, and the CLI cases with a non-zero exit,
one `error:` line and no traceback."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lepton_core.data import formats
from lepton_core.data.formats import load_cifar10, load_imagefolder, load_mnist, load_raw, load_table
from lepton_core.errors import DataError, LeptonError, ParamsError
from lepton_core.params import check_device, load_params
from tests.conftest import lepton_env_vars, make_project, run_cli

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]


def one_line(exc: BaseException, needle: str) -> str:
    text = str(exc)
    assert "\n" not in text and needle in text, text
    return text


# ---------------------------------------------------------------- IDX (MNIST)
def idx(dtype_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">BBBB", 0, 0, dtype_code, len(dims)) + struct.pack(">" + "I" * len(dims), *dims) + payload


def mnist_dir(root: Path, images: bytes, labels: bytes, gz: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    (root / f"train-images-idx3-ubyte{suffix}").write_bytes(gzip.compress(images) if gz else images)
    (root / f"train-labels-idx1-ubyte{suffix}").write_bytes(gzip.compress(labels) if gz else labels)
    return root


GOOD_IMAGES = idx(0x08, (10, 28, 28), bytes(10 * 784))
GOOD_LABELS = idx(0x08, (10,), bytes(range(10)))

IDX_CASES = {
    # name: (images file, labels file, gzip, what the error says)
    "header-declares-2^31-items": (
        idx(0x08, (2**31, 28, 28), bytes(10 * 784)),
        GOOD_LABELS,
        False,
        "declares 2147483648 items",
    ),
    "header-declares-2^31-items-gz": (
        idx(0x08, (2**31, 28, 28), bytes(10 * 784)),
        GOOD_LABELS,
        True,
        "declares 2147483648 items",
    ),
    "labels-declare-2^31": (GOOD_IMAGES, idx(0x08, (2**31,), bytes(10)), False, "declares 2147483648 items"),
    "empty-file": (b"", GOOD_LABELS, False, "not an IDX file"),
    "text-file": (b"hello, this is not an IDX file\n" * 4, GOOD_LABELS, False, "not an IDX file"),
    "truncated-header": (idx(0x08, (10, 28, 28), b"")[:9], GOOD_LABELS, False, "truncated IDX header"),
    "no-dimensions": (struct.pack(">BBBB", 0, 0, 8, 0), GOOD_LABELS, False, "declares no dimensions"),
    "zero-width-images": (idx(0x08, (10, 28, 0), b""), GOOD_LABELS, False, "empty items"),
    "labels-file-holds-images": (GOOD_IMAGES, GOOD_IMAGES, False, "expected (N,) labels"),
    "int32-pixels": (idx(0x0C, (10, 28, 28), bytes(10 * 784 * 4)), GOOD_LABELS, False, "unsigned bytes"),
    "flat-images": (idx(0x08, (10, 784), bytes(10 * 784)), GOOD_LABELS, False, "expected (N, H, W) images"),
    "5-images-4-labels": (
        idx(0x08, (5, 28, 28), bytes(5 * 784)),
        idx(0x08, (4,), bytes(4)),
        False,
        "5 images but 4 labels",
    ),
    "corrupt-gzip": (b"\x1f\x8b\x08\x00" + os.urandom(64), GOOD_LABELS, False, "not an IDX file"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_idx_files(tmp_path, case):
    images, labels, gz, needle = IDX_CASES[case]
    root = mnist_dir(tmp_path / "m", images, labels, gz)
    t = time.monotonic()
    with pytest.raises(DataError) as e:
        load_mnist(root)
    one_line(e.value, needle)
    assert time.monotonic() - t < 2


def test_mnist_paths(tmp_path):
    (tmp_path / "file").write_bytes(GOOD_IMAGES)
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "file")
    one_line(e.value, "expects a folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "empty")
    one_line(e.value, "no MNIST IDX files")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-images-idx3-ubyte").write_bytes(GOOD_IMAGES)
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path / "half")
    one_line(e.value, "must both be present")


_BOUNDED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (__LIMIT__, __LIMIT__))
    from pathlib import Path
    from lepton_core.data.formats import load_cifar10, load_mnist
    from lepton_core.errors import DataError
    kind, path = sys.argv[1], Path(sys.argv[2])
    try:
        (load_mnist if kind == "mnist" else load_cifar10)(path)
    except DataError as e:
        print("DataError:", e)
        sys.exit(0)
    sys.exit(5)
""")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_a_crafted_idx_header_loads_in_bounded_memory(tmp_path, gz):
    """The issue's file: a 10-item MNIST file whose header declares 2**31 items. Under
    a 1 GiB address-space limit the loader answers with its one-line DataError (the
    old loader made a quarantine record per declared item: 19.7 GB resident)."""
    root = mnist_dir(tmp_path / "m", idx(0x08, (2**31, 28, 28), bytes(10 * 784)), idx(0x08, (2**31,), bytes(10)), gz)
    code = _BOUNDED.replace("__LIMIT__", str(1 << 30))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", code, "mnist", str(root)], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert "declares 2147483648 items" in r.stdout


# ---------------------------------------------------------------- CIFAR pickles
class _Evil:
    """Unpickling this runs a shell command (it must never be unpickled as such)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Big:
    """An empty array of 2**40 bytes, built through numpy's own pickle entry point."""

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (2**40,), b"b"))


def cifar_batch(n: int = 4, **over) -> dict:
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(range(n))}
    batch.update({k.encode(): v for k, v in over.items()})
    return batch


def write_cifar(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        (root / name).write_bytes(raw)
    return root


def test_a_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=2)
    good = pickle.dumps(cifar_batch(), protocol=2)
    root = write_cifar(tmp_path / "c", {"data_batch_1": good, "data_batch_2": evil})
    ds = load_cifar10(root)  # the bad batch is set aside, the good one read
    assert len(ds.x) == 4 and not marker.exists()
    (q,) = ds.quarantined
    assert q["item"] == "data_batch_2" and "refusing to load" in q["reason"] and "system" in q["reason"]
    only = write_cifar(tmp_path / "c2", {"data_batch_1": evil})
    with pytest.raises(DataError) as e:
        load_cifar10(only)
    one_line(e.value, "no readable CIFAR-10 batch")
    assert not marker.exists()


def test_a_malicious_batches_meta_is_refused(tmp_path):
    class Exec:
        def __reduce__(self):
            return (exec, ("open('/dev/null')",))

    root = write_cifar(
        tmp_path / "c",
        {
            "data_batch_1": pickle.dumps(cifar_batch(), protocol=2),
            "batches.meta": pickle.dumps({b"label_names": Exec()}, protocol=2),
        },
    )
    with pytest.raises(DataError) as e:
        load_cifar10(root)
    assert "exec" in one_line(e.value, "batches.meta: unreadable CIFAR batch (UnpicklingError: refusing to load")


CIFAR_BAD_BATCHES = {
    # name: (pickle bytes, what the quarantine record says)
    "array-larger-than-its-file": (pickle.dumps({b"data": _Big(), b"labels": [0]}, protocol=2), "bytes in a"),
    "declared-length-2^40": (b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc", "unreadable CIFAR batch"),
    "truncated": (pickle.dumps(cifar_batch(), protocol=2)[:200], "unreadable CIFAR batch"),
    "not-a-dict": (pickle.dumps([1, 2, 3], protocol=2), "not a CIFAR batch"),
    "wrong-row-length": (
        pickle.dumps(cifar_batch(data=np.zeros((4, 100), np.uint8)), protocol=2),
        "unexpected batch shape",
    ),
    "labels-missing": (pickle.dumps(cifar_batch(labels=None), protocol=2), "unreadable data or labels"),
    "float-pixels": (pickle.dumps(cifar_batch(data=np.full((4, 3072), 0.5)), protocol=2), "not bytes 0..255"),
    "pixels-over-255": (
        pickle.dumps(cifar_batch(data=np.full((4, 3072), 300, np.int64)), protocol=2),
        "not bytes 0..255",
    ),
}


@pytest.mark.parametrize("case", list(CIFAR_BAD_BATCHES))
def test_cifar_batches(tmp_path, case):
    raw, needle = CIFAR_BAD_BATCHES[case]
    root = write_cifar(tmp_path / "c", {"data_batch_1": pickle.dumps(cifar_batch(), protocol=2), "data_batch_2": raw})
    t = time.monotonic()
    ds = load_cifar10(root)
    assert time.monotonic() - t < 2
    assert len(ds.x) == 4
    (q,) = ds.quarantined
    assert q["item"] == "data_batch_2" and needle in q["reason"] and "\n" not in q["reason"], q


def test_cifar_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "empty")
    one_line(e.value, "no CIFAR-10 batches")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "file")
    one_line(e.value, "expects the folder")


# ---------------------------------------------------------------- image folders
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height and whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def test_image_folders(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(3):
            save(root / c / f"{i}.png", np.full((8, 8), 10 * i, np.uint8))
    save(root / "a" / "big.png", np.zeros((16, 16), np.uint8))  # another size
    (root / "b" / "text.png").write_text("not an image\n")  # not an image
    save(root / "b" / "gif.png", np.zeros((8, 8), np.uint8), fmt="GIF")  # not PNG/JPEG inside
    (root / "a" / "bomb.png").write_bytes(png_header_only(60_000, 60_000))  # 3.6 G pixels declared
    (root / "b" / "large.png").write_bytes(png_header_only(5_000, 5_000))  # 25 M: under Pillow's own limit
    (root / "a" / "notes.txt").write_text("ignored\n")
    t = time.monotonic()
    ds = load_imagefolder(root)
    assert time.monotonic() - t < 5
    assert ds.x.shape == (6, 1, 8, 8)
    reasons = {q["item"]: q["reason"] for q in ds.quarantined}
    assert reasons[os.path.join("a", "big.png")] == "size 16x16 != 8x8"
    assert reasons[os.path.join("b", "text.png")].startswith("unreadable image")
    assert reasons[os.path.join("b", "gif.png")].startswith("unreadable image")
    assert reasons[os.path.join("a", "bomb.png")] == f"image size outside 1..{formats.MAX_IMAGE_PIXELS} pixels"
    assert reasons[os.path.join("b", "large.png")].startswith("image size 5000x5000 outside")
    assert len(reasons) == 5


def test_image_folder_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_imagefolder(tmp_path / "empty")
    one_line(e.value, "no class sub-folders")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "x.png").write_text("no")
    with pytest.raises(DataError) as e:
        load_imagefolder(tmp_path / "noimg")
    one_line(e.value, "no readable PNG/JPEG images")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        load_imagefolder(tmp_path / "file.png")
    one_line(e.value, "must be a directory")


# ---------------------------------------------------------------- tables
TABLE_CASES = {
    "no-label-column": ("a,b\n1,2\n3,4\n", "no label column 'label'"),
    "only-the-label": ("label\n1\n2\n", "no feature columns"),
    "text-features": ("a,label\nx,1\ny,2\n", "non-numeric feature columns: a"),
    "binary-garbage": (os.urandom(256), "unreadable table"),
    "empty-file": ("", "unreadable table"),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_tables(tmp_path, case):
    content, needle = TABLE_CASES[case]
    p = tmp_path / "t.csv"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as e:
        load_table(p, "label")
    one_line(e.value, needle)


def test_nan_rows_are_quarantined_not_trained_on(tmp_path):
    from lepton_core.data.prepare import prepare_dataset

    rows = [f"{i},{i * 2},{i % 3}" for i in range(90)] + ["nan,1,0", "inf,2,1", "3,4,"]
    p = tmp_path / "t.csv"
    p.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    prep = prepare_dataset(load_table(p, "label"), val_fraction=0.2, test_fraction=0.2, seed=0)
    assert prep.report["quarantined"] == 3, prep.report
    assert all(np.isfinite(prep.x[s]).all() for s in prep.x)


def test_a_parquet_file_that_declares_far_more_than_it_holds(tmp_path, monkeypatch):
    """Metadata is read before the table: 200,000 rows of one repeated value fit in a
    few KB and would expand far beyond the file (budget shrunk here to stay quick)."""
    p = tmp_path / "t.parquet"
    pd.DataFrame({"a": np.zeros(200_000), "label": np.zeros(200_000, np.int64)}).to_parquet(p)
    monkeypatch.setattr(formats, "TABLE_FLOOR_BYTES", 1 << 20)
    monkeypatch.setattr(formats, "TABLE_EXPANSION", 50)
    with pytest.raises(DataError) as e:
        load_table(p, "label")
    one_line(e.value, "declares 200000 rows x 2 columns")


@pytest.mark.parametrize(
    "fmt,make",
    [
        ("csv", lambda p: p),
        ("mnist", lambda p: p),
        ("cifar10", lambda p: p),
        ("imagefolder", lambda p: p),
    ],
    ids=["csv", "mnist", "cifar10", "imagefolder"],
)
def test_a_missing_path_in_every_format(tmp_path, fmt, make):
    with pytest.raises(DataError) as e:
        load_raw(fmt, make(tmp_path / "nowhere"))
    one_line(e.value, "no such file or folder")


# ---------------------------------------------------------------- params
PARAM_CASES = {
    "lr-inf": (["train.lr=inf"], "train.lr: Input should be a finite number"),
    "lr-nan": (["train.lr=nan"], "train.lr: Input should be a finite number"),
    "lr-1e308": (["train.lr=1e308"], "train.lr: Input should be less than or equal to 10"),
    "lr-negative": (["train.lr=-0.1"], "train.lr"),
    "epochs-text": (["train.epochs=abc"], "train.epochs"),
    "epochs-fraction": (["train.epochs=1.5"], "train.epochs"),
    "batch-size-huge": (["train.batch_size=1e12"], "train.batch_size"),
    "seed-2^70": ([f"train.seed={2**70}"], "train.seed"),
    "cooldown-1e308": (["monitor.cooldown_minutes=1e308"], "monitor.cooldown_minutes"),
    "val-fraction-0.9": (["data.val_fraction=0.9"], "data.val_fraction"),
    "unknown-key": (["train.nosuch=1"], "train.nosuch"),
    "unknown-section": (["nosuch.key=1"], "unknown section 'nosuch'"),
    "no-equals": (["train.lr"], "expected section.key=value"),
    "model-name-slash": (["registry.model_name=a/b"], "cannot contain '/' or ':'"),
    "model-name-colon": (["registry.model_name=models:x"], "cannot contain '/' or ':'"),
    "model-name-dotdot": (["registry.model_name=.."], "relative path"),
    "model-name-blank": (["registry.model_name= "], "registry.model_name"),
    "model-name-too-long": ([f"registry.model_name={'m' * 300}"], "registry.model_name"),
    "format-unknown": (["data.format=tiff"], "data.format"),
    "device-tpu": (["train.device=tpu"], "train.device"),
}


@pytest.mark.parametrize("case", list(PARAM_CASES))
def test_params(case):
    overrides, needle = PARAM_CASES[case]
    with pytest.raises(ParamsError) as e:
        load_params(None, overrides)
    one_line(e.value, needle)


YAML_CASES = {
    "unclosed-list": ("train:\n  lr: 0.1\n  epochs: [1\nfoo: 2\n", "at line 4, column 4"),
    "bad-indent": ("train:\n  lr: 0.1\n epochs: 3\n", "at line 3, column 2"),
    "tab": ("train:\n\tlr: 1\n", "at line 2, column 1"),
    "section-not-a-mapping": ("train: 5\n", "section 'train' must be a mapping"),
    "top-level-list": ("- train\n- data\n", "params must be a mapping"),
    "unknown-key-in-file": ("train:\n  learning_rate: 0.1\n", "train.learning_rate"),
    "not-utf8": (b"train:\n  lr: \xff\xfe\n", "unreadable params file"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_params_files(tmp_path, case):
    text, needle = YAML_CASES[case]
    p = tmp_path / "params.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ParamsError) as e:
        load_params(p)
    one_line(e.value, needle)


def test_cuda_asked_for_where_there_is_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParamsError) as e:
        check_device(load_params(None, ["train.device=cuda"]).train)
    one_line(e.value, "train.device=cuda but torch sees no CUDA device")


# ---------------------------------------------------------------- names
def test_batch_and_data_version_names(tmp_path):
    from effects.data.dvc_store import check_version
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    os.environ  # (settings come from the monkeypatched env below)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in lepton_env_vars(tmp_path).items():
            mp.setenv(k, v)
        s = get_settings()
        state = s.home / "monitor"
        state.mkdir(parents=True)
        (state / "accepted.json").write_text(
            json.dumps(
                [
                    {"id": "strong-aaaaaaaaaaaa", "format": "imagefolder", "path": "/x"},
                    {"id": "strong-bbbbbbbbbbbb", "format": "imagefolder", "path": "/y"},
                ]
            )
        )
        for name, needle in [
            ("nosuch", "is not an accepted batch"),
            ("strong", "matches several"),
            ("../../etc/passwd", "is not an accepted batch"),
            ("", "is not an accepted batch"),
        ]:
            with pytest.raises(LeptonError) as e:
                monitor_state.reject_batch(s, name)
            one_line(e.value, needle)
        assert len(monitor_state.accepted_batches(s)) == 2  # nothing was taken off
    for bad in ("../../etc", "not-a-version", "0" * 31, "g" * 32):
        with pytest.raises(DataError) as e:
            check_version(bad)
        one_line(e.value, "is not a data version")


def test_an_unknown_data_version_leaves_nothing_behind(tmp_path):
    """A well-formed data version the remote does not hold: one line, and no scratch
    folder left in the data repository (one was left per failed restore)."""
    from effects.data.dvc_store import restore_dataset
    from effects.runtime.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:
        for k, v in lepton_env_vars(tmp_path).items():
            mp.setenv(k, v)
        s = get_settings()
        (tmp_path / "dvc-remote").mkdir()
        with pytest.raises(DataError) as e:
            restore_dataset("0123456789abcdef0123456789abcdef", tmp_path / "out", s)
        one_line(e.value, "could not be restored from the remote")
        leftovers = list((s.data_repo / "restore").iterdir()) if (s.data_repo / "restore").exists() else []
        assert leftovers == [] and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    base = tmp_path_factory.mktemp("badcli")
    make_project(base / "project")
    (base / "bad.yaml").write_text("train:\n  lr: 0.1\n  epochs: [1\n")
    (base / "a-file").write_text("x\n")
    return base, {**lepton_env_vars(base), "CUDA_VISIBLE_DEVICES": ""}


CLI_CASES = {
    "lr-inf": (["retrain", "--set", "train.lr=inf"], "train.lr: Input should be a finite number"),
    "model-name": (["retrain", "--set", "registry.model_name=a/b"], "cannot contain '/' or ':'"),
    "yaml-line": (["retrain", "--params", "{base}/bad.yaml"], "not valid YAML at line 4"),
    "params-is-a-folder": (["retrain", "--params", "{base}"], "unreadable params file"),
    "cuda": (["retrain", "--set", "train.device=cuda"], "train.device=cuda but torch sees no CUDA device"),
    "data-missing": (["retrain", "--format", "mnist", "--data", "{base}/nowhere"], "no such file or folder"),
    "version-not-a-number": (["promote", "../1"], "is not a model version number"),
    "restore-traversal": (["data", "restore", "../../etc", "--to", "{base}/r"], "is not a data version"),
    "drift-out-is-a-file": (
        ["simulate-drift", "--kind", "rotate", "--out", "{base}/a-file"],
        "exists and is not an empty folder",
    ),
    "monitor-missing-batch": (["monitor", "{base}/nowhere"], "no such file or folder"),
    "reject-unknown-batch": (["monitor", "reject", "nosuch"], "is not an accepted batch"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_the_command_line(cli_env, case):
    base, env = cli_env
    args, needle = CLI_CASES[case]
    t = time.monotonic()
    r = run_cli([a.format(base=base) for a in args], env, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], r.stderr[-2000:]
    assert time.monotonic() - t < 60
    # refused before any work: no Prefect server, no MLflow database
    assert not (base / "home" / "mlflow.db").exists()
