"""The training loop: AdamW, warm-up + cosine or one-cycle LR, label smoothing,
early stopping on validation accuracy (regression: validation RMSE), per-epoch
atomic checkpoints and resume.

The task decides the loss and the metrics: classification trains on cross-entropy
over logits (accuracy), regression on the mean squared error of standardised targets
(RMSE in the target's units: standardised RMSE x `target_std`).

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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from lepton_core.augment import augment_batch, epoch_generator, flip_bits, should_augment
from lepton_core.checkpoint import load_checkpoint, load_work_checkpoint, save_checkpoint
from lepton_core.data.prepare import Prepared
from lepton_core.models import ModelConfig, build_model, model_config_for
from lepton_core.params import TrainParams
from lepton_core.predictor import Preprocessing, check_samples, model_input
from lepton_core.progress import Progress
from lepton_core.usermodel import CodeBundle, ModelError

LogFn = Callable[[int, dict[str, float]], None]
# a fresh context per use: bf16 autocast on CUDA, else nothing
AmpFn = Callable[[], AbstractContextManager[Any]]


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
    best_val_accuracy: float  # nan for regression
    resumed_from_epoch: int  # 0 = started fresh
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    device: str = "cpu"
    compile_seconds: float = 0.0  # torch.compile warm-up (all shapes), not in the epochs' time
    world_size: int = 1  # processes of a data-parallel run (torchrun); 1 = one process
    rank_rows: list[int] | None = None  # data-parallel: the training rows this rank trained on in its first epoch
    # data-parallel: each rank's rows and final-weights digest
    ranks: list[dict[str, Any]] = field(default_factory=list)
    # a warm start (train.init_from): the weights' keys it left out, by kind
    warm_start: dict[str, list[str]] | None = None
    task: str = "classification"
    best_val_rmse: float | None = None  # regression: in the target's units


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
def _deterministic(enabled: bool) -> Iterator[None]:
    import torch.utils.deterministic as det

    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor (a debugging aid
    # for reads of uninitialised memory, not needed for same-seed results); on the
    # CPU that fill cost up to 15% of a small model's training step.
    det.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        det.fill_uninitialized_memory = prev_fill  # type: ignore[attr-defined]


@contextmanager
def _cudnn_autotune(enabled: bool) -> Iterator[None]:
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


def task_loss(
    task: str, out: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over (B, K) logits and (B,) class indices, or the squared error of
    (B, 1) outputs against (B,) standardised targets."""
    if task == "regression":
        return F.mse_loss(out[:, 0], y, reduction=reduction)
    return F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction=reduction)


def _hits(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the second metric sums: right labels (classification) or squared errors."""
    if task == "regression":
        return ((out[:, 0] - y) ** 2).sum().double()
    return (out.argmax(1) == y).sum().double()


def _epoch_metrics(task: str, split: str, loss_sum: float, hits: float, n: int, target_std: float) -> dict[str, float]:
    """`{split}_loss` and `{split}_accuracy`, or `{split}_rmse` in the target's units."""
    n = max(n, 1)
    if task == "regression":
        return {f"{split}_loss": loss_sum / n, f"{split}_rmse": math.sqrt(hits / n) * target_std}
    return {f"{split}_loss": loss_sum / n, f"{split}_accuracy": hits / n}


@torch.no_grad()
def _evaluate(run: _Setup, model: nn.Module, batch: int = 1024) -> dict[str, float]:
    model.eval()
    x, y = run.xv, run.yv
    # summed on the device, read once (float64: the same sums as Python floats)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    hits = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, len(x), batch):
        with run.amp():
            out = model(x[i : i + batch]).float()
        loss_sum += task_loss(run.task, out, y[i : i + batch], reduction="sum").double()
        hits += _hits(run.task, out, y[i : i + batch])
    return _epoch_metrics(run.task, "val", loss_sum.item(), hits.item(), len(x), run.target_std)


def _batch_sizes(n: int, batch: int) -> list[int]:
    """The distinct batch sizes that slicing `n` samples by `batch` gives."""
    return sorted({min(batch, n), n % batch} - {0}) if n else []


def _compile_warm_up(
    fwd: nn.Module,
    model: nn.Module,
    xt: torch.Tensor,
    yt: torch.Tensor,
    xv: torch.Tensor,
    params: TrainParams,
    amp: AmpFn,
    task: str = "classification",
) -> float:
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
            loss = task_loss(task, fwd(xt[idx]).float(), yt[idx], params.label_smoothing)
        loss.backward()
    fwd.eval()
    with torch.no_grad():
        for n in _batch_sizes(len(xv), 1024):
            with amp():
                fwd(xv[:n])
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    torch.set_rng_state(rng_cpu)
    if rng_cuda is not None:  # on CUDA
        torch.cuda.set_rng_state(rng_cuda, xt.device)
        torch.cuda.synchronize(xt.device)
    return time.perf_counter() - start


@dataclass
class _Setup:
    """What one training holds while it runs: the model (its weights and plain
    state_dict keys), the module that runs batches (DDP and/or compiled around it),
    the optimizer, schedule and batch-order generator, and the device-resident data."""

    model: nn.Module
    fwd: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    device: torch.device
    amp: AmpFn
    rank: int
    world: int
    xt: torch.Tensor  # (N, C, H, W) or (N, F) float32, on the device
    yt: torch.Tensor  # (N,) int64 classes, or float32 standardised targets
    xv: torch.Tensor
    yv: torch.Tensor
    flips: torch.Tensor | None  # per-image flip bits when augmenting, else None
    task: str = "classification"
    target_std: float = 1.0  # regression: RMSE in the target's units = standardised RMSE x this

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class _Standing:
    """Where a training stands after an epoch: what its work checkpoint keeps."""

    epoch: int = 0
    best_score: float = -math.inf  # validation accuracy, or -RMSE (regression): higher is better
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    finished: bool = False
    stopped_early: bool = False


def _set_up(
    model_config: ModelConfig,
    params: TrainParams,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    task: str = "classification",
    target_std: float = 1.0,
) -> _Setup:
    device = choose_device(params.device)
    cuda = device.type == "cuda"
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)  # batch order; saved in checkpoints

    model = build_model(model_config)
    fit_statistics = getattr(model, "fit_statistics", None)
    if callable(fit_statistics):  # a model that fits part of itself on the training data first
        fit_statistics(x_train)
    model.to(device)
    memory_format = torch.channels_last if cuda and x_train.ndim == 4 else torch.contiguous_format
    # Module.to takes memory_format (torch's docs); its typed overloads leave it out
    model.to(memory_format=memory_format)  # type: ignore[call-overload]

    # Tensors live on the device for the whole run: one copy, no per-batch transfers.
    def _put(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t

    xt = _put(x_train)
    augment = should_augment(params.augment, xt, cuda)
    amp: AmpFn = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and params.amp else nullcontext
    # Data-parallel (under torchrun): every rank holds the whole device-resident data
    # and the same batch order, trains on its share of each batch (rows rank::world),
    # and DDP all-reduces the gradients; rank 0 alone logs and checkpoints.
    rank, world, _ = distributed_rank()
    fwd: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # CPU (gloo): device_ids=None; BatchNorm buffers follow rank 0 (broadcast_buffers)
        fwd = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if params.compile:  # an OptimizedModule: still a Module, though torch.compile's stubs say Callable
        fwd = cast(nn.Module, torch.compile(fwd, dynamic=False))

    opt = torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=True if cuda else None
    )
    steps_per_epoch = math.ceil(len(xt) / params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = int(params.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup, params.schedule))
    return _Setup(
        model=model,
        fwd=fwd,
        opt=opt,
        sched=sched,
        gen=gen,
        device=device,
        amp=amp,
        rank=rank,
        world=world,
        xt=xt,
        yt=y_train.to(device),
        xv=_put(x_val),
        yv=y_val.to(device),
        flips=flip_bits(len(xt), params.seed, device) if augment else None,
        task=task,
        target_std=target_std,
    )


def _restore(
    run: _Setup, state: dict[str, Any], model_config: ModelConfig, params: TrainParams, ckpt: Path | None
) -> _Standing:
    """Take up a work checkpoint's weights, optimizer, schedule, random states and
    standing."""
    # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest.
    if not _same_run(state, model_config, params):
        raise ValueError(f"{ckpt} was written for another model or params; not resuming")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.gen.set_state(state["rng_batches"])
    torch.set_rng_state(state["rng_torch"])
    if run.cuda and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], run.device)
    return _Standing(
        epoch=int(state["epoch"]),
        best_score=float(state.get("best_score", state.get("best_val_accuracy", -math.inf))),
        best_epoch=int(state["best_epoch"]),
        bad_epochs=int(state["bad_epochs"]),
        best_state=state["best_model"],
        history=list(state.get("history", [])),
        resumed_from=int(state["epoch"]),
        finished=bool(state.get("finished")),
        stopped_early=bool(state.get("finished")) and bool(state.get("stopped_early", False)),
    )


def _checkpoint_state(
    run: _Setup, at: _Standing, model_config: ModelConfig, params: TrainParams, extra_state: dict[str, Any] | None
) -> dict[str, Any]:
    """The work checkpoint's named keys (on the CPU)."""
    state: dict[str, Any] = _to_cpu(
        {
            "model_config": model_config.model_dump(mode="json"),
            "params": params.model_dump(mode="json"),
            "model": run.model.state_dict(),
            "best_model": at.best_state,
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "epoch": at.epoch,
            "best_epoch": at.best_epoch,
            "best_score": at.best_score,
            "bad_epochs": at.bad_epochs,
            "finished": at.finished,
            "stopped_early": at.stopped_early,
            "rng_batches": run.gen.get_state(),
            "rng_torch": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(run.device)} if run.cuda else {}),
            "history": at.history,
            **(extra_state or {}),
        }
    )
    return state


def _train_epoch(
    run: _Setup, params: TrainParams, epoch: int, first_rows: list[torch.Tensor] | None
) -> dict[str, float]:
    """One pass over the training split, then the validation split; the epoch's
    metrics. `first_rows` collects this rank's rows (data-parallel, first epoch)."""
    xt, yt, world, rank = run.xt, run.yt, run.world, run.rank
    run.fwd.train()
    perm = torch.randperm(len(xt), generator=run.gen).to(run.device)
    # summed on the device and read once per epoch: no host sync per step
    # (float64: the same sums as adding Python floats)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    hits = torch.zeros((), dtype=torch.float64, device=run.device)
    aug_gen = epoch_generator(params.seed, epoch, run.device) if run.flips is not None else None
    for i in range(0, len(xt), params.batch_size):
        idx = perm[i : i + params.batch_size]
        if world > 1:
            idx = idx[rank::world]  # this rank's share of the global batch
            if len(idx) == 0:  # a last batch smaller than the world: wrap around
                idx = perm[rank % len(perm) : rank % len(perm) + 1]
            if first_rows is not None:
                first_rows.append(idx.cpu())
        xb, yb = xt[idx], yt[idx]
        if aug_gen is not None:  # augmenting: made above when `augment`
            xb = augment_batch(xb, idx, epoch, run.flips, params.translate, aug_gen)
        with run.amp():
            out = run.fwd(xb).float()
            loss = task_loss(run.task, out, yb, params.label_smoothing)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.sched.step()
        loss_sum += loss.detach().double() * len(idx)
        hits += _hits(run.task, out.detach(), yb)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss_sum)  # every rank's share of the epoch
        dist.all_reduce(hits)
        # BatchNorm's running statistics are updated by each rank's own share after DDP
        # broadcasts them; rank 0's go to every rank before the evaluation, so all
        # ranks judge (and keep) the same weights
        for b in run.model.buffers():
            dist.broadcast(b, 0)
    # every rank evaluates the same weights on the whole val split: one verdict
    return {
        **_epoch_metrics(run.task, "train", loss_sum.item(), hits.item(), len(xt), run.target_std),
        **_evaluate(run, run.model if world > 1 else run.fwd),
        "lr": run.opt.param_groups[0]["lr"],
    }


def _judge(run: _Setup, at: _Standing, epoch: int, metrics: dict[str, float], params: TrainParams) -> None:
    """Record the epoch; keep the best weights; stop early after `patience` epochs
    without a better validation accuracy (regression: a lower validation RMSE)."""
    at.epoch = epoch
    at.history.append({"epoch": float(epoch), **metrics})
    score = -metrics["val_rmse"] if run.task == "regression" else metrics["val_accuracy"]
    if score > at.best_score:
        at.best_score, at.best_epoch, at.bad_epochs = score, epoch, 0
        at.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    else:
        at.bad_epochs += 1
    at.stopped_early = params.patience > 0 and at.bad_epochs >= params.patience
    at.finished = at.stopped_early or epoch == params.epochs


def _shown(metrics: dict[str, float]) -> str:
    """The progress bar's figure for an epoch."""
    if "val_rmse" in metrics:
        return f"val_rmse {metrics['val_rmse']:.4g}"
    return f"val_acc {metrics['val_accuracy']:.3f}"


def warm_start(model: nn.Module, weights: dict[str, torch.Tensor], strict: bool) -> dict[str, list[str]]:
    """Load `weights` into `model` before training. Strict: every key and shape must fit
    (ModelError naming the first that do not). Otherwise what fits is loaded and the
    keys left out are returned: {"missing", "unexpected", "mismatched"} (a new head)."""
    own = model.state_dict()
    mismatched = sorted(k for k, v in weights.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if strict and (mismatched or missing or unexpected):
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("shapes differ for", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ModelError(
            "train.init_from: the weights do not fit the model (" + "; ".join(parts) + "); "
            "set train.init_strict=false to load what fits"
        )
    fits = {k: v for k, v in weights.items() if k in own and k not in mismatched}
    model.load_state_dict(fits, strict=False)
    return {"missing": missing, "unexpected": unexpected, "mismatched": mismatched}


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
    init_weights: dict[str, torch.Tensor] | None = None,
    init_strict: bool = True,
    task: str = "classification",
    target_std: float = 1.0,
) -> TrainResult:
    """Train and return the best model (by validation accuracy, or RMSE for regression).

    x_*: float32 model input, (N, C, H, W) or (N, F); y_*: (N,) int64 classes, or
    (N,) float32 standardised targets (`task="regression"`; `target_std` turns the
    standardised RMSE into the target's units for the metrics).
    If `checkpoint_path` exists and `resume`, training continues from it; one that
    cannot be read safely is moved aside (`note` says where, in one line) and
    training starts from scratch.
    """
    run = _set_up(model_config, params, x_train, y_train, x_val, y_val, task, target_std)
    lead = run.rank == 0
    if not lead:
        log, progress = _no_log, False
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    state, moved = load_work_checkpoint(ckpt) if ckpt is not None and resume else (None, None)
    if moved:
        note(moved)
    at = _restore(run, state, model_config, params, ckpt) if state is not None else _Standing()
    left_out = None
    if state is None and init_weights is not None:  # a resume keeps its own weights
        left_out = warm_start(run.model, init_weights, init_strict)
    start_epoch = params.epochs if at.finished else at.epoch  # a finished one has nothing left to do

    compile_seconds = 0.0
    first_rows: list[torch.Tensor] = []  # data-parallel: this rank's rows in its first epoch
    bar = Progress(params.epochs, "train", enabled=progress)
    bar.update(start_epoch)
    with _deterministic(not run.cuda), _cudnn_autotune(run.cuda):
        if params.compile and start_epoch < params.epochs:
            compile_seconds = _compile_warm_up(run.fwd, run.model, run.xt, run.yt, run.xv, params, run.amp, task)
        for epoch in range(start_epoch + 1, params.epochs + 1):
            rows = first_rows if run.world > 1 and epoch == start_epoch + 1 else None
            metrics = _train_epoch(run, params, epoch, rows)
            if not math.isfinite(metrics["train_loss"]):
                raise ModelError(
                    f"the training loss is not finite at epoch {epoch} ({metrics['train_loss']}): "
                    "lower train.lr, or check what the model's forward returns"
                )
            _judge(run, at, epoch, metrics, params)
            if ckpt is not None and lead:
                save_checkpoint(_checkpoint_state(run, at, model_config, params, extra_state), ckpt)
            bar.update(1, _shown(metrics))
            log(epoch, metrics)
            if at.stopped_early:
                break
    bar.close()
    return _result(run, at, model_config, compile_seconds, first_rows, left_out)


def _result(
    run: _Setup,
    at: _Standing,
    model_config: ModelConfig,
    compile_seconds: float,
    first_rows: list[torch.Tensor],
    left_out: dict[str, list[str]] | None,
) -> TrainResult:
    """The finished training: the best epoch's weights, on the CPU, in eval mode."""
    if at.best_state is not None:
        run.model.load_state_dict(at.best_state)
    run.model.eval()
    regression = run.task == "regression"
    return TrainResult(
        model=run.model.to("cpu").to(memory_format=torch.contiguous_format),  # type: ignore[call-overload]
        model_config=model_config,
        epochs_run=len(at.history),
        best_epoch=at.best_epoch,
        best_val_accuracy=math.nan if regression else at.best_score,
        resumed_from_epoch=at.resumed_from,
        stopped_early=at.stopped_early,
        history=at.history,
        device=str(run.device),
        compile_seconds=compile_seconds,
        world_size=run.world,
        rank_rows=sorted(torch.cat(first_rows).tolist()) if first_rows else None,
        warm_start=left_out,
        task=run.task,
        best_val_rmse=-at.best_score if regression else None,
    )


# ---------------------------------------------------------------- a prepared dataset
def stratified_slice(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a class-proportional subset of `n` samples (sorted); float targets
    are sliced in proportion to their quantile bins."""
    if np.issubdtype(np.asarray(y).dtype, np.floating):
        from lepton_core.data.prepare import target_strata

        y = target_strata(y)
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
    code_base: str | Path | None = None,
) -> TrainResult:
    """Train on a prepared dataset's train/val splits, read through the same
    preprocessing the predictor applies later (what dvc repro and Prefect both call).
    `extra_state` goes into every work checkpoint (e.g. the tracking run's id). A team's
    own model (`train.model.class_path`) is built from the source of `train.code`,
    relative to `code_base` (the project), which every checkpoint then carries."""
    code = None
    if getattr(params.model, "class_path", None) and params.code:
        code = dict(CodeBundle.from_folders(params.code, Path(code_base or Path.cwd())).files)
    cfg = model_config_for(
        prepared.meta, params.model, params.width, params.depth, params.dropout, code, tuple(params.requirements)
    )
    init = None
    if params.init_from:
        if not Path(params.init_from).is_file():
            raise ModelError(
                f"train.init_from {params.init_from!r}: no such checkpoint file "
                "(champion and models:/NAME/VERSION are found by lepton retrain)"
            )
        init = load_checkpoint(params.init_from)["model"]
    x_tr, y_tr = prepared.x["train"], prepared.y["train"]
    if params.max_train_samples:
        keep = stratified_slice(y_tr, params.max_train_samples, params.seed)
        x_tr, y_tr = x_tr[keep], y_tr[keep]

    def inputs(x: np.ndarray) -> torch.Tensor:
        return model_input(check_samples(x, preprocessing), preprocessing, cfg)

    def targets(y: np.ndarray) -> torch.Tensor:
        if not preprocessing.regression:
            return torch.from_numpy(y)
        standard = (np.asarray(y, np.float64) - preprocessing.target_mean) / preprocessing.target_std
        return torch.from_numpy(standard.astype(np.float32))

    return train_model(
        cfg,
        params,
        inputs(x_tr),
        targets(y_tr),
        inputs(prepared.x["val"]),
        targets(prepared.y["val"]),
        log=log,
        checkpoint_path=checkpoint_path,
        progress=progress,
        extra_state=extra_state,
        note=note,
        init_weights=init,
        init_strict=params.init_strict,
        task=preprocessing.task,
        target_std=preprocessing.target_std,
    )


def save_trained_model(
    result: TrainResult, params: TrainParams, preprocessing: Preprocessing, meta: dict[str, Any], path: str | Path
) -> Path:
    """The final, self-describing checkpoint of the best weights: the model config,
    weights, params and the preprocessing the predictor needs (plus the dataset meta)."""
    return save_checkpoint(
        {
            "model_config": result.model_config.model_dump(mode="json"),
            "model": result.model.state_dict(),
            "params": params.model_dump(mode="json"),
            "epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            **({"best_val_rmse": result.best_val_rmse} if result.best_val_rmse is not None else {}),
            "preprocessing": preprocessing.model_dump_json(),
            "meta_json": json.dumps(meta, sort_keys=True),
        },
        path,
    )
