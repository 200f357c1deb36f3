"""Model variants side by side: PyTorch fp32, ONNX fp32 and ONNX int8, in one run.

Two models, each trained here with the params of `params.yaml` (train section):
  digits   the 8x8 scikit-learn digits, Lepton's demo champion
  28x28    the same digits upscaled to 28x28 (MNIST's shape; bilinear, uint8), so the
           CNN has MNIST's depth of blocks

For each variant: file size (the PyTorch state dict as torch.save writes it; the ONNX
file), accuracy on the test split, and the median CPU latency of one predictor call
on raw uint8 samples at batch 1 and batch 64 (checking the input included). The
variants are built exactly as `lepton optimize` builds them (effects.tracking.onnx_variants).
Nothing is asserted: the numbers are for the README.

    .venv/bin/python benchmarks/variants.py [--repeats 200] [--threads N] [--epochs N]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _upscale(raw, size: int):
    """(N, 1, 8, 8) uint8 -> (N, 1, size, size) uint8, bilinear."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img[0]).resize((size, size), Image.BILINEAR))[None] for img in raw])


def _datasets():
    from lepton_core.data.formats import RawDataset, load_digits

    digits = load_digits()
    yield "digits 8x8", digits
    yield "digits 28x28", RawDataset(x=_upscale(digits.x, 28), y=digits.y, classes=digits.classes, kind="image")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per latency figure (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: params.yaml's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from effects.tracking.onnx_variants import OnnxPredictor, accuracy, export_onnx, latency, quantize_int8
    from lepton_core.data.prepare import prepare_dataset
    from lepton_core.params import load_params
    from lepton_core.predictor import Predictor, Preprocessing
    from lepton_core.train import save_trained_model, train_on_prepared

    params = load_params(ROOT / "params.yaml", [f"train.epochs={args.epochs}"] if args.epochs else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="lepton-bench-variants-") as d:
        d = Path(d)
        for name, raw in _datasets():
            prepared = prepare_dataset(
                raw,
                val_fraction=params.data.val_fraction,
                test_fraction=params.data.test_fraction,
                seed=params.data.seed,
            )
            t0 = time.perf_counter()
            pre = Preprocessing.from_meta(prepared.meta)
            result = train_on_prepared(prepared, params.train, pre, progress=False)
            ckpt = save_trained_model(result, params.train, pre, prepared.meta, d / f"{name}.pt")
            print(f"{name}: trained in {time.perf_counter() - t0:.1f} s ({result.epochs_run} epochs)", flush=True)
            torch_pred = Predictor.from_checkpoint(ckpt)
            x, y = prepared.x["test"], prepared.y["test"]
            rng = np.random.default_rng(0)
            calib = prepared.x["train"][rng.choice(len(prepared.x["train"]), 256, replace=False)]
            fp32 = export_onnx(torch_pred, d / f"{name}.onnx", x[:4])
            int8 = quantize_int8(fp32, d / f"{name}.int8.onnx", calib)
            buf = io.BytesIO()
            torch.save(torch_pred.model.state_dict(), buf)
            variants = {
                "PyTorch fp32": (torch_pred, buf.getbuffer().nbytes),
                "ONNX fp32": (OnnxPredictor(fp32, threads=args.threads), fp32.stat().st_size),
                "ONNX int8": (OnnxPredictor(int8, threads=args.threads), int8.stat().st_size),
            }
            for vname, (pred, size) in variants.items():
                acc = accuracy(pred.logits(x), y)
                b1 = latency(pred.logits, x[:64], 1, repeats=args.repeats).ms
                b64 = latency(pred.logits, x[:64], 64, repeats=args.repeats).ms
                rows.append((name, vname, size, acc, b1, b64, len(y)))
                print(
                    f"  {vname:<13} {size / 1024:8.1f} KiB  accuracy {acc:.4f}  batch 1 {b1:7.3f} ms  "
                    f"batch 64 {b64:7.3f} ms",
                    flush=True,
                )

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; "
        f"median of {args.repeats} calls\n"
    )
    print("| model | variant | size KiB | test accuracy | batch 1 ms | batch 64 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, vname, size, acc, b1, b64, n in rows:
        print(f"| {name} | {vname} | {size / 1024:.1f} | {acc:.4f} (n={n}) | {b1:.3f} | {b64:.3f} |")


if __name__ == "__main__":
    main()
