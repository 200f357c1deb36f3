"""Models: a small CNN for images of any size and an MLP for tables.

Both take float32 input: images (B, C, H, W) scaled to [0, 1], tables (B, F) raw
(the MLP standardises with buffers fitted on the training split), and return
logits (B, n_classes).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model from a checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["cnn", "mlp"]
    input_shape: tuple[int, ...]  # (C, H, W) or (F,)
    n_classes: int
    width: int = 32
    depth: int = 2
    dropout: float = 0.1


class SmallCNN(nn.Module):
    """Conv blocks (depth x [conv3x3-BN-ReLU]) halving H, W until they are <= 4,
    then global average pooling: the same code sizes itself for 8x8, 28x28 or 32x32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, h, w = cfg.input_shape
        layers: list[nn.Module] = []
        ch_in, ch, size = c, cfg.width, min(h, w)
        while True:
            for _ in range(cfg.depth):
                layers += [nn.Conv2d(ch_in, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU()]
                ch_in = ch
            if size <= 4:
                break
            layers.append(nn.MaxPool2d(2))
            size //= 2
            ch = min(ch * 2, 8 * cfg.width)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(ch_in, cfg.n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        (f,) = cfg.input_shape
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        layers: list[nn.Module] = []
        d_in = f
        for _ in range(cfg.depth):
            layers += [nn.Linear(d_in, cfg.width), nn.GELU(), nn.Dropout(cfg.dropout)]
            d_in = cfg.width
        layers.append(nn.Linear(d_in, cfg.n_classes))
        self.net = nn.Sequential(*layers)

    def fit_scaler(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, K)
        return self.net((x - self.mean) / self.std)


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.kind == "cnn":
        if len(cfg.input_shape) != 3:
            raise ValueError(f"the CNN needs (C, H, W) input, got {cfg.input_shape}")
        return SmallCNN(cfg)
    if len(cfg.input_shape) != 1:
        raise ValueError(f"the MLP needs (F,) input, got {cfg.input_shape}")
    return MLP(cfg)


def model_config_for(meta: dict, choice: str, width: int, depth: int, dropout: float) -> ModelConfig:
    """Pick the model for a prepared dataset's meta (`choice` = auto | cnn | mlp)."""
    shape = tuple(int(s) for s in meta["input_shape"])
    kind = choice
    if choice == "auto":
        kind = "cnn" if meta["kind"] == "image" and len(shape) == 3 else "mlp"
    if kind == "mlp" and len(shape) > 1:
        shape = (int(torch.tensor(shape).prod()),)
    return ModelConfig(
        kind=kind, input_shape=shape, n_classes=int(meta["n_classes"]),
        width=width, depth=depth, dropout=dropout,
    )
