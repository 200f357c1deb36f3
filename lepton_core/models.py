"""Models: a small CNN for images of any size, a fast CIFAR-shaped CNN, and an MLP
for tables.

All take float32 input: images (B, C, H, W) scaled to [0, 1], tables (B, F) raw
(the MLP standardises with buffers fitted on the training split), and return
logits (B, n_classes).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

ModelKind = Literal["cnn", "mlp", "fastcnn", "custom"]


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model from a checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ModelKind
    input_shape: tuple[int, ...]  # (C, H, W) or (F,)
    n_classes: int  # the model's outputs: logits per class, or one value per target (regression)
    width: int = 32
    depth: int = 2
    dropout: float = 0.1
    # kind "custom", the team's own model (lepton_core.usermodel): its class path, the
    # init_args with the placeholders filled in, its extra requirements and its code
    class_path: str | None = None
    init_args: dict[str, Any] | None = None
    requirements: tuple[str, ...] = ()
    code: dict[str, str] | None = None  # {"my_models/__init__.py": source}


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
        logits: torch.Tensor = self.head(self.features(x))
        return logits


class FastCNN(nn.Module):
    """A fast network for CIFAR-shaped images (3x32x32; any C, H, W >= 8 works),
    after the ideas airbench published (Keller Jordan, 2024): a frozen first layer that
    whitens 2x2 patches (fitted on the training images: `fit_whitening`), then three
    blocks of [conv3x3-BN-GELU, max-pool 2, conv3x3-BN-GELU] with no residual
    connections, global max pooling and a linear head scaled by 1/9. Widths are
    (2w, 8w, 8w) for `width` w: 64, 256, 256 at the default 32."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c, h, w = cfg.input_shape
        k = 2 * c * 4  # every eigenvector of the 2x2-patch covariance, and its negative
        self.whiten = nn.Conv2d(c, k, kernel_size=2, bias=True)
        self.whiten.requires_grad_(False)
        widths = (2 * cfg.width, 8 * cfg.width, 8 * cfg.width)
        layers: list[nn.Module] = [nn.GELU()]
        ch_in = k
        for ch in widths:
            layers += [
                nn.Conv2d(ch_in, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                nn.GELU(),
                nn.MaxPool2d(2),
                nn.Conv2d(ch, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                nn.GELU(),
            ]
            ch_in = ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch_in, cfg.n_classes, bias=False)

    def fit_statistics(self, x_train: torch.Tensor) -> None:
        """The training loop's hook: fit the whitening layer on the training images."""
        self.fit_whitening(x_train)

    @torch.no_grad()
    def fit_whitening(self, x: torch.Tensor, eps: float = 5e-4, max_images: int = 5000) -> None:
        """Set the frozen first layer from the training images' 2x2 patches (B, C, H, W)."""
        x = x[:max_images].float()
        patches = x.unfold(2, 2, 1).unfold(3, 2, 1)  # (B, C, H-1, W-1, 2, 2)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * 4).double()
        mean = patches.mean(0)
        cov = torch.cov((patches - mean).T)
        eigval, eigvec = torch.linalg.eigh(cov)
        w = eigvec.T / torch.sqrt(eigval.clamp_min(0) + eps)[:, None]  # (C*4, C*4): rows whiten
        w = torch.cat([w, -w])  # (2*C*4, C*4)
        self.whiten.weight.copy_(w.reshape(-1, x.shape[1], 2, 2).float())
        assert self.whiten.bias is not None  # built with bias=True
        self.whiten.bias.copy_(-(w @ mean).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        z: torch.Tensor = self.features(self.whiten(x))  # (B, 8w, H', W')
        logits: torch.Tensor = self.head(z.amax(dim=(2, 3)))
        return logits / 9


class MLP(nn.Module):
    mean: torch.Tensor  # (F,) buffers: the training split's feature scaler
    std: torch.Tensor

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

    def fit_statistics(self, x_train: torch.Tensor) -> None:
        """The training loop's hook: fit the input scaler on the training rows."""
        self.fit_scaler(x_train)

    def fit_scaler(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, K)
        logits: torch.Tensor = self.net((x - self.mean) / self.std)
        return logits


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.kind == "custom":
        if not cfg.class_path:
            raise ValueError("a custom model config needs a class_path")
        from lepton_core import usermodel

        model = usermodel.build(
            cfg.class_path, dict(cfg.init_args or {}), usermodel.CodeBundle(cfg.code or {}), list(cfg.requirements)
        )
        usermodel.check_contract(model, cfg.class_path.rsplit(".", 1)[-1], cfg.input_shape, cfg.n_classes)
        return model
    if cfg.kind in ("cnn", "fastcnn"):
        if len(cfg.input_shape) != 3:
            raise ValueError(f"the CNN needs (C, H, W) input, got {cfg.input_shape}")
        if cfg.kind == "fastcnn" and min(cfg.input_shape[1:]) < 9:  # three 2x poolings after a 2x2 conv
            raise ValueError(f"fastcnn needs images of at least 9x9, got {cfg.input_shape}")
        return SmallCNN(cfg) if cfg.kind == "cnn" else FastCNN(cfg)
    if len(cfg.input_shape) != 1:
        raise ValueError(f"the MLP needs (F,) input, got {cfg.input_shape}")
    return MLP(cfg)


def outputs_of(meta: dict[str, Any]) -> int:
    """The model's outputs for a prepared dataset: one logit per class, or one value
    per target (regression)."""
    if meta.get("task") == "regression":
        return int(meta.get("n_outputs", 1))
    return int(meta["n_classes"])


def model_config_for(
    meta: dict[str, Any],
    choice: Any,
    width: int,
    depth: int,
    dropout: float,
    code: dict[str, str] | None = None,
    requirements: tuple[str, ...] = (),
) -> ModelConfig:
    """Pick the model for a prepared dataset's meta (`choice` = auto | cnn | mlp | fastcnn,
    or a ModelSpec: the team's class path and init_args, with `code` its source files)."""
    shape = tuple(int(s) for s in meta["input_shape"])
    if getattr(choice, "class_path", None):
        from lepton_core.usermodel import fill_placeholders

        n_outputs = outputs_of(meta)
        return ModelConfig(
            kind="custom",
            input_shape=shape,
            n_classes=n_outputs,
            class_path=choice.class_path,
            init_args=fill_placeholders(dict(choice.init_args), shape, n_outputs),
            requirements=tuple(requirements),
            code=dict(code or {}) or None,
        )
    kind: ModelKind
    if choice == "auto":
        kind = "cnn" if meta["kind"] == "image" and len(shape) == 3 else "mlp"
    else:
        kind = choice
    if kind == "mlp" and len(shape) > 1:
        shape = (int(torch.tensor(shape).prod()),)
    return ModelConfig(
        kind=kind,
        input_shape=shape,
        n_classes=outputs_of(meta),
        width=width,
        depth=depth,
        dropout=dropout,
    )
