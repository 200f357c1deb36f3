"""A model trained on a table with its own label column (`data.label_column=species`):
the monitor checks a CSV batch with that column (no "schema mismatch"), and the
accepted batch becomes a listed input of the next data version and its MLflow run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lepton_core.params import DataParams, MonitorParams, RegistryParams, TrainParams

pytestmark = pytest.mark.slow

NAME = "species-model"
REG = RegistryParams(model_name=NAME, experiment="species")


def _table(n: int, seed: int, columns: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    species = np.array(["setosa", "versicolor", "virginica"])[np.arange(n) % 3]
    centres = {"setosa": (1.0, 5.0, 0.2), "versicolor": (4.0, 6.0, 1.3), "virginica": (5.5, 6.5, 2.0)}
    x = np.array([centres[s] for s in species]) + rng.normal(scale=0.3, size=(n, 3))
    df = pd.DataFrame(x, columns=["petal_length", "sepal_length", "petal_width"])
    df["species"] = species
    return df[columns]


@pytest.fixture(scope="module")
def table_champion(lepton_env, prefect_server):
    from flows.retrain import retrain

    base = lepton_env[0]
    csv = base / "project" / "flowers.csv"
    _table(450, 0, ["petal_length", "sepal_length", "petal_width", "species"]).to_csv(csv, index=False)
    data = DataParams(format="csv", path=str(csv), label_column="species")
    first = retrain(data=data, train=TrainParams(epochs=10, width=16, patience=0), registry=REG, progress=False)
    assert first["decision"]["promoted"], first["decision"]
    return data, first


def test_csv_batch_with_the_custom_label_column_is_checked(table_champion, lepton_env, tmp_path):
    from flows.monitor import monitor

    batch = tmp_path / "batch.csv"
    # columns in another order than training: matched by name
    _table(150, 1, ["species", "petal_width", "petal_length", "sepal_length"]).to_csv(batch, index=False)
    r = monitor(batch=str(batch), monitor=MonitorParams(min_rows=50, cooldown_minutes=600), registry=REG)
    (res,) = r["results"]
    assert res["status"] in ("no drift", "drift"), res["verdict"]
    assert "schema mismatch" not in res["verdict"]
    assert res["rows"] == 150 and res["accepted_for_training"] is True
    assert "accuracy_drop" in res["scores"]  # the labels were read from `species`

    bad = tmp_path / "bad.csv"
    _table(150, 2, ["species", "petal_width", "petal_length"]).to_csv(bad, index=False)
    (res,) = monitor(batch=str(bad), monitor=MonitorParams(min_rows=50), registry=REG)["results"]
    assert res["status"] == "schema mismatch" and "sepal_length" in res["verdict"]


def test_the_accepted_batch_is_a_listed_input_of_the_next_data_version(table_champion, lepton_env):
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state
    from effects.tracking.runs import client
    from flows.retrain import retrain

    data, first = table_champion
    accepted = monitor_state.accepted_batches(get_settings())
    assert accepted, "the labelled batch was not accepted"
    second = retrain(data=data, train=TrainParams(epochs=2, width=16, patience=0), registry=REG, progress=False)
    assert second["data_version"] != first["data_version"]
    from effects.data.dvc_store import dataset_path

    meta = __import__("json").loads((dataset_path(second["data_version"]) / "meta.json").read_text())
    assert meta["monitored_batches"] == [b["id"] for b in accepted]
    assert meta["label_column"] == "species"
    run = client().get_run(second["run_id"])
    contexts = {
        d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in run.inputs.dataset_inputs
    }
    assert contexts[f"monitor-batch-{accepted[0]['id']}"] == "monitored-batch"
    assert sorted(contexts.values()) == ["monitored-batch", "training"]


def test_an_unlabelled_table_is_monitored_and_scored(table_champion, lepton_env, tmp_path):
    from effects.serving.batch_scoring import score_data
    from flows.monitor import monitor

    batch = tmp_path / "unlabelled.csv"
    _table(150, 3, ["sepal_length", "petal_width", "petal_length"]).to_csv(batch, index=False)
    (res,) = monitor(batch=str(batch), monitor=MonitorParams(min_rows=50, cooldown_minutes=600), registry=REG)[
        "results"
    ]
    assert res["status"] in ("no drift", "drift"), res["verdict"]
    assert "accuracy_drop" not in res["scores"] and res["accepted_for_training"] is False
    out = score_data(batch, None, tmp_path / "p.parquet", NAME, progress=False)
    assert out["rows"] == 150 and "accuracy" not in out
    assert (tmp_path / "p.parquet").exists()
