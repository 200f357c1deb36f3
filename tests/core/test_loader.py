"""The team's own data loader (`data.format: custom`): functions and classes, every
accepted return (tuples, dicts, DataFrames, tables and images, classification and
regression), class paths from outside the loader's code refused before anything
runs, one-line errors for bad returns, and a cache key that follows the loader's code."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lepton_core.data.fingerprint import prepare_fingerprint, raw_files
from lepton_core.data.loader import load_custom
from lepton_core.data.prepare import prepare_from_params, read_prepared
from lepton_core.errors import DataError
from lepton_core.params import DataParams, load_params
from tests.conftest import ROOT


def _loader_code(root: Path, body: str, name: str = "team_data") -> Path:
    """A package `name` under `root` whose __init__ is `body`; returns the package folder."""
    pkg = root / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return pkg


def _params(class_path: str, code: list[str], **data: Any) -> DataParams:
    loader = {"class_path": class_path, "code": code, "init_args": data.pop("init_args", {})}
    data.setdefault("test_split", "random")
    return DataParams(format="custom", loader=loader, **data)


LOADERS = """
    import numpy as np
    import pandas as pd

    def table(n=120, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 3))
        return x, np.array(["cat", "dog", "eel"])[np.arange(n) % 3]

    class FromFile:
        def __init__(self, path, scale=1.0):
            self.path, self.scale = path, scale

        def load(self):
            rows = np.loadtxt(self.path, delimiter=",")
            return {"x": rows[:, :2] * self.scale, "y": rows[:, 2].astype(int), "classes": ["no", "yes"],
                    "feature_names": ["a", "b"]}

    class Callable:
        def __call__(self):
            x = np.arange(60 * 2, dtype=np.float64).reshape(60, 2)
            return x, np.arange(60) % 2, {"test_rows": np.arange(60) >= 45}

    def frame(n=200):
        rng = np.random.default_rng(1)
        df = pd.DataFrame({"u": rng.normal(size=n), "v": rng.normal(size=n)})
        df["price"] = 3.0 * df["u"] - df["v"] + 0.01 * rng.normal(size=n)
        return df

    def grey_images():
        rng = np.random.default_rng(2)
        return rng.integers(0, 256, (90, 6, 5)), np.arange(90) % 3

    def colour_floats():
        rng = np.random.default_rng(3)
        return {"x": rng.random((80, 3, 4, 4)), "y": np.arange(80) % 2, "classes": ["a", "b"]}

    def brightness():
        rng = np.random.default_rng(4)
        x = rng.integers(0, 256, (120, 1, 4, 4)).astype("uint8")
        return x, x.reshape(120, -1).mean(1)

    def digits():
        from sklearn.datasets import load_digits
        d = load_digits()
        return (d.images * (255 / 16)).round().astype("uint8"), d.target
"""


@pytest.fixture()
def code(tmp_path) -> Path:
    return _loader_code(tmp_path / "code", LOADERS)


def test_a_function_returning_a_table_and_class_names(code, tmp_path):
    p = _params("team_data.table", [str(code)], init_args={"n": 90, "seed": 4})
    raw = load_custom(p, tmp_path)
    assert raw.kind == "tabular" and raw.x.shape == (90, 3) and raw.x.dtype == np.float32
    assert raw.classes == ["cat", "dog", "eel"] and raw.y[:4].tolist() == [0, 1, 2, 0]
    assert raw.feature_names == ["0", "1", "2"]  # the predictor's own default column names
    report = prepare_from_params(p, tmp_path / "out", base_dir=tmp_path)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert report["kept"] == 90 and meta["classes"] == ["cat", "dog", "eel"] and meta["kind"] == "tabular"


def test_a_class_gets_init_args_and_data_path_and_its_load_is_called(code, tmp_path):
    rows = np.c_[np.arange(40.0), np.arange(40.0) * 2, np.arange(40) % 2]
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",")
    # data.path relative to the project (base_dir), passed to the loader resolved
    p = _params("team_data.FromFile", ["code/team_data"], path="rows.csv", init_args={"scale": 10.0})
    raw = load_custom(p, tmp_path)
    assert raw.feature_names == ["a", "b"] and raw.classes == ["no", "yes"]
    assert np.allclose(raw.x[:, 0], np.arange(40) * 10.0) and raw.y.tolist() == (np.arange(40) % 2).tolist()
    with pytest.raises(DataError, match="data.path and data.loader.init_args.path are both set"):
        load_custom(_params("team_data.FromFile", [str(code)], path="rows.csv", init_args={"path": "x"}), tmp_path)


def test_a_callable_instance_and_the_loaders_own_test_rows(code, tmp_path):
    p = _params("team_data.Callable", [str(code)], test_split="canonical")
    raw = load_custom(p, tmp_path)
    assert raw.test_rows is not None and int(raw.test_rows.sum()) == 15
    prepare_from_params(p, tmp_path / "out", base_dir=tmp_path)
    prep = read_prepared(tmp_path / "out")
    # the loader's own test rows are the test split (features 90.. and up)
    assert len(prep.x["test"]) == 15 and prep.x["test"][:, 0].min() >= 90


def test_a_dataframe_with_the_label_column_is_a_regression_table(code, tmp_path):
    p = _params("team_data.frame", [str(code)], task="regression", label_column="price")
    raw = load_custom(p, tmp_path)
    assert raw.task == "regression" and raw.y.dtype == np.float64 and raw.feature_names == ["u", "v"]
    prepare_from_params(p, tmp_path / "out", base_dir=tmp_path)
    prep = read_prepared(tmp_path / "out")
    assert prep.meta["task"] == "regression" and prep.meta["n_outputs"] == 1 and prep.y["train"].dtype == np.float64
    assert sum(len(prep.y[s]) for s in ("train", "val", "test")) == 200


def test_image_arrays(code, tmp_path):
    grey = load_custom(_params("team_data.grey_images", [str(code)]), tmp_path)
    assert grey.kind == "image" and grey.x.shape == (90, 1, 6, 5) and grey.x.dtype == np.uint8
    colour = load_custom(_params("team_data.colour_floats", [str(code)]), tmp_path)
    assert colour.x.shape == (80, 3, 4, 4) and colour.x.dtype == np.float32 and colour.classes == ["a", "b"]


def test_images_with_numbers_to_predict(code, tmp_path):
    p = _params("team_data.brightness", [str(code)], task="regression")
    prepare_from_params(p, tmp_path / "out", base_dir=tmp_path)
    prep = read_prepared(tmp_path / "out")
    assert prep.meta["kind"] == "image" and prep.meta["task"] == "regression" and prep.meta["n_outputs"] == 1
    assert np.allclose(prep.y["test"], prep.x["test"].reshape(len(prep.x["test"]), -1).mean(1))


def test_digits_from_a_custom_loader_prepare_like_the_bundled_format(code, tmp_path):
    """A classification loader of images, through the whole prepare; then a short training."""
    from lepton_core.params import TrainParams
    from lepton_core.predictor import Preprocessing
    from lepton_core.train import train_on_prepared

    p = _params("team_data.digits", [str(code)])
    prepare_from_params(p, tmp_path / "custom", base_dir=tmp_path)
    prepare_from_params(DataParams(format="digits", test_split="random"), tmp_path / "bundled")
    custom, bundled = read_prepared(tmp_path / "custom"), read_prepared(tmp_path / "bundled")
    assert custom.meta["kind"] == "image" and custom.meta["input_shape"] == [1, 8, 8]
    assert custom.meta["classes"] == [str(i) for i in range(10)] and custom.meta["dtype"] == "uint8"
    assert custom.meta["counts"] == bundled.meta["counts"]
    for s in ("train", "test"):  # the same pixels, the same split
        assert np.array_equal(custom.x[s], bundled.x[s]) and np.array_equal(custom.y[s], bundled.y[s])
    train = TrainParams(model="mlp", epochs=3, patience=0, device="cpu", lr=0.01)
    result = train_on_prepared(custom, train, Preprocessing.from_meta(custom.meta), progress=False)
    assert result.best_val_accuracy > 0.8


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen", "builtins.eval", "lepton_core.models.MLP"])
def test_a_class_path_outside_the_loaders_code_is_refused_before_anything_runs(class_path, code, tmp_path, monkeypatch):
    from lepton_core import usermodel

    ran: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(usermodel.importlib, "import_module", lambda *a, **k: ran.append(a))
    marker = tmp_path / "pwned"
    p = _params(class_path, [str(code)], init_args={"command": f"touch {marker}", "args": ["touch", str(marker)]})
    with pytest.raises(DataError) as e:
        load_custom(p, tmp_path)
    message = str(e.value)
    assert message.startswith(f"data.loader.class_path {class_path!r} is not allowed")
    assert "data.loader.code (team_data)" in message and "\n" not in message
    assert not ran and not marker.exists()
    with pytest.raises(DataError, match="is not allowed"):  # without any code folders too
        load_custom(_params(class_path, [], init_args={"command": f"touch {marker}"}), tmp_path)
    assert not ran and not marker.exists()


BAD = """
    import numpy as np
    import pandas as pd

    def none():
        return None

    def text():
        return "x, y"

    def four():
        return 1, 2, 3, 4

    def no_y():
        return {"x": np.zeros((4, 2))}

    def typo():
        return {"x": np.zeros((4, 2)), "y": np.zeros(4), "clases": ["a"]}

    def short_y():
        return np.zeros((10, 2)), np.arange(9)

    def words():
        return np.array([["a", "b"]] * 10), np.arange(10) % 2

    def flat():
        return np.arange(10.0), np.arange(10) % 2

    def deep():
        return np.zeros((4, 1, 2, 2, 2)), np.arange(4) % 2

    def raises():
        raise ValueError("the warehouse said no\\nTraceback line two")

    class NoLoad:
        pass

    def no_label():
        return pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})

    def text_feature():
        return pd.DataFrame({"a": ["x", "y"], "label": [0, 1]})

    def float_indices():
        return np.zeros((4, 2)), np.array([0.5, 1.0, 0.0, 1.0]), {"classes": ["a", "b"]}

    def bad_test_rows():
        return np.zeros((4, 2)), np.arange(4) % 2, {"test_rows": [1, 0]}

    def big_pixels():
        return np.full((4, 3, 3), 300), np.arange(4) % 2

    def empty():
        return np.zeros((0, 2)), np.zeros(0)
"""


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("none", r"returned None; expected \(x, y\)"),
        ("text", "returned a str; expected"),
        ("four", "returned a tuple of 4 values"),
        ("no_y", "returned a dict with no 'x' and 'y'"),
        ("typo", "returned a dict with unknown keys clases"),
        ("short_y", "returned 10 samples but 9 labels"),
        ("words", "x of dtype <U1 is not numeric"),
        ("flat", r"x of shape \(10,\); expected a table"),
        ("deep", r"x of shape \(4, 1, 2, 2, 2\)"),
        ("raises", "raised ValueError: the warehouse said no$"),
        ("NoLoad", r"a class needs a load\(\) method"),
        ("no_label", "the DataFrame has no label column 'label'"),
        ("text_feature", "non-numeric feature columns: a"),
        ("float_indices", "with classes given, y must be int indices"),
        ("bad_test_rows", r"test_rows must be an \(N,\) bool array"),
        ("big_pixels", "integer images must hold pixels 0..255"),
        ("empty", "returned no samples"),
        ("missing", "has no 'missing'"),
    ],
)
def test_a_bad_return_is_one_line_naming_the_loader(name, message, tmp_path):
    code = _loader_code(tmp_path / "code", BAD, name="bad_data")
    with pytest.raises(DataError, match=message) as e:
        load_custom(_params(f"bad_data.{name}", [str(code)]), tmp_path)
    assert "\n" not in str(e.value)
    assert f"bad_data.{name}" in str(e.value)


def test_regression_targets_that_are_words_are_refused(tmp_path):
    code = _loader_code(tmp_path / "code", "import numpy as np\ndef f():\n    return np.zeros((3, 1)), ['a'] * 3\n")
    with pytest.raises(DataError, match="team_data.f: y is not numeric; data.task=regression"):
        load_custom(_params("team_data.f", [str(code)], task="regression"), tmp_path)


def test_loader_code_that_is_missing_or_does_not_import_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^data.loader.code: nowhere is neither a folder nor a .py file"):
        load_custom(_params("nowhere.load", ["nowhere"]), tmp_path)
    code = _loader_code(tmp_path / "code", "import nonexistent_pkg_for_lepton_data\n")
    with pytest.raises(DataError, match="^data.loader.code: importing the team's code failed: ModuleNotFound"):
        load_custom(_params("team_data.load", [str(code)]), tmp_path)


def test_the_cache_key_follows_the_loaders_code_and_data_path(code, tmp_path):
    rows = tmp_path / "rows.csv"
    rows.write_text("1,2,0\n3,4,1\n")
    p = _params("team_data.FromFile", ["code/team_data"], path="rows.csv")
    root, files = raw_files(p, tmp_path)
    assert files == [rows]
    assert raw_files(_params("team_data.table", [str(code)]), tmp_path)[1] == []  # no data.path: no raw files
    before = prepare_fingerprint(p, tmp_path)
    assert prepare_fingerprint(p, tmp_path) == before
    (code / "__init__.py").write_text((code / "__init__.py").read_text() + "\n# an edit to the loader\n")
    after_code = prepare_fingerprint(p, tmp_path)
    assert after_code != before
    (code / "helpers.py").write_text("SCALE = 2\n")  # a new module in the loader's folder counts too
    assert prepare_fingerprint(p, tmp_path) != after_code
    after_module = prepare_fingerprint(p, tmp_path)
    rows.write_text("1,2,0\n3,5,1\n")
    assert prepare_fingerprint(p, tmp_path) != after_module
    other_args = _params("team_data.FromFile", ["code/team_data"], path="rows.csv", init_args={"scale": 2.0})
    assert prepare_fingerprint(other_args, tmp_path) != prepare_fingerprint(p, tmp_path)


def test_the_regression_example_loads_from_the_project():
    params = load_params(ROOT / "examples" / "regression" / "params.yaml")
    assert params.data.format == "custom" and params.data.task == "regression"
    assert params.registry.model_name == "lepton-diabetes" and params.promote.min_r2 is not None
    raw = load_custom(params.data, ROOT)
    assert raw.x.shape == (442, 10) and raw.task == "regression" and "bmi" in raw.feature_names
    assert np.isclose(raw.y.mean(), 152.133, atol=1e-3)


def test_a_path_through_a_module_the_loader_imports_is_refused_before_the_call(tmp_path):
    code = _loader_code(tmp_path / "code", "import os\n")
    marker = tmp_path / "pwned"
    p = _params("team_data.os.system", [str(code)], init_args={"command": f"touch {marker}"})
    with pytest.raises(DataError, match="is not allowed: it reaches module os"):
        load_custom(p, tmp_path)
    assert not marker.exists()
