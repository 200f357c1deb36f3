"""The one predictor: a trained model plus the preprocessing its training used.

Everything that turns samples as users have them into model input, and logits
into answers, lives here; evaluation, the promotion gate, the drift monitor, the
MLflow pyfunc (and the server and variants built on it) all go through it, so no
path can score a model with another model's scale.

Raw samples, as the prepared dataset stores them:
    images  (N, C, H, W) or, for one channel, (N, H, W); uint8 0..255 when the
            data was uint8 (scaled to [0, 1] here), float32 otherwise
    tables  (N, F) numbers in the training feature order, or a pandas DataFrame
            with the training feature columns (others, such as the label, ignored)
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint
from lepton_core.errors import InputError
from lepton_core.models import ModelConfig


class Preprocessing(BaseModel):
    """What a model needs to read raw samples; stored in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["image", "tabular"]
    input_shape: tuple[int, ...]  # one raw sample: (C, H, W) or (F,)
    dtype: Literal["uint8", "float32"]  # of raw samples
    scale: float  # raw * scale = model input (1/255 for uint8 images)
    classes: tuple[str, ...]
    feature_names: tuple[str, ...] = ()
    label_column: str = "label"
    # regression: the model outputs standardised targets; value = output * std + mean
    task: Literal["classification", "regression"] = "classification"
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def from_meta(cls, meta: dict[str, Any], label_column: str | None = None) -> Preprocessing:
        """From a prepared dataset's meta.json."""
        kind = meta["kind"]
        target = meta.get("target") or {}
        return cls(
            task="regression" if meta.get("task") == "regression" else "classification",
            target_mean=float(target.get("mean", 0.0)),
            target_std=float(target.get("std", 1.0)),
            kind=kind,
            input_shape=tuple(int(s) for s in meta["input_shape"]),
            dtype="uint8" if meta.get("dtype") == "uint8" else "float32",
            scale=float(meta["x_scale"]),
            classes=tuple(str(c) for c in meta["classes"]),
            feature_names=tuple(str(f) for f in meta.get("feature_names") or ()) if kind == "tabular" else (),
            label_column=label_column or meta.get("label_column") or "label",
        )

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def values(self, outputs: np.ndarray) -> np.ndarray:
        """(N, 1) standardised model outputs -> (N,) float64 values in the target's units."""
        out: np.ndarray = outputs[:, 0].astype(np.float64) * self.target_std + self.target_mean
        return out


@dataclass(frozen=True)
class Prediction:
    """Classification: labels, names and probabilities (values None). Regression:
    values, in the target's units (labels and names empty, probabilities (N, 0))."""

    labels: np.ndarray  # (N,) int64 class indices
    names: list[str]  # (N,) class names
    probabilities: np.ndarray  # (N, K) float32 softmax
    values: np.ndarray | None = None  # (N,) float64 predicted targets (regression)


def regression_prediction(values: np.ndarray) -> Prediction:
    n = len(values)
    return Prediction(np.zeros(0, np.int64), [], np.zeros((n, 0), np.float32), values)


def _raw_array(x: Any, pre: Preprocessing) -> np.ndarray:
    """Samples as users have them -> a numpy array of raw samples, or InputError."""
    if pre.kind == "tabular" and hasattr(x, "columns"):  # a pandas DataFrame
        names = list(pre.feature_names) or [str(i) for i in range(pre.n_features)]
        cols = [str(c) for c in x.columns]
        missing = [n for n in names if n not in cols]
        if missing:
            raise InputError(f"the table lacks feature columns: {', '.join(missing[:5])}")
        x = x.rename(columns=str)[names]
        try:
            table: np.ndarray = x.to_numpy(dtype=np.float64)
            return table
        except (TypeError, ValueError):
            raise InputError("feature columns must be numeric") from None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise InputError("samples must be numbers (got ragged or mixed values)")
    return arr


def check_samples(x: Any, pre: Preprocessing) -> np.ndarray:
    """Validate raw samples against the preprocessing; returns (N, *input_shape)
    in the raw dtype. Every refusal is one line naming what is wrong."""
    arr = _raw_array(x, pre)
    want = tuple(pre.input_shape)
    if pre.kind == "image" and arr.ndim == len(want) and want[0] == 1 and tuple(arr.shape[1:]) == want[1:]:
        arr = arr[:, None]  # (N, H, W) grey images -> (N, 1, H, W)
    if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
        shown = "(N, " + ", ".join(map(str, want)) + ")"
        raise InputError(f"samples of shape {tuple(arr.shape)}; the model reads {shown}")
    kind = arr.dtype.kind  # i, u: integers; f: floats (bool is b, complex c: neither)
    if kind not in "iuf":
        raise InputError(f"samples of dtype {arr.dtype}; the model reads {pre.dtype}")
    if pre.dtype == "uint8":
        if kind == "f":
            # Floats here are almost always already-scaled or differently scaled
            # pixels (scikit-learn's digits are 0..16): refuse rather than guess.
            raise InputError(f"images of dtype {arr.dtype}; the model reads uint8 pixels 0..255")
        if arr.dtype != np.uint8 and arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError("pixel values outside 0..255")
        return arr.astype(np.uint8, copy=False)
    if arr.size and kind == "f" and not np.isfinite(arr).all():
        raise InputError("samples hold NaN or infinite values")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32, copy=False)
    if out.size and not np.isfinite(out).all():  # finite above, so too big for float32
        raise InputError("samples hold a value beyond float32's range (about 3.4e38 in magnitude)")
    return out


def model_input(x_raw: np.ndarray, pre: Preprocessing, model_config: ModelConfig) -> torch.Tensor:
    """Checked raw samples -> float32 model input: images scaled, tables flattened
    for the MLP (which standardises them itself)."""
    x = np.ascontiguousarray(x_raw)
    if not x.flags.writeable:  # a request's .npy body, read in place: torch takes writable arrays only
        x = x.copy()
    t = torch.from_numpy(x).float()
    if pre.scale != 1.0:
        t = t * pre.scale
    if model_config.kind == "mlp":
        t = t.flatten(1)  # (N, C, H, W) -> (N, C*H*W); also for N = 0
    return t


# the model kinds `Predictor.compile_for_serving` compiles: Lepton's own networks, which
# do not branch on their input
TRACED_KINDS = ("cnn", "fastcnn", "mlp")
# how far a compiled module's logits may be from the eager model's (folded BatchNorm and
# oneDNN's kernels round differently, far below this on Lepton's networks)
LOGITS_TOLERANCE: dict[str, Any] = {"rtol": 1e-5, "atol": 1e-5}
WARM_S = 1.0  # `compile_for_serving` runs the batch sizes within this many seconds
# a forward pass of a compiled network: model input in, logits out (a TorchScript module,
# or another runtime's copy of the network)
Pass = Callable[[torch.Tensor], torch.Tensor]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    out: np.ndarray = (p / p.sum(1, keepdims=True)).astype(np.float32)
    return out


class BasePredictor(ABC):
    """The one interface every servable model offers, whatever runs it (PyTorch here,
    ONNX Runtime in effects.tracking.onnx_variants): raw samples in, checked against
    the training preprocessing; `to_input` makes the model input, `forward` gives
    (N, K) float32 logits, `predict` labels, class names and probabilities. The
    server, the evaluation and the gate use only these."""

    preprocessing: Preprocessing

    @property
    def classes(self) -> list[str]:
        return list(self.preprocessing.classes)

    def check(self, x: Any) -> np.ndarray:
        return check_samples(x, self.preprocessing)

    @abstractmethod
    def to_input(self, x: Any) -> torch.Tensor:
        """Raw samples -> the model's input on the CPU (checked)."""

    def checked_input(self, raw: np.ndarray) -> torch.Tensor:
        """The model's input for samples `check` has already returned (the model server
        checks each request once, then scores the checked samples in a batch)."""
        return self.to_input(raw)

    @abstractmethod
    def log_input(self, t: torch.Tensor) -> np.ndarray:
        """What the monitor's features read for input made by `to_input`: images in
        [0, 1], tables raw."""

    @abstractmethod
    def forward(self, t: torch.Tensor) -> np.ndarray:
        """(N, K) float32 logits (regression: (N, 1) standardised values) for input
        already made by `to_input`."""

    @property
    def regression(self) -> bool:
        return self.preprocessing.regression

    def logits(self, x: Any) -> np.ndarray:
        """(N, K) float32 logits (regression: standardised outputs) for raw samples."""
        return self.forward(self.to_input(x))

    def values(self, x: Any) -> np.ndarray:
        """(N,) float64 predicted targets for raw samples (regression)."""
        return self.preprocessing.values(self.logits(x))

    def predict(self, x: Any) -> Prediction:
        if self.regression:
            return regression_prediction(self.values(x))
        p = softmax(self.logits(x))
        labels = p.argmax(1).astype(np.int64)
        return Prediction(labels, [self.preprocessing.classes[i] for i in labels], p)


class Predictor(BasePredictor):
    """A PyTorch model with its preprocessing."""

    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
        batch_size: int = 1024,
    ):
        if preprocessing.regression:
            if model_config.n_classes != 1:
                raise InputError(f"a regression model has one output, not {model_config.n_classes}")
        elif len(preprocessing.classes) != model_config.n_classes:
            raise InputError(
                f"{len(preprocessing.classes)} class names for a model of {model_config.n_classes} classes"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_config = model_config
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        # `compile_for_serving` or `serve_through`: what runs a pass of one instance and of more
        self._compiled: tuple[Pass, Pass] | None = None

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | dict[str, Any], device: str | torch.device = "cpu", which: str = "model"
    ) -> Predictor:
        """From a checkpoint file or its loaded dict (loaded with weights_only)."""
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        model, cfg = model_from_checkpoint(state, which)
        return cls(model, cfg, preprocessing_of(state), device)

    def to_input(self, x: Any) -> torch.Tensor:
        """Raw samples -> float32 model input on the CPU (checked)."""
        return model_input(self.check(x), self.preprocessing, self.model_config)

    def checked_input(self, raw: np.ndarray) -> torch.Tensor:
        return model_input(raw, self.preprocessing, self.model_config)

    def log_input(self, t: torch.Tensor) -> np.ndarray:
        return t.numpy()

    def forward(self, t: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            if len(t) <= self.batch_size:  # one pass (a served batch): no list, no cat
                return self._pass(t).numpy() if len(t) else self._no_logits()
            out = [self._pass(t[i : i + self.batch_size]) for i in range(0, len(t), self.batch_size)]
        return torch.cat(out).numpy()

    def _pass(self, t: torch.Tensor) -> torch.Tensor:
        """One forward pass on the CPU's logits: compiled (`compile_for_serving`, one
        module for one instance and one for more), else the model itself."""
        run = self.model if self._compiled is None else self._compiled[0 if len(t) == 1 else 1]
        out: torch.Tensor = run(t.to(self.device))
        return out.float().cpu()

    def _no_logits(self) -> np.ndarray:
        return np.zeros((0, self.model_config.n_classes), np.float32)

    @property
    def compilable(self) -> bool:
        """Whether the network may run through a trace of it (TorchScript, an ONNX export):
        Lepton's own networks on the CPU, which do not branch on their input. A team's own
        model may, and a trace would not follow; on CUDA, TorchScript may fuse kernels on
        later calls, which no check here would see."""
        return self.model_config.kind in TRACED_KINDS and self.device.type == "cpu"

    def compile_for_serving(self, max_batch: int = 64, warm_s: float = WARM_S) -> bool:
        """Run Lepton's own networks (cnn, fastcnn, mlp) through TorchScript: a trace of
        the model, frozen (BatchNorm folded into the convolutions' weights) for a pass of
        one instance, and also put on oneDNN's kernels with their weights prepacked
        (`torch.jit.optimize_for_inference`) for a pass of more, where those kernels are
        the quicker ones. Both skip Python's dispatch of each layer, most of a small
        pass's time. Kept only as `_adopt` checks them (the eager model's logits within
        LOGITS_TOLERANCE, before and after the warm-up); a team's own model and a model
        on CUDA stay eager (`compilable`). True when compiled. The model itself is left
        as it was (explanations use it)."""
        self._compiled = None  # eager unless compiled below
        if not self.compilable:
            return False
        import warnings

        gen = torch.Generator().manual_seed(0)
        shape = tuple(self.model_config.input_shape)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's notices about its own future
                traced = torch.jit.trace(self.model, torch.rand((3, *shape), generator=gen))  # type: ignore[no-untyped-call]
                one = torch.jit.freeze(traced.eval())
                many = torch.jit.optimize_for_inference(traced)
                return self._adopt(one, many, gen, max_batch, warm_s)
        except Exception:  # noqa: BLE001 - whatever TorchScript cannot compile runs eagerly
            return False

    def serve_through(self, run: Pass, max_batch: int = 64, warm_s: float = WARM_S) -> bool:
        """Run every forward pass through `run` (model input in, logits out): the same
        network in another runtime, made outside this package (ONNX Runtime's copy of
        it, `effects.tracking.onnx_variants.onnx_runner`). Kept only as `_adopt` checks
        it; True when kept, else the model runs as it did."""
        if not self.compilable:
            return False
        try:
            with torch.no_grad():
                return self._adopt(run, run, torch.Generator().manual_seed(0), max_batch, warm_s)
        except Exception:  # noqa: BLE001 - a runtime that fails on a pass is not kept
            return False

    def _adopt(self, one: Pass, many: Pass, gen: torch.Generator, max_batch: int, warm_s: float) -> bool:
        """Take `one` for passes of one instance and `many` for passes of more when they
        give the eager model's logits within LOGITS_TOLERANCE, on samples of one, two and
        five instances, before the warm-up and after it (another runtime folds BatchNorm
        and picks other kernels, so an instance's answer may differ in the last digits
        between a pass alone and a pass in a batch). The warm-up runs each batch size up
        to `max_batch` twice (within `warm_s` seconds), so that the first requests do not
        pay for a runtime's first calls of a shape, and the check after it sees the plans
        the runtime settled on."""
        if not self._agrees(one, many, gen):
            return False
        shape = tuple(self.model_config.input_shape)
        deadline = time.monotonic() + warm_s
        for n in range(1, max_batch + 1):
            if time.monotonic() > deadline:
                break
            x = torch.rand((n, *shape), generator=gen)
            for _ in range(2):
                (one if n == 1 else many)(x)
        # and again once the runtime has settled on its plan for each (after a few calls)
        if not self._agrees(one, many, gen):
            return False
        self._compiled = (one, many)
        return True

    def _agrees(self, one: Pass, many: Pass, gen: torch.Generator) -> bool:
        """Whether `one` on one instance and `many` on one, two and five give the eager
        model's logits within LOGITS_TOLERANCE."""
        shape = tuple(self.model_config.input_shape)
        for n, run in ((1, one), (1, many), (2, many), (5, many)):
            x = torch.rand((n, *shape), generator=gen)
            ref, got = self.model(x), run(x)
            if got.shape != ref.shape or not torch.allclose(got, ref, **LOGITS_TOLERANCE):
                return False
        return True


def preprocessing_of(state: dict[str, Any]) -> Preprocessing:
    """The checkpoint's preprocessing (older checkpoints: derived from their meta)."""
    if "preprocessing" in state:
        return Preprocessing.model_validate_json(state["preprocessing"])
    if "meta_json" in state:
        return Preprocessing.from_meta(json.loads(state["meta_json"]))
    raise InputError("the checkpoint carries no preprocessing (not a Lepton model checkpoint)")
