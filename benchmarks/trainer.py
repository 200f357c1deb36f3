"""Training throughput: Lepton's `train_model` vs a bare hand-written loop.

Both train the same CIFAR-shaped SmallCNN (`ModelConfig(kind="cnn", input_shape=(3, 32, 32))`)
on the same synthetic uint8 3x32x32 images (scaled to [0, 1] by the predictor's
preprocessing), with the same AdamW settings, batch size and per-epoch validation
pass, on the same device-resident tensors (channels_last on CUDA, cuDNN autotuning
on, fused AdamW on CUDA). The bare loop has what Lepton adds taken out: LR
schedule, metric sums, best-weights copies, early stopping, checkpoints, logging.

    python benchmarks/trainer.py --device cuda                       # GPU: bf16 x compile grid, N = 50,000
    python benchmarks/trainer.py --device cpu --n 512 --width 8      # a quick check on a CPU

images/s counts training images only, over the epochs after the first (the first
epoch pays for cuDNN autotuning, lazy CUDA set-up and, for the bare loop, compiling).
Compile time is apart: Lepton's `TrainResult.compile_seconds` (its warm-up of every
input shape before the first epoch); for the bare loop, first epoch minus a steady
epoch. Inductor's FX-graph and autograd caches are off and its cache folder is new
per process, so each compile lowers its graphs again (Triton kernels already built
earlier in the same process are reused). The GPU memory peak is
`torch.cuda.max_memory_allocated` over the whole run, the device-resident data set
included. Nothing is asserted: the numbers are for the README.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

# Cold compiles, before torch reads its configuration.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a fresh cache, removed at exit (--help too)
    _CACHE = tempfile.mkdtemp(prefix="lepton-bench-inductor-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _CACHE
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(os.environ["TORCHINDUCTOR_CACHE_DIR"], "triton"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lepton_core.models import ModelConfig, build_model  # noqa: E402
from lepton_core.params import TrainParams  # noqa: E402
from lepton_core.predictor import Preprocessing, model_input  # noqa: E402
from lepton_core.train import choose_device, train_model  # noqa: E402

PRE = Preprocessing(
    kind="image", input_shape=(3, 32, 32), dtype="uint8", scale=1 / 255, classes=tuple(str(i) for i in range(10))
)


def model_config(model: str, width: int, depth: int) -> ModelConfig:
    if model != "team":
        return ModelConfig(kind=model, input_shape=(3, 32, 32), n_classes=10, width=width, depth=depth)
    from lepton_core.usermodel import CodeBundle

    code = CodeBundle.from_folders(["examples/team_model/my_models"], ROOT)
    return ModelConfig(
        kind="custom",
        input_shape=(3, 32, 32),
        n_classes=10,
        class_path="my_models.TinyResNet",
        init_args={"in_channels": 3, "n_outputs": 10, "width": width, "blocks": depth},
        code=dict(code.files),
    )


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8: one blocky colour template per class, a random gain, noise."""
    templates = np.random.default_rng(1234).integers(0, 256, (10, 3, 4, 4)).astype(np.float32)
    templates = templates.repeat(8, axis=2).repeat(8, axis=3)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.empty((n, 3, 32, 32), np.uint8)
    for s in range(0, n, 5000):
        yy = y[s : s + 5000]
        gain = rng.uniform(0.3, 0.7, (len(yy), 1, 1, 1)).astype(np.float32)
        noise = rng.standard_normal((len(yy), 3, 32, 32), dtype=np.float32) * 60
        x[s : s + 5000] = np.clip(templates[yy] * gain + noise + 64, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_lepton(cfg: ModelConfig, params: TrainParams, data, device: torch.device) -> dict:
    xt, yt, xv, yv = data
    stamps: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    res = train_model(
        cfg, params, xt, yt, xv, yv, progress=False, log=lambda step, metrics: stamps.append(time.perf_counter())
    )  # metrics read: synced
    epochs = [b - a for a, b in zip([t0 + res.compile_seconds, *stamps], stamps)]
    return {
        "epoch_s": epochs,
        "compile_s": res.compile_seconds,
        "compile_estimated": False,
        "val_accuracy": res.history[-1]["val_accuracy"],
    }


def run_bare(cfg: ModelConfig, params: TrainParams, data, device: torch.device) -> dict:
    """The loop a person would write: same model, data, optimizer, batches, val pass."""
    x, y, xv_cpu, yv_cpu = data
    cuda = device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(params.seed)
    _sync(device)
    t0 = time.perf_counter()
    model = build_model(cfg)
    if hasattr(model, "fit_whitening"):  # fastcnn: its frozen first layer, as train_model fits it
        model.fit_whitening(x)
    model = model.to(device).to(memory_format=fmt)
    xt, yt = x.to(device).contiguous(memory_format=fmt), y.to(device)
    xv, yv = xv_cpu.to(device).contiguous(memory_format=fmt), yv_cpu.to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, **({"fused": True} if cuda else {})
    )
    fwd = torch.compile(model, dynamic=False) if params.compile else model
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and params.amp else nullcontext
    gen = torch.Generator().manual_seed(params.seed)
    stamps, acc = [], 0.0
    for _ in range(params.epochs):
        fwd.train()
        perm = torch.randperm(len(xt), generator=gen).to(device)
        for i in range(0, len(xt), params.batch_size):
            idx = perm[i : i + params.batch_size]
            with amp():
                loss = F.cross_entropy(fwd(xt[idx]).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        fwd.eval()
        correct = torch.zeros((), dtype=torch.int64, device=device)
        with torch.no_grad():
            for i in range(0, len(xv), 1024):
                with amp():
                    correct += (fwd(xv[i : i + 1024]).argmax(1) == yv[i : i + 1024]).sum()
        acc = correct.item() / max(len(xv), 1)  # the epoch's one sync
        stamps.append(time.perf_counter())
    epochs = [b - a for a, b in zip([t0, *stamps], stamps)]
    steady = sum(epochs[1:]) / max(len(epochs) - 1, 1)
    compile_s = max(epochs[0] - steady, 0.0) if params.compile else 0.0
    return {"epoch_s": epochs, "compile_s": compile_s, "compile_estimated": True, "val_accuracy": acc}


def one(loop: str, cfg: ModelConfig, params: TrainParams, data, device: torch.device) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    out = (run_lepton if loop == "lepton" else run_bare)(cfg, params, data, device)
    n = len(data[0])
    steady = out["epoch_s"][1:]
    out.update(
        loop=loop,
        amp=params.amp and device.type == "cuda",
        compile=params.compile,
        images_per_s=n * len(steady) / sum(steady),
        first_epoch_s=out["epoch_s"][0],
        steady_epoch_s=sum(steady) / len(steady),
        graphs=_graphs() if params.compile else 0,
        peak_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    )
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def table(rows: list[dict]) -> str:
    lines = [
        "| loop | bf16 | compile | images/s | steady epoch s | first epoch s | compile s | GPU peak MiB | val acc |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        comp = "-" if not r["compile"] else ("≈" if r["compile_estimated"] else "") + f"{r['compile_s']:.1f}"
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:,.0f}"
        lines.append(
            f"| {r['loop']} | {'on' if r['amp'] else 'off'} | {'on' if r['compile'] else 'off'} "
            f"| {r['images_per_s']:,.0f} | {r['steady_epoch_s']:.3f} | {r['first_epoch_s']:.2f} | {comp} "
            f"| {peak} | {r['val_accuracy']:.3f} |"
        )
    return "\n".join(lines)


def _figure_args(argv: list[str]) -> list[str]:
    """The arguments that shape the figures (not where they are written)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--json", "--markdown"):
            skip = True
        elif not a.startswith(("--json=", "--markdown=")):
            out.append(a)
    return out


def _onoff(text: str) -> list[bool]:
    vals = [v.strip().lower() for v in text.split(",") if v.strip()]
    if not vals or any(v not in ("on", "off") for v in vals):
        raise argparse.ArgumentTypeError("a comma list of on/off, e.g. on,off")
    return [v == "on" for v in vals]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="images/s of Lepton's train_model vs a bare loop on synthetic 3x32x32 data "
        "(bf16 on/off x torch.compile on/off on CUDA); prints a markdown table."
    )
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--n", type=int, default=50_000, help="training images (default 50,000)")
    ap.add_argument("--n-val", type=int, default=None, help="validation images (default n/10)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run, >= 2; the first is not timed (default 3)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--model",
        choices=["cnn", "fastcnn", "team"],
        default="cnn",
        help="cnn: SmallCNN; fastcnn: the fast CIFAR-shaped network; team: a team's own model by class path, "
        "examples/team_model's TinyResNet (--width channels, --depth residual blocks) (default cnn)",
    )
    ap.add_argument("--width", type=int, default=32, help="base channels (default 32)")
    ap.add_argument("--depth", type=int, default=2, help="convs per block (default 2)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--amp",
        type=_onoff,
        default=None,
        help="bf16 autocast settings to run, e.g. on,off (default: on,off on CUDA; off on CPU)",
    )
    ap.add_argument(
        "--compile",
        type=_onoff,
        default=None,
        help="torch.compile settings to run (default: off,on on CUDA; off on CPU)",
    )
    ap.add_argument("--loops", default="lepton,bare", help="which loops, comma list of lepton,bare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every figure here as JSON")
    ap.add_argument("--markdown", type=Path, help="write the table (with the set-up) here")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch is not timed)")
    loops = [v.strip() for v in args.loops.split(",") if v.strip()]
    if not loops or any(v not in ("lepton", "bare") for v in loops):
        ap.error("--loops: a comma list of lepton,bare")

    device = choose_device(args.device)
    cuda = device.type == "cuda"
    amps = args.amp if args.amp is not None else ([True, False] if cuda else [False])
    if not cuda:
        amps = sorted(set(amps) & {False}) or [False]  # autocast is CUDA-only in both loops
    compiles = args.compile if args.compile is not None else ([False, True] if cuda else [False])
    if cuda:
        torch.backends.cudnn.benchmark = True  # as train_model sets it on CUDA

    n_val = args.n_val if args.n_val is not None else max(args.n // 10, 1)
    cfg = model_config(args.model, args.width, args.depth)
    x_tr, y_tr = synthetic_images(args.n, args.seed)
    x_va, y_va = synthetic_images(n_val, args.seed + 1)
    data = (model_input(x_tr, PRE, cfg), torch.from_numpy(y_tr), model_input(x_va, PRE, cfg), torch.from_numpy(y_va))
    del x_tr, x_va

    setup = {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "n": args.n,
        "n_val": n_val,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "model": args.model,
        "width": args.width,
        "depth": args.depth,
        "lr": args.lr,
        "params": sum(p.numel() for p in build_model(cfg).parameters()),
        "command": "python benchmarks/trainer.py " + " ".join(_figure_args(sys.argv[1:] if argv is None else argv)),
    }
    print(
        f"device: {setup['device']}; torch {setup['torch']}; N={args.n:,} train + {n_val:,} val images, "
        f"{args.epochs} epochs, batch {args.batch_size}, {args.model} width {args.width} depth {args.depth} "
        f"({setup['params']:,} parameters)",
        flush=True,
    )
    rows = []
    for compile_ in compiles:
        for amp in amps:
            for loop in loops:
                params = TrainParams(
                    model="auto" if args.model == "team" else args.model,  # the config builds the model
                    augment="off",
                    width=args.width,
                    depth=args.depth,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    patience=0,
                    seed=args.seed,
                    device=device.type,
                    amp=amp,
                    compile=compile_,
                )
                r = one(loop, cfg, params, data, device)
                rows.append(r)
                print(
                    f"  {loop:6s} bf16={'on ' if r['amp'] else 'off'} compile={'on ' if compile_ else 'off'}: "
                    f"{r['images_per_s']:,.0f} images/s, epochs {[round(e, 3) for e in r['epoch_s']]}, "
                    f"compile {r['compile_s']:.1f} s",
                    flush=True,
                )
    md = table(rows)
    print()
    print(md)
    if args.markdown:
        args.markdown.write_text(
            f"Device: {setup['device']} (torch {setup['torch']}, Python {setup['python']})\n\n"
            f"Command: `{setup['command']}`\n\n{md}\n"
        )
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
