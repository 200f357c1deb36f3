"""Data at scale: prepare + version + restore of 70,000 synthetic 28x28 images, one PNG
file each, in one run: wall time and peak memory of each step.

The images are written into class folders (10 classes, grey noise over a per-class
pattern, every file distinct). Then, each step in a fresh process (so each peak RSS
is its own):
    version   effects.data.dvc_store.version_dataset, as the prepare task runs it: the
              folder streamed into the packed arrays (lepton_core.data.stream), then
              `dvc add` of the prepared folder (one directory output: the packed
              arrays, not 70,000 files) and `dvc push` to a local remote
    restore   effects.data.dvc_store.restore_dataset from the remote (the data repo's own
              DVC cache emptied first, so everything comes from the remote)
    memory    (--compare-memory) the in-memory prepare for comparison: the whole
              folder decoded into one array (formats.load_imagefolder), prepared and
              written, no DVC
    raw-dvc   (--raw-dvc) what versioning the raw files would cost: `dvc add` of the
              image folder itself (70,000 files hashed and linked into the cache), no push
Peak RSS is the process's VmHWM (ru_maxrss); "import" is its RSS once the modules
are loaded, before the step. Nothing is asserted.

    .venv/bin/python benchmarks/data_scale.py [--n 70000] [--size 28] [--workdir DIR]
                                              [--compare-memory] [--raw-dvc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_images(root: Path, n: int, size: int, classes: int = 10) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    patterns = rng.integers(0, 200, (classes, size, size), dtype=np.uint8)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = i % classes
        img = patterns[c] + rng.integers(0, 56, (size, size), dtype=np.uint8)
        Image.fromarray(img, "L").save(root / str(c) / f"{i:06d}.png")


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def step(name: str, images: Path, work: Path, version: str | None) -> dict:
    """One step in this (fresh) process; returns its figures."""
    os.environ.update(
        {"LEPTON_HOME": str(work / "home"), "LEPTON_DVC_REMOTE": str(work / "remote"), "LEPTON_PROJECT_DIR": str(work)}
    )
    import dvc.repo  # noqa: F401 - loaded before the baseline, as in a running worker

    from effects.data import dvc_store
    from effects.runtime.settings import get_settings
    from lepton_core.data.formats import load_imagefolder
    from lepton_core.data.prepare import prepare_dataset, write_prepared
    from lepton_core.params import DataParams

    s = get_settings()
    params = DataParams(format="imagefolder", path=str(images), include_monitored=False)
    base = _rss_now()
    out: dict = {"step": name}
    t0 = time.perf_counter()
    if name == "version":
        timing = {}
        real = dvc_store.prepare_from_params

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                timing["prepare_s"] = time.perf_counter() - t

        dvc_store.prepare_from_params = timed
        v = dvc_store.version_dataset(params, s)
        out.update(version=v.version, kept=v.report["kept"], **timing)
        out["prepared_bytes"] = sum(p.stat().st_size for p in (s.datasets_dir / v.version).iterdir())
    elif name == "restore":
        shutil.rmtree(s.data_repo / ".dvc" / "cache", ignore_errors=True)
        dest = dvc_store.restore_dataset(version, work / "restored", s)
        out["files"] = sorted(p.name for p in dest.iterdir())
    elif name == "memory":
        prep = prepare_dataset(load_imagefolder(images), val_fraction=0.15, test_fraction=0.2, seed=0)
        write_prepared(prep, work / "memory-prepared")
    elif name == "raw-dvc":
        from dvc.repo import Repo

        Repo.init(str(work), no_scm=True, force=True)  # the work folder, which holds the images
        os.chdir(work)
        Repo(str(work)).add(images.name)
    out["seconds"] = time.perf_counter() - t0
    out["rss_import_mb"] = base / 2**20
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=70_000, help="images (default 70,000)")
    ap.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--compare-memory", action="store_true", help="also run the in-memory prepare")
    ap.add_argument("--raw-dvc", action="store_true", help="also `dvc add` the raw folder of files")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--version", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.step:  # a child: one step, its figures as JSON on the last line
        print(json.dumps(step(args.step, args.workdir / "images", args.workdir, args.version)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lepton-data-scale-")).resolve()
    try:
        t = time.perf_counter()
        make_images(work / "images", args.n, args.size)
        print(
            f"wrote {args.n:,} {args.size}x{args.size} PNGs in {time.perf_counter() - t:.1f} s "
            f"({sum(f.stat().st_size for f in (work / 'images').rglob('*.png')) / 2**20:.1f} MiB on disk)"
        )
        steps = (
            ["version", "restore"] + (["memory"] if args.compare_memory else []) + (["raw-dvc"] if args.raw_dvc else [])
        )
        version = None
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}"
        )
        for name in steps:
            cmd = [sys.executable, __file__, "--step", name, "--workdir", str(work)]
            if version:
                cmd += ["--version", version]
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if r.returncode != 0:
                print(f"{name}: failed\n{r.stderr[-3000:]}")
                return
            fig = json.loads(r.stdout.strip().splitlines()[-1])
            version = fig.get("version", version)
            extra = ""
            if name == "version":
                extra = (
                    f"  (prepare {fig['prepare_s']:.1f} s, DVC add+push {fig['seconds'] - fig['prepare_s']:.1f} s; "
                    f"{fig['kept']:,} images kept, {fig['prepared_bytes'] / 2**20:.1f} MiB packed; "
                    f"version {fig['version']})"
                )
            elif name == "restore":
                extra = f"  ({len(fig['files'])} files: {', '.join(fig['files'])})"
            print(
                f"{name:<8} {fig['seconds']:7.1f} s   peak RSS {fig['peak_rss_mb']:7.1f} MiB "
                f"(after imports {fig['rss_import_mb']:.1f} MiB){extra}"
            )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
