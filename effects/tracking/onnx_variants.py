"""Variants of a trained model for the edge: ONNX fp32 and ONNX int8.

A variant is the whole predictor in one ONNX graph: raw samples in (uint8 pixels or
float table rows, exactly what `Predictor.check` accepts), the preprocessing (cast,
scale, flatten for the MLP) inside the graph, and three outputs:

    logits         (N, K) float32
    probabilities  (N, K) float32  softmax of the logits
    label          (N,)   int64    argmax

so a stock ONNX Runtime session (or MLflow's `onnx` flavor) answers like the
PyTorch predictor from raw samples, with no Lepton code.

The int8 variant is ONNX Runtime's static quantisation (QDQ format, per-channel int8
weights, uint8 activations) calibrated on raw samples of the training split:
dynamic quantisation covers Linear layers only and would leave the convolutions in
fp32. `OnnxPredictor` serves either variant through the same interface as
`Predictor` (`lepton_core.predictor.BasePredictor`), so the server and the
evaluation take it unchanged.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lepton_core.errors import InputError
from lepton_core.models import ModelKind
from lepton_core.predictor import BasePredictor, Predictor, Preprocessing, model_input

VARIANTS: tuple[str, ...] = ("onnx", "int8")
OUTPUTS: tuple[str, ...] = ("logits", "probabilities", "label")


class _RawModel(nn.Module):
    """The predictor as one module: raw samples -> (logits, probabilities, label)."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        self.model = predictor.model
        self.scale = float(predictor.preprocessing.scale)
        self.flatten = predictor.model_config.kind == "mlp"

    def forward(self, x: torch.Tensor):  # (N, *input_shape) raw dtype
        t = x.to(torch.float32)
        if self.scale != 1.0:
            t = t * self.scale
        if self.flatten:
            t = t.flatten(1)
        z = self.model(t)
        return z, torch.softmax(z, 1), z.argmax(1)


def export_onnx(predictor: Predictor, path: str | Path, example: np.ndarray) -> Path:
    """The predictor as an ONNX fp32 graph (torch's dynamo exporter, dynamic batch).
    `example`: a few raw samples (N >= 2), as `Predictor.check` returns them."""
    path = Path(path)
    raw = torch.from_numpy(np.ascontiguousarray(predictor.check(example)[:4]))
    if len(raw) < 2:
        raise InputError("export needs at least 2 example samples")
    module = _RawModel(predictor).cpu().eval()
    # the exporter announces every missing optional op set on the root logger
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings():  # torch's own deprecation notices, not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return _export(module, raw, path, predictor, quiet, level)


def _export(module, raw, path: Path, predictor: Predictor, quiet, level) -> Path:
    try:
        program = torch.onnx.export(
            module,
            (raw,),
            dynamo=True,
            input_names=["x"],
            output_names=list(OUTPUTS),
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
            verbose=False,
        )
    finally:
        quiet.setLevel(level)
    assert program is not None  # the dynamo exporter always returns its program (None is the legacy exporter's)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        program.save(str(tmp))
        _set_metadata(tmp, predictor.preprocessing, predictor.model_config.kind)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _set_metadata(path: Path, pre: Preprocessing, model_kind: str) -> None:
    """The preprocessing and model kind in the graph's metadata: the file alone is
    enough to serve it (and quantisation keeps metadata)."""
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in {"lepton.preprocessing": pre.model_dump_json(), "lepton.model_kind": model_kind}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))


def metadata(session) -> tuple[Preprocessing | None, str | None]:
    meta = session.get_modelmeta().custom_metadata_map
    pre = meta.get("lepton.preprocessing")
    return (Preprocessing.model_validate_json(pre) if pre else None), meta.get("lepton.model_kind")


def quantize_int8(fp32_path: str | Path, path: str | Path, calibration: np.ndarray, batch: int = 64) -> Path:
    """Static int8 (QDQ) quantisation of an exported graph, calibrated on raw samples."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise InputError("int8 calibration needs samples of the training split")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter({"x": calibration[i : i + batch]} for i in range(0, len(calibration), batch))

        def get_next(self):
            return next(self._it, None)

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="lepton-int8-") as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        out = Path(d) / "int8.onnx"
        quantize_static(
            str(pre),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # the layers with weights; the softmax and argmax at the end stay
            # float (a uint8 softmax would answer in steps of 1/255)
            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
        )
        os.replace(out, path)
    return path


class OnnxPredictor(BasePredictor):
    """An ONNX variant with the `Predictor` contract: raw samples in; `to_input`
    checks them (the graph does the rest), `forward` gives logits."""

    def __init__(
        self, model: str | Path | bytes, preprocessing: Preprocessing | None = None, threads: int | None = None
    ):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        stored, kind = metadata(self.session)
        pre = preprocessing or stored
        if "logits" not in names or pre is None:
            raise InputError("not a Lepton ONNX variant (no `logits` output or no preprocessing metadata)")
        self.preprocessing = pre
        self._input = self.session.get_inputs()[0].name
        # the graph's metadata holds the `ModelConfig.kind` it was exported from
        # (`_set_metadata`); `ModelConfig` validates it where it is used
        self._kind = cast(ModelKind, kind or ("cnn" if self.preprocessing.kind == "image" else "mlp"))

    def to_input(self, x: Any) -> torch.Tensor:
        """Checked raw samples (the graph scales them itself)."""
        return torch.from_numpy(np.ascontiguousarray(self.check(x)))

    def log_input(self, t: torch.Tensor) -> np.ndarray:
        """What the monitor's features read: the same scaled input as `Predictor`'s."""
        from lepton_core.models import ModelConfig

        pre = self.preprocessing
        shape = pre.input_shape if self._kind == "cnn" else (int(np.prod(pre.input_shape)),)
        cfg = ModelConfig(kind=self._kind, input_shape=shape, n_classes=len(pre.classes))
        return model_input(t.numpy(), pre, cfg).numpy()

    def forward(self, t: torch.Tensor) -> np.ndarray:
        x = t.numpy()
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return self.session.run(["logits"], {self._input: x})[0].astype(np.float32, copy=False)


@dataclass(frozen=True)
class Latency:
    batch: int
    ms: float  # median milliseconds per call


def latency(predict_logits, sample: np.ndarray, batch: int, repeats: int = 50, warmup: int = 5) -> Latency:
    """Median CPU time of one call on `batch` raw samples (checked input included)."""
    x = np.concatenate([sample] * (batch // max(1, len(sample)) + 1))[:batch]
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        predict_logits(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return Latency(batch, float(np.median(times) * 1000))


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")
