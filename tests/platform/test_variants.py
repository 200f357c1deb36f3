"""`lepton optimize`: ONNX and int8 variants of the champion, checked on its test
split, registered beside it with their figures, loaded by stock MLflow, served by
`lepton serve --variant`, refused when they lose too much accuracy; their aliases
follow @champion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lepton_core.params import DataParams, ServeParams, TrainParams
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=8, width=16, patience=3)


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from effects.data.dvc_store import dataset_path
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared

    first = retrain(data=DataParams(), train=FAST, progress=False)
    assert first["decision"]["promoted"]
    return first, read_prepared(dataset_path(first["data_version"]))


@pytest.fixture(scope="module")
def optimized(champion, lepton_env):
    r = run_cli(["optimize", "--json"], lepton_env[1], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_optimize_registers_both_variants_with_their_figures(champion, optimized):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from effects.tracking.registry import alias_version

    first, _ = champion
    assert optimized["version"] == first["version"]
    assert abs(optimized["torch_accuracy"] - first["metrics"]["test_accuracy"]) < 1e-9
    c = runs.client(get_settings())
    by_kind = {v["variant"]: v for v in optimized["variants"]}
    assert set(by_kind) == {"onnx", "int8"} and all(v["registered"] for v in by_kind.values())
    for kind, row in by_kind.items():
        mv = alias_version(c, "lepton-digits", f"champion-{kind}")
        assert mv is not None and str(mv.version) == row["version"]
        t = mv.tags
        assert t["lepton.variant"] == kind and t["lepton.variant_of"] == first["version"]
        assert int(t["lepton.size_bytes"]) == row["size_bytes"] > 0
        assert float(t["lepton.latency_b1_ms"]) > 0 and float(t["lepton.latency_b64_ms"]) > 0
        assert float(t["lepton.accuracy_delta"]) == pytest.approx(row["accuracy_delta"], abs=1e-4)
        assert -0.01 <= row["accuracy_delta"]
    # int8 weights: well under the fp32 graph's size
    assert by_kind["int8"]["size_bytes"] < 0.75 * by_kind["onnx"]["size_bytes"]
    # the ONNX fp32 graph answers like PyTorch
    assert by_kind["onnx"]["accuracy_delta"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("kind", ["onnx", "int8"])
def test_stock_mlflow_loads_each_variant_and_reproduces_its_accuracy_on_raw_digits(champion, optimized, kind):
    import mlflow

    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from effects.tracking.registry import alias_version

    _, prepared = champion
    x, y = prepared.x["test"], prepared.y["test"]  # raw uint8 (N, 1, 8, 8)
    assert x.dtype == np.uint8
    mv = alias_version(runs.client(get_settings()), "lepton-digits", f"champion-{kind}")
    model = mlflow.pyfunc.load_model(f"models:/lepton-digits@champion-{kind}")
    out = model.predict(x)
    assert set(out) == {"logits", "probabilities", "label"}
    acc = float((out["label"] == y).mean())
    assert f"{acc:.4f}" == mv.tags["lepton.test_accuracy"]
    assert np.allclose(out["probabilities"].sum(1), 1, atol=1e-4)


def test_lepton_serve_variant_int8_answers_like_the_pytorch_server(champion, optimized, tmp_path):
    from tests.platform.test_serve import Running

    _, prepared = champion
    x, y = prepared.x["test"], prepared.y["test"]
    int8 = {v["variant"]: v for v in optimized["variants"]}["int8"]
    with Running(tmp_path / "torch", ServeParams()) as torch_srv:
        st_t, ans_t = torch_srv.predict(x[:, 0])
    with Running(tmp_path / "int8", ServeParams(), alias="champion-int8") as srv:
        st, ans = srv.predict(x[:, 0])
        assert srv.request("GET", "/v1/model")[1]["version"] == int8["version"]
        bad = srv.request("POST", "/v1/predict", json.dumps({"instances": (np.ones((2, 8, 8)) / 3).tolist()}).encode())
    assert st == st_t == 200
    assert set(ans) == set(ans_t) and ans["version"] == int8["version"] and ans["model"] == ans_t["model"]
    acc = float((np.array(ans["labels"]) == y).mean())
    assert acc == pytest.approx(int8["test_accuracy"], abs=1e-9)
    agree = float((np.array(ans["labels"]) == np.array(ans_t["labels"])).mean())
    assert agree >= 0.97, agree
    assert bad[0] == 400 and "uint8" in bad[1]["error"]  # the same input contract


def test_a_variant_that_loses_too_much_accuracy_is_refused_in_one_line(champion, optimized, lepton_env):
    """A real `lepton optimize` run whose int8 quantiser loses accuracy (its int8
    weights zeroed, see lossy_int8.py): refused in one line, exit 3, nothing registered."""
    import subprocess
    import sys

    from effects.runtime.settings import get_settings
    from effects.tracking import runs

    c = runs.client(get_settings())
    before = len(c.search_model_versions("name='lepton-digits'"))
    code = "import tests.platform.lossy_int8 as l; l.install(); from lepton.cli import main; main()"
    import os

    from tests.conftest import ROOT

    r = subprocess.run(
        [sys.executable, "-c", code, "optimize", champion[0]["version"], "--variant", "int8"],
        env={**os.environ, **lepton_env[1], "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=lepton_env[1]["LEPTON_PROJECT_DIR"],
    )
    assert r.returncode == 3, (r.stdout, r.stderr[-2000:])
    refused = [ln for ln in r.stdout.splitlines() if "refused" in ln]
    assert len(refused) == 1 and "max_accuracy_drop" in refused[0] and "below the PyTorch model's" in refused[0]
    assert "Traceback" not in r.stderr
    assert len(c.search_model_versions("name='lepton-digits'")) == before  # nothing registered


def test_variant_aliases_follow_the_champion(champion, optimized, lepton_env):
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from effects.tracking.registry import alias_version
    from effects.tracking.variants import follow_champion

    c = runs.client(get_settings())
    # a variant is not a candidate for the gate
    int8 = alias_version(c, "lepton-digits", "champion-int8")
    r = run_cli(["promote", str(int8.version)], lepton_env[1])
    assert r.returncode != 0 and "variant" in r.stderr and r.stderr.strip().count("\n") == 0
    # a new champion without variants: the aliases go rather than name the old model's
    from flows.retrain import retrain

    second = retrain(data=DataParams(), train=FAST.model_copy(update={"seed": 1}), progress=False)
    r = run_cli(["promote", second["version"], "--force"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert alias_version(c, "lepton-digits", "champion-int8") is None
    # rolled back: the first champion's variants are named again
    r = run_cli(["rollback"], lepton_env[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(alias_version(c, "lepton-digits", "champion-int8").version) == str(int8.version)
    assert follow_champion("lepton-digits")["champion-int8"] == str(int8.version)
