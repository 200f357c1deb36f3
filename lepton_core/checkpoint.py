"""Checkpoints that rebuild their own model.

A checkpoint is a dict of plain values and tensors (loadable with
`weights_only=True`): model config, weights, optimizer and scheduler state, epoch,
params, early-stopping state and RNG states. Written to a temp file in the same
folder and `os.replace`d, so a crash leaves the old checkpoint or the new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lepton_core.fileio import atomic_write
from lepton_core.models import ModelConfig, build_model


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(state: dict[str, Any], which: str = "model") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model (`which` = "model" for the last weights, "best_model" for the best)."""
    cfg = ModelConfig.model_validate(state["model_config"])
    model = build_model(cfg)
    model.load_state_dict(state.get(which) or state["model"])
    model.eval()
    return model, cfg
