"""Warm start (train.init_from): from the champion on a dataset with a new class set,
loading what fits and listing the head keys left out, the parent version recorded on
the run and the version; with init_strict a one-line error through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lepton_core.params import DataParams, TrainParams
from lepton_core.usermodel import ModelError
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=6, width=16, patience=0, lr=0.01)


def _five_digit_classes(folder):
    """An image folder of the digits 0-4 only: a new class set for the digits champion."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        if label < 5:
            (folder / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / str(label) / f"{i}.png")
    return folder


def test_warm_start_loads_what_fits_and_names_what_it_left_out():
    from lepton_core.models import ModelConfig, build_model
    from lepton_core.train import warm_start

    ten = build_model(ModelConfig(kind="cnn", input_shape=(1, 8, 8), n_classes=10, width=8))
    five = build_model(ModelConfig(kind="cnn", input_shape=(1, 8, 8), n_classes=5, width=8))
    with pytest.raises(ModelError, match=r"shapes differ for head\.3\.bias, head\.3\.weight.*init_strict=false"):
        warm_start(five, ten.state_dict(), strict=True)
    left = warm_start(five, ten.state_dict(), strict=False)
    assert left == {"missing": [], "unexpected": [], "mismatched": ["head.3.bias", "head.3.weight"]}
    for k, v in five.state_dict().items():
        if not k.startswith("head.3"):
            assert torch.equal(v, ten.state_dict()[k]), k


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from flows.retrain import retrain

    first = retrain(data=DataParams(), train=FAST, progress=False)
    assert first["decision"]["promoted"]
    return first


def test_from_the_champion_on_a_new_class_set(champion, lepton_env, tmp_path):
    from effects.tracking.runs import client
    from flows.retrain import retrain

    folder = _five_digit_classes(tmp_path / "five")
    warm = FAST.model_copy(update={"init_from": "champion", "init_strict": False, "epochs": 3})
    result = retrain(data=DataParams(format="imagefolder", path=str(folder)), train=warm, progress=False)
    c = client()
    run = c.get_run(result["run_id"])
    parent = f"models:/lepton-digits/{champion['version']}"
    assert run.data.tags["lepton.init_from"] == parent
    left = json.loads(Path(c.download_artifacts(result["run_id"], "warm_start.json", str(tmp_path))).read_text())
    assert left["mismatched"] == ["head.3.bias", "head.3.weight"]
    mv = c.get_model_version("lepton-digits", result["version"])
    assert mv.tags["lepton.init_from"] == parent
    assert '"init_from": "' + parent + '"' in mv.description


def test_with_init_strict_it_is_one_line_through_the_command(champion, lepton_env, tmp_path):
    folder = _five_digit_classes(tmp_path / "five")
    r = run_cli(
        [
            "retrain",
            "--data",
            str(folder),
            "--format",
            "imagefolder",
            "--set",
            f"train.init_from=models:/lepton-digits/{champion['version']}",  # the 10-class digits model
            "--set",
            "train.epochs=2",
            "--set",
            "train.width=16",
            "--no-progress",
        ],
        lepton_env[1],
        timeout=600,
    )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "do not fit the model (shapes differ for head.3.bias, head.3.weight" in lines[0]
    assert "Traceback" not in r.stderr
