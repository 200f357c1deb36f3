"""The training loop: AdamW, warm-up + cosine or one-cycle LR, label smoothing,
early stopping on validation accuracy, per-epoch atomic checkpoints and resume.

Tracking arrives through `log(step, metrics)`, which does nothing by default.
Deterministic on CPU for a given seed; on CUDA it uses bf16 autocast and
channels_last. The whole dataset is moved to the device once when it fits, and
batches are index slices of it (no per-sample DataLoader).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lepton_core.checkpoint import load_checkpoint, save_checkpoint
from lepton_core.models import MLP, ModelConfig, build_model
from lepton_core.params import TrainParams
from lepton_core.progress import Progress

LogFn = Callable[[int, dict[str, float]], None]


def _no_log(step: int, metrics: dict[str, float]) -> None:
    return None


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


def choose_device(pref: str = "auto") -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


def to_model_input(x: np.ndarray, scale: float, model_config: ModelConfig) -> torch.Tensor:
    """uint8/float arrays -> float32 model input (images scaled to [0, 1])."""
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if scale != 1.0:
        t = t * scale
    if model_config.kind == "mlp":
        t = t.reshape(len(t), -1)
    return t


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


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, amp) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch):
        with amp():
            logits = model(x[i : i + batch]).float()
        loss_sum += F.cross_entropy(logits, y[i : i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    n = max(len(x), 1)
    return loss_sum / n, correct / n


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
) -> TrainResult:
    """Train and return the best model (by validation accuracy).

    x_*: float32 model input, (N, C, H, W) or (N, F); y_*: (N,) int64.
    If `checkpoint_path` exists and `resume`, training continues from it.
    """
    device = choose_device(params.device)
    cuda = device.type == "cuda"
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)  # batch order; saved in checkpoints

    model = build_model(model_config)
    if isinstance(model, MLP):
        model.fit_scaler(x_train)
    model.to(device)
    memory_format = torch.channels_last if cuda and x_train.ndim == 4 else torch.contiguous_format
    model.to(memory_format=memory_format)

    # Tensors live on the device for the whole run: one copy, no per-batch transfers.
    def _put(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device, non_blocking=True)
        return t.contiguous(memory_format=memory_format) if t.ndim == 4 else t

    xt, yt, xv, yv = _put(x_train), y_train.to(device), _put(x_val), y_val.to(device)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext

    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
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
    if ckpt is not None and resume and ckpt.exists():
        state = load_checkpoint(ckpt, map_location=device)
        if state.get("model_config") != model_config.model_dump(mode="json") or state.get(
            "params"
        ) != params.model_dump(mode="json"):
            raise ValueError(f"{ckpt} was written for another model or params; not resuming")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng_batches"])
        torch.set_rng_state(state["rng_torch"])
        start_epoch = resumed_from = int(state["epoch"])
        best_acc, best_epoch = float(state["best_val_accuracy"]), int(state["best_epoch"])
        bad_epochs = int(state["bad_epochs"])
        best_state = state["best_model"]
        history = list(state.get("history", []))
        if state.get("finished"):
            start_epoch = params.epochs  # nothing left to do
            stopped_early = bool(state.get("stopped_early", False))

    bar = Progress(params.epochs, "train", enabled=progress)
    bar.update(start_epoch)
    epoch = start_epoch
    with _deterministic(not cuda):
        for epoch in range(start_epoch + 1, params.epochs + 1):
            model.train()
            perm = torch.randperm(len(xt), generator=gen).to(device)
            loss_sum, correct = 0.0, 0
            for i in range(0, len(xt), params.batch_size):
                idx = perm[i : i + params.batch_size]
                xb, yb = xt[idx], yt[idx]
                with amp():
                    logits = model(xb)
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=params.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach().float().item() * len(idx)
                correct += (logits.detach().argmax(1) == yb).sum().item()
            val_loss, val_acc = _evaluate(model, xv, yv, 1024, amp)
            metrics = {
                "train_loss": loss_sum / len(xt),
                "train_accuracy": correct / len(xt),
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
            if ckpt is not None:
                save_checkpoint(
                    {
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
                        "history": history,
                        **(extra_state or {}),
                    },
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
    )
