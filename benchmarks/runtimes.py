"""What runs a served forward pass, side by side: the eager PyTorch model, TorchScript
(`Predictor.compile_for_serving`) and ONNX Runtime (`onnx_runner`, what `lepton serve`
uses for Lepton's own networks), in one run.

The network is the digits CNN as `params.yaml` builds it (8x8 grey images, ten
classes; the weights need no training for a timing). Each runtime is set up exactly as
the server sets it up, with one thread (`serve.threads`' default), and timed on
`Predictor.forward` (the server's call) at the batch sizes of a server under load;
the figure is the best of `--rounds` medians, in microseconds per pass and per
instance. The runtimes take turns within each round. Also prints how long the export
into ONNX Runtime took (what a server pays when a version loads, beside the warm-up).
Nothing is asserted: the numbers are for the docs.

    .venv/bin/python benchmarks/runtimes.py [--rounds 5] [--calls 200] [--batches 1 4 16 32]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _predictors() -> dict:
    """The digits CNN three times, run eagerly, by TorchScript and by ONNX Runtime."""
    from effects.tracking.onnx_variants import onnx_runner
    from lepton_core.models import ModelConfig, build_model
    from lepton_core.params import load_params
    from lepton_core.predictor import Predictor, Preprocessing

    train = load_params(ROOT / "params.yaml").train
    cfg = ModelConfig(kind="cnn", input_shape=(1, 8, 8), n_classes=10, width=train.width, depth=train.depth)
    pre = Preprocessing(
        kind="image", input_shape=(1, 8, 8), dtype="uint8", scale=1 / 255, classes=tuple(str(i) for i in range(10))
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    out = {"eager": Predictor(model, cfg, pre)}
    out["TorchScript"] = Predictor(model, cfg, pre)
    if not out["TorchScript"].compile_for_serving():
        raise SystemExit("TorchScript did not compile the network")
    out["ONNX Runtime"] = Predictor(model, cfg, pre)
    t0 = time.perf_counter()
    run = onnx_runner(out["ONNX Runtime"], 1)
    print(f"exported and loaded into ONNX Runtime in {time.perf_counter() - t0:.2f} s", flush=True)
    if run is None or not out["ONNX Runtime"].serve_through(run):
        raise SystemExit("ONNX Runtime did not take the network")
    return out


def _median_us(predictor, t: torch.Tensor, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        predictor.forward(t)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds; each figure is the best round's median")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per runtime, batch size and round")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32], help="instances per pass")
    args = ap.parse_args()
    if args.rounds < 1 or args.calls < 1 or min(args.batches) < 1:
        raise SystemExit("--rounds, --calls and --batches must be at least 1")
    torch.set_num_threads(1)
    predictors = _predictors()
    rng = np.random.default_rng(0)
    best: dict[tuple[str, int], float] = {}
    with torch.no_grad():
        for r in range(args.rounds):
            print(f"round {r + 1} of {args.rounds}", flush=True)
            for n in args.batches:
                x = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
                for name, p in predictors.items():
                    t = p.checked_input(p.check(x))
                    for _ in range(10):  # warm
                        p.forward(t)
                    us = _median_us(p, t, args.calls)
                    best[(name, n)] = min(best.get((name, n), us), us)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread")
    print("| runtime | " + " | ".join(f"batch {n}: us/pass (us/instance)" for n in args.batches) + " |")
    print("|---|" + "---|" * len(args.batches))
    for name in predictors:
        cells = [f"{best[(name, n)]:.0f} ({best[(name, n)] / n:.0f})" for n in args.batches]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for n in args.batches:
        ratio = best[("ONNX Runtime", n)] / best[("TorchScript", n)]
        print(f"batch {n}: ONNX Runtime takes {100 * ratio:.0f}% of TorchScript's time")


if __name__ == "__main__":
    main()
