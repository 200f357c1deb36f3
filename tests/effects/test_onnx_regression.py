"""ONNX variants of regression models, and models the exporter refuses, at the
effects level (no registry): the graph answers in the target's units and the
`OnnxPredictor` gives the same values as the PyTorch predictor; a model with
data-dependent control flow is refused in one line, with nothing printed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lepton_core.models import MLP, ModelConfig
from lepton_core.predictor import Predictor, Preprocessing

F = 6
PRE = Preprocessing(
    kind="tabular",
    input_shape=(F,),
    dtype="float32",
    scale=1.0,
    classes=(),
    feature_names=tuple(f"f{i}" for i in range(F)),
    task="regression",
    target_mean=152.0,
    target_std=77.0,
)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(300, F)).astype(np.float32) * 3 + 1


@pytest.fixture(scope="module")
def regression_predictor(rows) -> Predictor:
    torch.manual_seed(0)
    cfg = ModelConfig(kind="mlp", input_shape=(F,), n_classes=1, width=16)
    model = MLP(cfg)
    model.fit_scaler(torch.from_numpy(rows))
    return Predictor(model, cfg, PRE)


@pytest.fixture(scope="module")
def exported(regression_predictor, rows, tmp_path_factory):
    from effects.tracking.onnx_variants import export_onnx

    return export_onnx(regression_predictor, tmp_path_factory.mktemp("onnx") / "model.onnx", rows[:4])


def test_the_graph_outputs_values_in_target_units_and_the_standardised_output(regression_predictor, rows, exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["value", "output"]
    value, output = session.run(None, {"x": rows[:50]})
    assert value.shape == (50,) and output.shape == (50, 1)
    want = regression_predictor.values(rows[:50])
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(output[:, 0] * PRE.target_std + PRE.target_mean, want, rtol=1e-5)
    assert abs(want.mean() - PRE.target_mean) < 5 * PRE.target_std  # target units, not standardised


def test_onnx_predictor_of_a_regression_graph_keeps_the_predictor_contract(regression_predictor, rows, exported):
    import pandas as pd

    from effects.tracking.onnx_variants import OnnxPredictor

    vp = OnnxPredictor(exported)  # the preprocessing comes from the graph's metadata
    assert vp.regression and vp.preprocessing == PRE
    want = regression_predictor.values(rows)
    got = vp.values(rows)
    assert got.dtype == np.float64 and got.shape == (len(rows),)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    p = vp.predict(pd.DataFrame(rows, columns=list(PRE.feature_names)))  # a table works too
    assert p.values is not None and len(p.labels) == 0 and p.probabilities.shape == (len(rows), 0)
    np.testing.assert_allclose(p.values, want, rtol=1e-5)
    assert vp.logits(rows[:0]).shape == (0, 1)
    assert vp.log_input(vp.to_input(rows[:3])).shape == (3, F)


class DataDependent(nn.Module):
    """A team's model whose forward branches on the data: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(F, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if z.abs().max() > 1e6:  # Python control flow on a tensor's value
            z = z.clamp(-1e6, 1e6)
        return z


def test_a_model_the_exporter_cannot_capture_is_refused_in_one_line(rows, tmp_path, capfd):
    from effects.tracking.onnx_variants import ExportRefused, export_onnx

    cfg = ModelConfig(kind="custom", input_shape=(F,), n_classes=1, class_path="team.DataDependent")
    predictor = Predictor(DataDependent(), cfg, PRE)
    np.testing.assert_allclose(predictor.values(rows[:3]).shape, (3,))  # PyTorch runs it fine
    capfd.readouterr()
    with pytest.raises(ExportRefused) as e:
        export_onnx(predictor, tmp_path / "model.onnx", rows[:4])
    line = str(e.value)
    assert "\n" not in line and "\x1b" not in line and len(line) <= 400
    assert line.startswith("GuardOnDataDependentSymNode: Could not guard on data-dependent expression"), line
    assert not (tmp_path / "model.onnx").exists() and not list(tmp_path.iterdir())
    out, err = capfd.readouterr()
    assert "GraphModule" not in out + err and "def forward" not in out + err  # no partial graph dumped


def test_export_error_line_takes_the_innermost_cause_without_colour():
    from effects.tracking.onnx_variants import export_error_line

    try:
        try:
            raise LookupError("\x1b[96maten.foo\x1b[0m has no ONNX function\nsecond line")
        except LookupError as inner:
            raise RuntimeError("Failed to convert the exported program.\nNext steps: ...") from inner
    except RuntimeError as outer:
        assert export_error_line(outer) == "LookupError: aten.foo has no ONNX function"
    assert export_error_line(ValueError("")) == "ValueError"
