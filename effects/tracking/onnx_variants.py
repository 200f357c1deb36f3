"""Variants of a trained model for the edge: ONNX fp32 and ONNX int8.

A variant is the whole predictor in one ONNX graph: raw samples in (uint8 pixels or
float table rows, exactly what `Predictor.check` accepts), the preprocessing (cast,
scale, flatten for the MLP) inside the graph, and three outputs:

    logits         (N, K) float32
    probabilities  (N, K) float32  softmax of the logits
    label          (N,)   int64    argmax

or, for a regression model (`Preprocessing.regression`), two:

    value          (N,)   float32  the prediction in the target's units
                                   (output * target_std + target_mean, in the graph)
    output         (N, 1) float32  the model's standardised output

so a stock ONNX Runtime session (or MLflow's `onnx` flavor) answers like the
PyTorch predictor from raw samples, with no Lepton code.

A model the exporter cannot capture (data-dependent Python control flow, an op with
no ONNX translation) raises `ExportRefused`, whose message is one line: the
exporter's own first error line, for the variant's refusal.

The int8 variant is ONNX Runtime's static quantisation (QDQ format, per-channel int8
weights, uint8 activations) calibrated on raw samples of the training split:
dynamic quantisation covers Linear layers only and would leave the convolutions in
fp32. `OnnxPredictor` serves either variant through the same interface as
`Predictor` (`lepton_core.predictor.BasePredictor`), so the server and the
evaluation take it unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lepton_core.errors import InputError, LeptonError
from lepton_core.models import ModelKind
from lepton_core.predictor import BasePredictor, Pass, Predictor, Preprocessing, model_input

VARIANTS: tuple[str, ...] = ("onnx", "int8")
OUTPUTS: tuple[str, ...] = ("logits", "probabilities", "label")
REGRESSION_OUTPUTS: tuple[str, ...] = ("value", "output")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportRefused(LeptonError):
    """The ONNX exporter cannot export this model; the message is its first error line."""


def outputs_of(pre: Preprocessing) -> tuple[str, ...]:
    """The graph's output names for a model of this preprocessing."""
    return REGRESSION_OUTPUTS if pre.regression else OUTPUTS


class _RawModel(nn.Module):
    """The predictor as one module: raw samples -> (logits, probabilities, label), or
    for regression (value in target units, standardised output)."""

    def __init__(self, predictor: Predictor):
        super().__init__()
        pre = predictor.preprocessing
        self.model = predictor.model
        self.scale = float(pre.scale)
        self.flatten = predictor.model_config.kind == "mlp"
        self.regression = pre.regression
        self.target_mean = float(pre.target_mean)
        self.target_std = float(pre.target_std)

    def forward(self, x: torch.Tensor):  # (N, *input_shape) raw dtype
        t = x.to(torch.float32)
        if self.scale != 1.0:
            t = t * self.scale
        if self.flatten:
            t = t.flatten(1)
        z = self.model(t)
        if self.regression:
            return z[:, 0] * self.target_std + self.target_mean, z
        return z, torch.softmax(z, 1), z.argmax(1)


def export_error_line(e: BaseException) -> str:
    """The exporter's first error line: the innermost cause's class and first line
    (torch wraps it in a page of advice whose first line names only the step)."""
    root = e
    seen = {id(root)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    first = next((ln.strip() for ln in _ANSI.sub("", str(root)).splitlines() if ln.strip()), "")
    line = f"{type(root).__name__}: {first}" if first else type(root).__name__
    return line[:400]


def export_onnx(predictor: Predictor, path: str | Path, example: np.ndarray) -> Path:
    """The predictor as an ONNX fp32 graph (torch's dynamo exporter, dynamic batch).
    `example`: a few raw samples (N >= 2), as `Predictor.check` returns them. A model
    the exporter refuses raises `ExportRefused` (one line)."""
    path = Path(path)
    raw = torch.from_numpy(np.ascontiguousarray(predictor.check(example)[:4]))
    if len(raw) < 2:
        raise InputError("export needs at least 2 example samples")
    module = _RawModel(predictor).cpu().eval()
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module,
                (raw,),
                dynamo=True,
                input_names=["x"],
                output_names=list(outputs_of(predictor.preprocessing)),
                dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001  (any exporter failure is the model's refusal, in one line)
        raise ExportRefused(export_error_line(e)) from e
    return _save(program, path, predictor)


def onnx_runner(predictor: Predictor, threads: int | None = None) -> Pass | None:
    """The predictor's network through ONNX Runtime on the CPU, for the model server
    (`Predictor.serve_through` checks it against the eager model before it serves):
    model input in, logits out, as the network itself. On the small passes of a server
    ONNX Runtime spends a fraction of TorchScript's time around the arithmetic, and it
    lets go of the interpreter lock for the whole pass. Exported by torch's TorchScript-
    based exporter, in memory (a fraction of a second, where the dynamo exporter a variant
    uses takes seconds, at every load and hot swap); None when it refuses the model, when
    this torch no longer has it, or when ONNX Runtime cannot load what it exported.
    `threads`: ONNX Runtime's intra-op threads, which do not spin between passes."""
    import onnxruntime as ort

    shape = tuple(predictor.model_config.input_shape)
    buf = io.BytesIO()
    try:
        with _quiet_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notice that it is the older one
            torch.onnx.export(
                predictor.model.eval(),
                (torch.rand((2, *shape)),),
                buf,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to a file object too
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the server then compiles it with TorchScript, or runs it eagerly
        return None

    def run(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": t.numpy()})[0])

    return run


# the exporter announces every missing optional op set, and torch.export logs (and
# prints to stderr) the partial graph of a model it cannot capture: the refusal's one
# line says what went wrong
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            # torch's own deprecation notices, not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _save(program, path: Path, predictor: Predictor) -> Path:
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
    checks them (the graph does the rest), `forward` gives logits (regression: the
    (N, 1) standardised output, which `values` turns into target units as
    `Predictor` does)."""

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
        if pre is None:
            raise InputError("not a Lepton ONNX variant (no preprocessing metadata)")
        self._output = outputs_of(pre)[1] if pre.regression else "logits"
        if self._output not in names:
            raise InputError(f"not a Lepton ONNX variant (no `{self._output}` output)")
        self.preprocessing = pre
        self._input = self.session.get_inputs()[0].name
        # the graph's metadata holds the `ModelConfig.kind` it was exported from
        # (`_set_metadata`); `ModelConfig` validates it where it is used
        self._kind = cast(ModelKind, kind or ("cnn" if self.preprocessing.kind == "image" else "mlp"))

    def to_input(self, x: Any) -> torch.Tensor:
        """Checked raw samples (the graph scales them itself)."""
        return torch.from_numpy(np.ascontiguousarray(self.check(x)))

    def checked_input(self, raw: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(raw)
        return torch.from_numpy(x if x.flags.writeable else x.copy())  # a .npy body is read in place

    def log_input(self, t: torch.Tensor) -> np.ndarray:
        """What the monitor's features read: the same scaled input as `Predictor`'s."""
        from lepton_core.models import ModelConfig

        pre = self.preprocessing
        shape = pre.input_shape if self._kind == "cnn" else (int(np.prod(pre.input_shape)),)
        cfg = ModelConfig(kind=self._kind, input_shape=shape, n_classes=self._width)
        return model_input(t.numpy(), pre, cfg).numpy()

    @property
    def _width(self) -> int:
        return 1 if self.regression else len(self.classes)

    def forward(self, t: torch.Tensor) -> np.ndarray:
        x = t.numpy()
        if len(x) == 0:
            return np.zeros((0, self._width), np.float32)
        return self.session.run([self._output], {self._input: x})[0].astype(np.float32, copy=False)


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
