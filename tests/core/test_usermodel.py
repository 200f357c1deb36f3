"""The team's own model by class path: what may be imported, the one-line errors for
bad user code, checkpoints that rebuild from their own shipped code, and two
versions of one package side by side in one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import TrainParams, parse_params
from lepton_core.usermodel import ModelError
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "team_model" / "my_models"


@pytest.fixture(scope="module")
def digits():
    from lepton_core.data.formats import load_digits
    from lepton_core.data.prepare import prepare_dataset

    return prepare_dataset(load_digits(), val_fraction=0.15, test_fraction=0.2, seed=0)


def _package(root: Path, body: str, name: str = "team_net") -> Path:
    """A one-module package `name` in `root` whose __init__ is `body`."""
    pkg = root / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return pkg


LINEAR = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, in_features, n_outputs, bias=0.0):
            super().__init__()
            self.fc = nn.Linear(in_features, n_outputs)
            self.bias = bias

        def forward(self, x):
            return self.fc(x.flatten(1)) + self.bias
"""


def _params(class_path: str, code: list[str], epochs: int = 2, **init_args) -> TrainParams:
    return TrainParams(
        model={"class_path": class_path, "init_args": init_args},
        code=code,
        epochs=epochs,
        patience=0,
        batch_size=64,
        lr=0.01,
        device="cpu",
    )


def _train(digits, params: TrainParams, tmp_path: Path, base: Path, name: str = "model.pt"):
    from lepton_core.predictor import Preprocessing
    from lepton_core.train import save_trained_model, train_on_prepared

    pre = Preprocessing.from_meta(digits.meta)
    result = train_on_prepared(digits, params, pre, progress=False, code_base=base)
    return result, save_trained_model(result, params, pre, digits.meta, tmp_path / name)


def test_the_keys_work_from_set_and_a_params_file():
    p = parse_params(
        {"train": {"model": "auto"}},
        [
            "train.model.class_path=my_models.TinyResNet",
            "train.model.init_args.width=32",
            "train.model.init_args.n_outputs=${n_outputs}",
            "train.code=[examples/team_model/my_models]",
        ],
    )
    assert p.train.model.class_path == "my_models.TinyResNet"
    assert p.train.model.init_args == {"width": 32, "n_outputs": "${n_outputs}"}
    assert p.train.code == ["examples/team_model/my_models"]
    assert parse_params({}, ["train.model=cnn"]).train.model == "cnn"  # the built-in names unchanged
    from lepton_core.params import load_params

    example = load_params(ROOT / "examples" / "team_model" / "params.yaml")
    assert example.train.model.class_path == "my_models.TinyResNet"


def test_the_example_model_trains_and_its_checkpoint_rebuilds_it(digits, tmp_path):
    from lepton_core.predictor import Predictor

    params = _params(
        "my_models.TinyResNet",
        [str(EXAMPLE)],
        epochs=5,
        in_channels="${in_channels}",
        n_outputs="${n_outputs}",
        width=8,
        blocks=1,
    )
    result, ckpt = _train(digits, params, tmp_path, ROOT)
    cfg = result.model_config
    assert cfg.kind == "custom" and cfg.init_args == {"in_channels": 1, "n_outputs": 10, "width": 8, "blocks": 1}
    assert set(cfg.code) == {"my_models/__init__.py", "my_models/blocks.py"}
    p = Predictor.from_checkpoint(ckpt)
    assert type(p.model).__name__ == "TinyResNet"
    assert type(p.model).__module__ == "my_models"
    labels = p.predict(digits.x["test"]).labels
    assert labels.shape == (len(digits.x["test"]),)
    assert float((labels == digits.y["test"]).mean()) > 0.5  # 5 epochs: learning, not chance (0.1)


def test_a_checkpoint_loads_in_a_new_process_elsewhere_with_the_code_folder_gone(digits, tmp_path):
    """The checkpoint carries its code: a fresh interpreter in another folder, with the
    team's folder deleted and not on sys.path, rebuilds the model and scores the same."""
    from lepton_core.predictor import Predictor

    code = tmp_path / "code"
    _package(code, LINEAR)
    params = _params("team_net.Net", [str(code / "team_net")], in_features=64, n_outputs="${n_outputs}")
    _, ckpt = _train(digits, params, tmp_path, tmp_path)
    want = Predictor.from_checkpoint(ckpt).predict(digits.x["test"]).labels
    np.save(tmp_path / "x.npy", digits.x["test"])
    shutil.rmtree(code)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import sys, numpy as np\n"
        "from lepton_core.predictor import Predictor\n"
        f"p = Predictor.from_checkpoint({str(ckpt)!r})\n"
        f"np.save('labels.npy', p.predict(np.load({str(tmp_path / 'x.npy')!r})).labels)\n"
        "assert 'team_net' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (np.load(elsewhere / "labels.npy") == want).all()


def test_two_versions_of_one_package_each_run_their_own_code(digits, tmp_path):
    """Version 1 and version 2 of `team_net` (the second adds 100 to every output) load
    side by side in one process, and each answers with its own code."""
    from lepton_core.checkpoint import load_checkpoint
    from lepton_core.predictor import Predictor

    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    _package(v1, LINEAR)
    _package(v2, LINEAR.replace("+ self.bias", "+ self.bias + 100.0"))
    params = _params("team_net.Net", ["team_net"], in_features=64, n_outputs="${n_outputs}")
    _, c1 = _train(digits, params, tmp_path, v1, "v1.pt")
    _, c2 = _train(digits, params, tmp_path, v2, "v2.pt")
    p1, p2 = Predictor.from_checkpoint(c1), Predictor.from_checkpoint(c2)
    x = digits.x["test"][:16]
    l1, l2 = p1.logits(x), p2.logits(x)
    # the same weights through each version's forward: the second is 100 higher
    state2 = load_checkpoint(c2)
    p1.model.load_state_dict(state2["model"])
    assert np.allclose(p2.logits(x) - p1.logits(x), 100.0, atol=1e-3)
    assert type(p1.model) is not type(p2.model)
    assert abs(float(l2.mean() - l1.mean())) > 50


@pytest.mark.parametrize(
    "class_path", ["os.system", "subprocess.Popen", "builtins.eval", "posix.system", "lepton_core.train.os"]
)
def test_a_class_path_from_outside_the_teams_code_is_refused_before_import(class_path, tmp_path, monkeypatch):
    from lepton_core import usermodel

    ran = []
    monkeypatch.setattr(os, "system", lambda *a: ran.append(a))
    monkeypatch.setattr(usermodel.importlib, "import_module", lambda *a: ran.append(a))
    with pytest.raises(ModelError, match="is not allowed"):
        usermodel.build(class_path, {"command": "touch pwned"}, usermodel.CodeBundle(), [])
    assert not ran and not (tmp_path / "pwned").exists()


def test_bad_user_code_is_one_line(tmp_path):
    from lepton_core.models import ModelConfig, build_model

    code = tmp_path / "code"
    _package(
        code,
        """
        import torch
        from torch import nn

        class Wrong(nn.Module):
            def forward(self, x):
                return torch.zeros(len(x), 1, 10)

        class Raises(nn.Module):
            def forward(self, x):
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\\n(details)")

        def not_a_module():
            return 42
    """,
    )
    _package(code, "import nonexistent_pkg_for_lepton\n", name="broken_net")
    from lepton_core.usermodel import CodeBundle

    def cfg(class_path: str, pkg: str = "team_net") -> ModelConfig:
        files = dict(CodeBundle.from_folders([pkg], code).files)
        return ModelConfig(
            kind="custom", input_shape=(1, 8, 8), n_classes=10, class_path=class_path, init_args={}, code=files
        )

    cases = {
        "team_net.Wrong": r"^Wrong.forward: expected \(B, 10\), got \(B, 1, 10\)$",
        "team_net.Raises": r"^Raises.forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied "
        r"on input \(B, 1, 8, 8\)$",
        "team_net.not_a_module": r"returned a int, not a torch.nn.Module",
        "team_net.Missing": r"has no 'Missing'",
    }
    for class_path, message in cases.items():
        with pytest.raises(ModelError, match=message) as e:
            build_model(cfg(class_path))
        assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="No module named 'nonexistent_pkg_for_lepton'"):
        build_model(cfg("broken_net.Net", "broken_net"))


def test_a_loss_that_is_not_finite_is_one_line(digits, tmp_path):
    code = tmp_path / "code"
    _package(code, LINEAR.replace("+ self.bias", "* float('nan')"))
    params = _params("team_net.Net", [str(code / "team_net")], in_features=64, n_outputs="${n_outputs}")
    with pytest.raises(ModelError, match="training loss is not finite at epoch 1"):
        _train(digits, params, tmp_path, tmp_path)


def test_an_installed_library_by_class_path_needs_its_requirement(digits, tmp_path):
    """A class from an installed package works when train.requirements names it
    (here torch's own nn.Sequential-free MLP builder is not one; torch.nn.Linear is)."""
    from lepton_core import usermodel

    with pytest.raises(ModelError, match="is not allowed"):
        usermodel.check_class_path("torch.nn.Linear", usermodel.CodeBundle(), [])
    assert usermodel.check_class_path("torch.nn.Linear", usermodel.CodeBundle(), ["torch==2.13.0"]) == "package"
    model = usermodel.build("torch.nn.Linear", {"in_features": 4, "out_features": 3}, usermodel.CodeBundle(), ["torch"])
    usermodel.check_contract(model, "Linear", (4,), 3)


@pytest.mark.parametrize(
    ("class_path", "requirements"),
    [
        ("my_models.os.system", []),  # through a module the team's code imports
        ("my_models.shell", []),  # a name the team's code re-exports from elsewhere
        ("torch.os.system", ["torch"]),  # through a module an allowed package imports
        ("lepton_core.models.torch.nn.Linear", []),  # out of Lepton's models
    ],
)
def test_a_path_through_an_imported_module_is_refused_before_the_call(class_path, requirements, tmp_path):
    from lepton_core import usermodel

    code = tmp_path / "code"
    _package(code, "import os\nfrom os import system as shell\n", name="my_models")
    marker = tmp_path / "pwned"
    bundle = usermodel.CodeBundle.from_folders([str(code / "my_models")], tmp_path)
    with pytest.raises(ModelError, match="is not allowed"):
        usermodel.build(class_path, {"command": f"touch {marker}"}, bundle, requirements)
    assert not marker.exists()
