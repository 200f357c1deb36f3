"""Checkpoints that rebuild their own model.

A checkpoint is a dict of plain values and tensors (loadable with
`weights_only=True`): model config, weights, optimizer and scheduler state, epoch,
params, early-stopping state and RNG states. Written to a temp file in the same
folder and `os.replace`d, so a crash leaves the old checkpoint or the new one.

Loading never runs code from the file: anything `weights_only=True` refuses (a
pickle of other objects, random bytes, a truncated archive) is an
`UnreadableCheckpoint` with a short reason, and a work checkpoint that cannot be
read is moved aside (`<name>.corrupt-<UTC time>`) so training starts afresh.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lepton_core.errors import LeptonError
from lepton_core.fileio import atomic_write
from lepton_core.models import ModelConfig, build_model

# What every work checkpoint of the training loop holds (lepton_core.train).
WORK_KEYS = (
    "model_config",
    "params",
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "best_epoch",
    "best_score",
    "bad_epochs",
    "rng_batches",
    "rng_torch",
)


class UnreadableCheckpoint(LeptonError):
    """A checkpoint file that is truncated, not a checkpoint, or holds objects
    other than plain values and tensors (refused, never loaded)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: not a readable checkpoint ({reason})")
        self.path, self.reason = Path(path), reason

    def __reduce__(self) -> tuple[type[UnreadableCheckpoint], tuple[str, str]]:
        # pickled across processes (Prefect results) with both fields
        return type(self), (str(self.path), self.reason)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(state, f))


def _reason(e: BaseException) -> str:
    # torch's own messages suggest `weights_only=False`, i.e. running the file's
    # code; they are replaced by what went wrong, in a few words.
    if isinstance(e, pickle.UnpicklingError):
        return "it holds objects other than plain values and tensors; refused, not loaded"
    if isinstance(e, EOFError):
        return "it is empty or cut short"
    if isinstance(e, (RuntimeError, zipfile.BadZipFile)) and "zip" in str(e).lower():
        return "it is truncated or not a torch checkpoint"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'unreadable'}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict, read with `weights_only=True` (no code from the file
    runs). `mmap`: map the tensors instead of reading them (a cheap look inside)."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ..." from hostile files
            warnings.simplefilter("ignore", UserWarning)
            mmap = mmap and zipfile.is_zipfile(path)  # torch maps only its zip format
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise UnreadableCheckpoint(path, _reason(e)) from None
    if not isinstance(state, dict):
        raise UnreadableCheckpoint(path, f"it holds a {type(state).__name__}, not a checkpoint dict")
    return state


def move_aside(path: str | Path) -> Path:
    """Rename `path` to `<name>.corrupt-<UTC time>` beside it (kept for a look, out of the way)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dst = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dst.exists():
        dst, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    os.replace(path, dst)
    return dst


def load_work_checkpoint(path: str | Path, mmap: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """A work checkpoint to resume from: (state, None), or (None, None) when there
    is none, or (None, note) when it was unreadable and has been moved aside; the
    note is one line naming where it went."""
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        state = load_checkpoint(path, map_location="cpu", mmap=mmap)
        missing = [k for k in WORK_KEYS if k not in state]
        if missing:
            raise UnreadableCheckpoint(path, f"it lacks {', '.join(missing[:3])}")
    except UnreadableCheckpoint as e:
        dst = move_aside(path)
        return None, f"work checkpoint {path.name} unreadable ({e.reason}): moved aside to {dst}; training from scratch"
    return state, None


def model_from_checkpoint(state: dict[str, Any], which: str = "model") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model (`which` = "model" for the last weights, "best_model" for the best)."""
    cfg = ModelConfig.model_validate(state["model_config"])
    model = build_model(cfg)
    model.load_state_dict(state.get(which) or state["model"])
    model.eval()
    return model, cfg


def remove_partial_writes(path: str | Path) -> list[Path]:
    """Delete what a killed writer of `path` left: `save_checkpoint`'s temporaries
    (`.<name>.*.tmp` beside it). Only for a caller that alone writes `path` now
    (e.g. under its slot lock): a live writer's temporary would go too."""
    path = Path(path)
    gone = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)
        gone.append(tmp)
    return gone
