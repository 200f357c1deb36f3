"""The team's own data loader through the real command: a loader package in a folder
outside the checkout (`data.format: custom`) that reads `data.path`, and
`lepton retrain --params FILE` that prepares, trains, evaluates and registers a
regression model on what it returns; the prepare cache key follows the loader's code."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import yaml

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

MODEL = "team-sales"

LOADER = """
    import pandas as pd


    class Sales:
        \"\"\"Weekly sales of one shop: the table at `path`, and a column the team derives.\"\"\"

        def __init__(self, path, promo_weight=1.0):
            self.path, self.promo_weight = path, promo_weight

        def load(self):
            df = pd.read_csv(self.path)
            df["promo_effect"] = df["promo"] * self.promo_weight
            return df
"""


@pytest.fixture(scope="module")
def trained(lepton_env, tmp_path_factory):
    team = tmp_path_factory.mktemp("team")  # not inside the checkout
    (team / "sales_data").mkdir()
    (team / "sales_data" / "__init__.py").write_text(textwrap.dedent(LOADER))
    rng = np.random.default_rng(0)
    n = 400
    price, promo, temp = rng.uniform(1, 5, n), rng.integers(0, 2, n), rng.normal(15, 5, n)
    units = 100 - 12 * price + 25 * promo + 0.8 * temp + rng.normal(0, 3, n)
    rows = [
        "price,promo,temp,units",
        *(f"{a:.4f},{b},{c:.4f},{d:.4f}" for a, b, c, d in zip(price, promo, temp, units)),
    ]
    (team / "sales.csv").write_text("\n".join(rows) + "\n")
    params = {
        "data": {
            "format": "custom",
            "path": str(team / "sales.csv"),
            "task": "regression",
            "label_column": "units",
            "test_split": "random",
            "loader": {
                "class_path": "sales_data.Sales",
                "init_args": {"promo_weight": 2.0},
                "code": [str(team / "sales_data")],
            },
        },
        "train": {"epochs": 40, "patience": 10, "width": 32, "lr": 0.003, "device": "cpu"},
        "promote": {"min_r2": 0.5},
        "registry": {"model_name": MODEL},
    }
    (team / "params.yaml").write_text(yaml.safe_dump(params))
    r = run_cli(
        ["retrain", "--params", str(team / "params.yaml"), "--json", "--no-progress"], lepton_env[1], timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return team, json.loads(r.stdout)["result"]


def test_a_regression_model_on_the_loaders_data_is_registered_with_its_test_r2(trained):
    _, result = trained
    assert result["version"] == "1" and result["decision"]["promoted"]
    metrics = result["metrics"]
    assert metrics["test_r2"] > 0.8 and metrics["test_rmse"] > 0 and "test_accuracy" not in metrics


def test_the_data_version_holds_what_the_loader_returned(trained, lepton_env):
    from effects.data.dvc_store import dataset_path
    from lepton_core.data.prepare import read_prepared

    _, result = trained
    prep = read_prepared(dataset_path(result["data_version"]))
    assert prep.meta["task"] == "regression" and prep.meta["label_column"] == "units"
    # the loader's derived column is a feature, made with its init_args
    assert prep.meta["feature_names"] == ["price", "promo", "temp", "promo_effect"]
    assert np.allclose(prep.x["train"][:, 3], 2.0 * prep.x["train"][:, 1])
    assert sum(prep.meta["counts"].values()) == 400


def test_the_prepare_cache_key_follows_the_loader_code_and_its_data(trained, lepton_env):
    from effects.data.dvc_store import prepare_cache_key
    from lepton_core.params import load_params

    team, _ = trained
    data = load_params(team / "params.yaml").data
    key = prepare_cache_key(data)
    assert prepare_cache_key(data) == key  # the same code and data: the cached dataset is reused
    init = team / "sales_data" / "__init__.py"
    init.write_text(init.read_text().replace("* self.promo_weight", "* self.promo_weight + 1"))
    edited = prepare_cache_key(data)
    assert edited != key
    (team / "sales.csv").write_text((team / "sales.csv").read_text() + "1.0,0,10.0,80.0\n")
    assert prepare_cache_key(data) != edited


def test_a_loader_without_a_data_path_is_never_served_from_the_cache(lepton_env):
    from effects.data.dvc_store import prepare_cache_key
    from lepton_core.params import DataParams

    data = DataParams(format="custom", loader={"class_path": "shop_db.load", "code": ["shop_db.py"]})
    # what it reads (a database, a URL) is unknown until it runs: no two keys match
    assert prepare_cache_key(data) != prepare_cache_key(data)
