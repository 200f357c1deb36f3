"""Augmentation on the device, a whole batch at a time (no per-image Python).

- Random translation: each image shifted by up to `translate` pixels in each axis,
  the border filled by reflection (a random crop of the reflect-padded image).
- Alternating flips (airbench's idea): each training image gets a random flip bit
  once; in odd epochs it is flipped the other way. Every image is seen both ways
  across two epochs, with less variance than independent coin flips.

The random numbers come from a generator seeded by (seed, epoch), on the data's
device, so an epoch augments the same way after a resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def flip_bits(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """(N,) bool: the per-image flip of even epochs."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand(n, generator=g) < 0.5).to(device)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def augment_batch(
    x: torch.Tensor, idx: torch.Tensor, epoch: int, flips: torch.Tensor | None, translate: int, gen: torch.Generator
) -> torch.Tensor:
    """x: (B, C, H, W) images of the training set's rows `idx` (B,)."""
    if flips is not None:
        flip = flips[idx] ^ bool(epoch % 2)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    if translate > 0:
        b, _, h, w = x.shape
        t = translate
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        dy = torch.randint(0, 2 * t + 1, (b,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * t + 1, (b,), device=x.device, generator=gen)
        rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (B, H)
        cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None]
        # (B, C, H, W): gather rows, then columns, per image
        x = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x.contiguous()
    return x


def should_augment(setting: str, x_train: torch.Tensor, cuda: bool) -> bool:
    """`train.augment`: on, off, or auto (colour images on CUDA)."""
    if setting == "on":
        return x_train.ndim == 4
    if setting == "off":
        return False
    return cuda and x_train.ndim == 4 and x_train.shape[1] == 3
