"""Data-parallel training: 1 process vs N processes (torchrun, DDP) on the same data
and params, in one run: training images per second and the accuracy each reaches.

The data is synthetic CIFAR-shaped images (benchmarks/trainer.py's generator), the
model SmallCNN; both runs go through `effects.training.stages.train_stage`, exactly as the
train task runs them (N processes: torchrun --standalone, gloo on the CPU, NCCL on
GPUs). Wall time includes torchrun's start-up and the ranks' imports, which one
process does not pay. Nothing is asserted.

    .venv/bin/python benchmarks/ddp.py [--n 8192] [--epochs 4] [--processes 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192, help="training images (default 8,192)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--processes", type=int, default=2, help="processes of the data-parallel run (default 2)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()

    import torch

    from benchmarks.trainer import synthetic_images
    from effects.training.stages import train_stage
    from lepton_core.data.formats import RawDataset
    from lepton_core.data.prepare import prepare_dataset
    from lepton_core.params import TrainParams
    from lepton_core.predictor import Predictor

    n_total = int(args.n / 0.65)  # train is 65% of the split (val 15%, test 20%)
    x, y = synthetic_images(n_total, seed=0)
    prepared = prepare_dataset(
        RawDataset(x=x, y=y, classes=[str(i) for i in range(10)], kind="image"),
        val_fraction=0.15,
        test_fraction=0.2,
        seed=0,
    )
    n_train = len(prepared.y["train"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-ddp-") as d:
        for procs in (1, args.processes):
            params = TrainParams(
                devices=procs,
                epochs=args.epochs,
                width=args.width,
                batch_size=args.batch_size,
                patience=0,
                device=args.device,
            )
            t0 = time.perf_counter()
            r = train_stage(prepared, params, Path(d) / f"m{procs}.pt", Path(d) / f"w{procs}.pt", progress=False)
            wall = time.perf_counter() - t0
            acc = float(
                (
                    Predictor.from_checkpoint(Path(d) / f"m{procs}.pt").predict(prepared.x["test"]).labels
                    == prepared.y["test"]
                ).mean()
            )
            rows.append((procs, r.world_size, wall, n_train * r.epochs_run / wall, r.best_val_accuracy, acc))
            print(
                f"{procs} process(es): {wall:6.1f} s wall, {n_train * r.epochs_run / wall:8.0f} images/s, "
                f"val {r.best_val_accuracy:.4f}, test {acc:.4f}",
                flush=True,
            )
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"device {args.device}; {n_train:,} training images 3x32x32, {args.epochs} epochs, batch {args.batch_size} "
        f"(global), SmallCNN width {args.width}\n"
    )
    print("| processes | wall s | images/s (wall) | best val accuracy | test accuracy |")
    print("|---:|---:|---:|---:|---:|")
    for _procs, world, wall, ips, val, acc in rows:
        print(f"| {world} | {wall:.1f} | {ips:,.0f} | {val:.4f} | {acc:.4f} |")
    print(f"\nspeed-up of {rows[1][1]} processes: {rows[0][2] / rows[1][2]:.2f}x (wall)")


if __name__ == "__main__":
    main()
