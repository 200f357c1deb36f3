"""A deliberately lossy int8 quantiser for the refusal test: the real static
quantisation, then every int8 weight tensor zeroed (the graph still runs, and
answers one class). Injected into a real `lepton optimize` run:

    python -c "import tests.platform.lossy_int8 as l; l.install(); from lepton.cli import main; main()" optimize ...
"""

from __future__ import annotations

from pathlib import Path


def lossy_quantize_int8(fp32_path, path, calibration, batch: int = 64) -> Path:
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    from effects.tracking.onnx_variants import quantize_int8

    out = quantize_int8(fp32_path, path, calibration, batch)
    m = onnx.load(str(out))
    for i, init in enumerate(m.graph.initializer):
        if init.data_type == TensorProto.INT8:
            zero = np.zeros_like(numpy_helper.to_array(init))
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(zero, init.name))
    onnx.save(m, str(out))
    return Path(out)


def install() -> None:
    import effects.tracking.variants

    effects.tracking.variants.quantize_int8 = lossy_quantize_int8
