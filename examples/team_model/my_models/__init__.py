"""A team's own image model, as Lepton trains, ships and serves it: a small residual
network with its own constructor arguments. Lepton fills in `in_channels` and
`n_outputs` from the prepared data (`${in_channels}`, `${n_outputs}` in params)."""

from __future__ import annotations

import torch
from torch import nn

from my_models.blocks import ResidualBlock


class TinyResNet(nn.Module):
    """(B, C, H, W) float32 in [0, 1] -> (B, n_outputs) logits."""

    def __init__(self, in_channels: int = 1, n_outputs: int = 10, width: int = 16, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(torch.relu(self.stem(x))))
