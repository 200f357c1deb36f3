"""The training loop: AdamW, warm-up + cosine or one-cycle LR, label smoothing,
early stopping on validation accuracy, per-epoch atomic checkpoints and resume.

Tracking arrives through `log(step, metrics)`, which does nothing by default.
Deterministic on CPU for a given seed; on CUDA it uses bf16 autocast (`amp`),
channels_last, cuDNN autotuning and fused AdamW. The whole dataset is moved to the
device once, and batches are index slices of it (no per-sample DataLoader);
per-step metrics stay on the device and are read once per epoch (no sync per step).
With `compile`, the model goes through `torch.compile`; every input shape the run
will see is compiled before the first epoch, timed apart (`compile_seconds`).
Checkpoints hold CPU tensors only, so one written on a GPU loads anywhere.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from lepton_core.checkpoint import load_work_checkpoint, save_checkpoint
from lepton_core.data.prepare import Prepared
from lepton_core.augment import augment_batch, epoch_generator, flip_bits, should_augment
from lepton_core.models import MLP, FastCNN, ModelConfig, build_model, model_config_for
from lepton_core.params import TrainParams
from lepton_core.predictor import Preprocessing, check_samples, model_input
from lepton_core.progress import Progress

LogFn = Callable[[int, dict[str, float]], None]


def _no_log(step: int, metrics: dict[str, float]) -> None:
    return None


def _note_to_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


@dataclass
class TrainResult:
    model: nn.Module
    model_config: ModelConfig
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float
    resumed_from_epoch: int  # 0 = started fresh
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    compile_seconds: float = 0.0  # torch.compile warm-up (all shapes), not in the epochs' time
    world_size: int = 1  # processes of a data-parallel run (torchrun); 1 = one process
    rank_rows: list[int] | None = None  # data-parallel: the training rows this rank trained on in its first epoch
    ranks: list[dict] = field(default_factory=list)  # data-parallel: each rank's rows and final-weights digest


def choose_device(pref: str = "auto") -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        rank, world, local = distributed_rank()
        return torch.device("cuda", local % torch.cuda.device_count()) if world > 1 else torch.device("cuda")
    return torch.device("cpu")


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process in an initialised process group
    (torchrun; see effects/training/ddp_worker.py), else (0, 1, 0)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import os

        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0




def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier on the peak LR at optimizer step `step` of `total`."""
    if schedule == "onecycle":
        # linear ramp to the peak over the first 30%, cosine anneal to ~0 after
        peak = max(1, int(0.3 * total))
        if step < peak:
            return 0.04 + 0.96 * step / peak
        t = (step - peak) / max(1, total - peak)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@contextmanager
def _deterministic(enabled: bool):
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextmanager
def _cudnn_autotune(enabled: bool):
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev


def _to_cpu(obj: Any) -> Any:
    """The same (nested) state with every tensor on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _same_run(state: dict[str, Any], model_config: ModelConfig, params: TrainParams) -> bool:
    """Whether a checkpoint was written for this model and these params. Keys added
    to TrainParams later take their defaults; `compile` changes how the model runs,
    not what it computes, so a run may resume with it either way."""
    if state.get("model_config") != model_config.model_dump(mode="json"):
        return False
    saved = state.get("params")
    if not isinstance(saved, dict):
        return False
    try:
        saved_params = TrainParams.model_validate(saved)
    except ValidationError:
        return False
    return saved_params.model_copy(update={"compile": params.compile}) == params


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, amp) -> tuple[float, float]:
    model.eval()
    # summed on the device, read once (float64: the same sums as Python floats)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch):
        with amp():
            logits = model(x[i : i + batch]).float()
        loss_sum += F.cross_entropy(logits, y[i : i + batch], reduction="sum").double()
        correct += (logits.argmax(1) == y[i : i + batch]).sum()
    n = max(len(x), 1)
    return loss_sum.item() / n, correct.item() / n


def _batch_sizes(n: int, batch: int) -> list[int]:
    """The distinct batch sizes that slicing `n` samples by `batch` gives."""
    return sorted({min(batch, n), n % batch} - {0}) if n else []


def _compile_warm_up(fwd: nn.Module, model: nn.Module, xt: torch.Tensor, yt: torch.Tensor,
                     xv: torch.Tensor, params: TrainParams, amp) -> float:
    """Run the compiled model once on every shape and mode training will use
    (train-mode forward + backward, eval-mode forward), then put the weights,
    buffers, gradients and RNG states back: compilation leaves no trace in the
    run. Returns the seconds it took."""
    cuda = xt.is_cuda
    start = time.perf_counter()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng_cpu = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state(xt.device) if cuda else None
    fwd.train()
    for n in _batch_sizes(len(xt), params.batch_size):
        idx = torch.arange(n, device=xt.device)  # indexed like the training batches
        with amp():
            loss = F.cross_entropy(fwd(xt[idx]).float(), yt[idx], label_smoothing=params.label_smoothing)
        loss.backward()
    fwd.eval()
    with torch.no_grad():
        for n in _batch_sizes(len(xv), 1024):
            with amp():
                fwd(xv[:n])
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    torch.set_rng_state(rng_cpu)
    if cuda:
        torch.cuda.set_rng_state(rng_cuda, xt.device)
        torch.cuda.synchronize(xt.device)
    return time.perf_counter() - start


def train_model(
    model_config: ModelConfig,
    params: TrainParams,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    log: LogFn = _no_log,
    checkpoint_path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    extra_state: dict[str, Any] | None = None,
    note: Callable[[str], None] = _note_to_stderr,
) -> TrainResult:
    """Train and return the best model (by validation accuracy).

    x_*: float32 model input, (N, C, H, W) or (N, F); y_*: (N,) int64.
    If `checkpoint_path` exists and `resume`, training continues from it; one that
    cannot be read safely is moved aside (`note` says where, in one line) and
    training starts from scratch.
    """
    device = choose_device(params.device)
    cuda = device.type == "cuda"
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)  # batch order; saved in checkpoints

    model = build_model(model_config)
    if isinstance(model, MLP):
        model.fit_scaler(x_train)
    elif isinstance(model, FastCNN):
        model.fit_whitening(x_train)
    model.to(device)
    memory_format = torch.channels_last if cuda and x_train.ndim == 4 else torch.contiguous_format
    model.to(memory_format=memory_format)

    # Tensors live on the device for the whole run: one copy, no per-batch transfers.
    def _put(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t

    xt, yt, xv, yv = _put(x_train), y_train.to(device), _put(x_val), y_val.to(device)
    augment = should_augment(params.augment, xt, cuda)
    flips = flip_bits(len(xt), params.seed, device) if augment else None
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and params.amp else nullcontext
    # Data-parallel (under torchrun): every rank holds the whole device-resident data
    # and the same batch order, trains on its share of each batch (rows rank::world),
    # and DDP all-reduces the gradients; rank 0 alone logs and checkpoints.
    rank, world, _ = distributed_rank()
    lead = rank == 0
    if not lead:
        log, progress = _no_log, False
    # the module that runs batches; `model` keeps the weights (and plain state_dict keys)
    fwd: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # CPU (gloo): device_ids=None; BatchNorm buffers follow rank 0 (broadcast_buffers)
        fwd = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    fwd = torch.compile(fwd, dynamic=False) if params.compile else fwd

    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, **({"fused": True} if cuda else {})
    )
    steps_per_epoch = math.ceil(len(xt) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = int(params.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup, params.schedule)
    )

    start_epoch, best_acc, best_epoch, bad_epochs = 0, -1.0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    resumed_from = 0
    stopped_early = False
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    state, moved = load_work_checkpoint(ckpt) if ckpt is not None and resume else (None, None)
    if moved:
        note(moved)
    if state is not None:
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest.
        if not _same_run(state, model_config, params):
            raise ValueError(f"{ckpt} was written for another model or params; not resuming")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng_batches"])
        torch.set_rng_state(state["rng_torch"])
        if cuda and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start_epoch = resumed_from = int(state["epoch"])
        best_acc, best_epoch = float(state["best_val_accuracy"]), int(state["best_epoch"])
        bad_epochs = int(state["bad_epochs"])
        best_state = state["best_model"]
        history = list(state.get("history", []))
        if state.get("finished"):
            start_epoch = params.epochs  # nothing left to do
            stopped_early = bool(state.get("stopped_early", False))

    compile_seconds = 0.0
    first_rows: list[torch.Tensor] = []  # data-parallel: this rank's rows in its first epoch
    bar = Progress(params.epochs, "train", enabled=progress)
    bar.update(start_epoch)
    epoch = start_epoch
    with _deterministic(not cuda), _cudnn_autotune(cuda):
        if params.compile and start_epoch < params.epochs:
            compile_seconds = _compile_warm_up(fwd, model, xt, yt, xv, params, amp)
        for epoch in range(start_epoch + 1, params.epochs + 1):
            fwd.train()
            perm = torch.randperm(len(xt), generator=gen).to(device)
            # summed on the device and read once per epoch: no host sync per step
            # (float64: the same sums as adding Python floats)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            aug_gen = epoch_generator(params.seed, epoch, device) if augment else None
            for i in range(0, len(xt), params.batch_size):
                idx = perm[i : i + params.batch_size]
                if world > 1:
                    idx = idx[rank::world]  # this rank's share of the global batch
                    if len(idx) == 0:  # a last batch smaller than the world: wrap around
                        idx = perm[rank % len(perm) : rank % len(perm) + 1]
                    if epoch == start_epoch + 1:
                        first_rows.append(idx.cpu())
                xb, yb = xt[idx], yt[idx]
                if augment:
                    xb = augment_batch(xb, idx, epoch, flips, params.translate, aug_gen)
                with amp():
                    logits = fwd(xb)
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=params.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach().double() * len(idx)
                correct += (logits.detach().argmax(1) == yb).sum()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_sum)  # every rank's share of the epoch
                dist.all_reduce(correct)
                # BatchNorm's running statistics are updated by each rank's own share
                # after DDP broadcasts them; rank 0's go to every rank before the
                # evaluation, so all ranks judge (and keep) the same weights
                for b in model.buffers():
                    dist.broadcast(b, 0)
            # every rank evaluates the same weights on the whole val split: one verdict
            val_loss, val_acc = _evaluate(model if world > 1 else fwd, xv, yv, 1024, amp)
            metrics = {
                "train_loss": loss_sum.item() / len(xt),
                "train_accuracy": correct.item() / len(xt),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": opt.param_groups[0]["lr"],
            }
            history.append({"epoch": float(epoch), **metrics})
            if val_acc > best_acc:
                best_acc, best_epoch, bad_epochs = val_acc, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            stop = params.patience > 0 and bad_epochs >= params.patience
            if ckpt is not None and lead:
                save_checkpoint(
                    _to_cpu({
                        "model_config": model_config.model_dump(mode="json"),
                        "params": params.model_dump(mode="json"),
                        "model": model.state_dict(),
                        "best_model": best_state,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "epoch": epoch,
                        "best_epoch": best_epoch,
                        "best_val_accuracy": best_acc,
                        "bad_epochs": bad_epochs,
                        "finished": stop or epoch == params.epochs,
                        "stopped_early": stop,
                        "rng_batches": gen.get_state(),
                        "rng_torch": torch.get_rng_state(),
                        **({"rng_cuda": torch.cuda.get_rng_state(device)} if cuda else {}),
                        "history": history,
                        **(extra_state or {}),
                    }),
                    ckpt,
                )
            bar.update(1, f"val_acc {val_acc:.3f}")
            log(epoch, metrics)
            if stop:
                stopped_early = True
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model.to("cpu").to(memory_format=torch.contiguous_format),
        model_config=model_config,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val_accuracy=best_acc,
        resumed_from_epoch=resumed_from,
        stopped_early=stopped_early,
        history=history,
        device=str(device),
        compile_seconds=compile_seconds,
        world_size=world,
        rank_rows=sorted(torch.cat(first_rows).tolist()) if first_rows else None,
    )


# ---------------------------------------------------------------- a prepared dataset
def stratified_slice(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-proportional subset of `n` samples (sorted)."""
    if n >= len(y):
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(n * len(idx) / len(y))))
        picks.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picks))


def train_on_prepared(
    prepared: Prepared,
    params: TrainParams,
    preprocessing: Preprocessing,
    checkpoint_path: str | Path | None = None,
    *,
    log: LogFn = _no_log,
    progress: bool = True,
    extra_state: dict[str, Any] | None = None,
    note: Callable[[str], None] = _note_to_stderr,
) -> TrainResult:
    """Train on a prepared dataset's train/val splits, read through the same
    preprocessing the predictor applies later (what dvc repro and Prefect both call).
    `extra_state` goes into every work checkpoint (e.g. the tracking run's id)."""
    cfg = model_config_for(prepared.meta, params.model, params.width, params.depth, params.dropout)
    x_tr, y_tr = prepared.x["train"], prepared.y["train"]
    if params.max_train_samples:
        keep = stratified_slice(y_tr, params.max_train_samples, params.seed)
        x_tr, y_tr = x_tr[keep], y_tr[keep]

    def inputs(x: np.ndarray) -> torch.Tensor:
        return model_input(check_samples(x, preprocessing), preprocessing, cfg)

    return train_model(
        cfg, params, inputs(x_tr), torch.from_numpy(y_tr), inputs(prepared.x["val"]),
        torch.from_numpy(prepared.y["val"]),
        log=log, checkpoint_path=checkpoint_path, progress=progress, extra_state=extra_state, note=note,
    )


def save_trained_model(result: TrainResult, params: TrainParams, preprocessing: Preprocessing,
                       meta: dict, path: str | Path) -> Path:
    """The final, self-describing checkpoint of the best weights: the model config,
    weights, params and the preprocessing the predictor needs (plus the dataset meta)."""
    return save_checkpoint(
        {
            "model_config": result.model_config.model_dump(mode="json"),
            "model": result.model.state_dict(),
            "params": params.model_dump(mode="json"),
            "epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            "preprocessing": preprocessing.model_dump_json(),
            "meta_json": json.dumps(meta, sort_keys=True),
        },
        path,
    )
