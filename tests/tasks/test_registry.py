"""Registry and gate functions against a real MLflow registry (SQLite in tmp)."""

from __future__ import annotations

import threading

import pytest

from lepton_core.params import DataParams, Params, PromoteParams, RegistryParams, TrainParams
from tests.conftest import lepton_env_vars, make_project

NAME = "race-model"


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory):
    """Register three versions of clearly different quality, none promoted:
    weak (tiny slice, 1 epoch), strong (full data), medium (half-trained)."""
    from effects.data.dvc_store import version_dataset
    from tasks.evaluate import evaluate
    from tasks.registry import register
    from tasks.train import train

    base = tmp_path_factory.mktemp("reg")
    make_project(base / "project")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in lepton_env_vars(base).items():
            mp.setenv(k, v)
        data = version_dataset(DataParams())
        versions, accs = {}, {}
        for label, tp in {
            "weak": TrainParams(epochs=1, width=4, max_train_samples=40, lr=1e-3),
            "strong": TrainParams(epochs=8, width=16, patience=3),
            "medium": TrainParams(epochs=3, width=8, max_train_samples=200, batch_size=16, patience=0),
        }.items():
            params = Params(train=tp, registry=RegistryParams(model_name=NAME))
            outcome = train.fn(data, params, progress=False)
            metrics = evaluate.fn(outcome.run_id, outcome.checkpoint, data)
            versions[label] = register.fn(outcome, data, params, metrics)
            accs[label] = metrics["test_accuracy"]
        assert accs["weak"] < accs["medium"] < accs["strong"] - 0.02, accs
        yield versions, accs


def test_concurrent_promotions_leave_the_right_champion(three_versions):
    from effects.tracking.registry import promote_version, registry_status

    versions, _ = three_versions
    gate = PromoteParams(min_accuracy=0.0, tolerance=0.0)
    assert promote_version(NAME, versions["weak"], gate)["promoted"] is True

    results, errors = {}, []
    barrier = threading.Barrier(2)

    def go(label):
        try:
            barrier.wait()
            results[label] = promote_version(NAME, versions[label], gate)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(label,)) for label in ("medium", "strong")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    st = registry_status(NAME)
    # Whichever ran first, the strong version must end as champion: if medium went
    # first, strong beat it; if strong went first, medium was judged against strong.
    assert st["champion"]["version"] == versions["strong"]
    assert results["strong"]["promoted"] is True
    if results["medium"]["promoted"]:
        assert st["previous"]["version"] == versions["medium"]
    else:
        assert results["medium"]["champion_accuracy"] == pytest.approx(results["strong"]["challenger_accuracy"])
        assert st["previous"]["version"] == versions["weak"]


def test_gate_tags_on_the_version(three_versions):
    from effects.tracking.registry import gate_record, promote_version
    from effects.tracking.runs import client

    versions, accs = three_versions
    r = promote_version(NAME, versions["weak"], PromoteParams(min_accuracy=0.0))
    assert r["promoted"] is False  # the weak one never beats the champion
    mv = client().get_model_version(NAME, versions["weak"])
    tags = mv.tags
    assert tags["lepton.gate.promote"] == "False"
    assert float(tags["lepton.gate.p_value"]) < 0.05
    assert tags["lepton.gate.forced"] == "false"
    # the whole decision is in the description, as JSON; the tags stay few
    gate = gate_record(mv)
    assert float(gate["challenger_accuracy"]) == pytest.approx(accs["weak"])
    assert gate["test_data_version"] == tags["lepton.data_version"]
    assert gate["promote"] == "False" and gate["p_value"] == tags["lepton.gate.p_value"]
    assert len(tags) <= 10, sorted(tags)
    assert "Provenance:" in mv.description  # the register step's block is kept


def test_every_gate_decision_on_a_version_is_kept(three_versions):
    """Two promotions of one version keep two decisions, newest last, each with its
    time; gate_record is the latest and the description stays one block."""
    from effects.tracking.registry import champion, gate_history, gate_record, promote_version
    from effects.tracking.runs import client

    versions, _ = three_versions
    c = client()
    champ = champion(c, NAME)
    v = next(versions[k] for k in ("weak", "medium") if champ is None or str(champ.version) != versions[k])
    before = gate_history(c, c.get_model_version(NAME, v))
    first = promote_version(NAME, v, PromoteParams(min_accuracy=1.0))
    second = promote_version(NAME, v, PromoteParams(min_accuracy=0.0, tolerance=0.0))
    mv = c.get_model_version(NAME, v)
    history = gate_history(c, mv)
    assert len(history) == len(before) + 2, history
    assert [h["reason"] for h in history[-2:]] == [first["reason"], second["reason"]]
    assert history[-2]["reason"] != history[-1]["reason"]
    assert all(h["decided_at"].endswith("+00:00") for h in history[-2:])
    assert history[-2]["decided_at"] <= history[-1]["decided_at"]
    assert gate_record(mv) == history[-1]
    assert mv.description.count("Promotion gate:") == 1
    assert "The latest of" in mv.description and "Provenance:" in mv.description


def test_redact_uri_hides_passwords():
    from effects.runtime.settings import redact_uri

    assert redact_uri("postgresql://lepton:s3cret@db:5432/mlflow") == "postgresql://lepton:***@db:5432/mlflow"
    assert redact_uri("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_an_alias_lookup_that_fails_is_raised_not_taken_for_no_champion():
    """Only a missing model or alias is "none"; a registry that fails (here: an
    internal error, as a connection that gave up) is raised, so the gate never
    promotes without comparing."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

    from effects.tracking.registry import alias_version

    class Client:
        def __init__(self, error):
            self.error = error

        def get_model_version_by_alias(self, name, alias):
            raise self.error

    missing = MlflowException("Registered model alias champion not found.", error_code=INVALID_PARAMETER_VALUE)
    no_model = MlflowException("Registered Model with name=m not found", error_code=RESOURCE_DOES_NOT_EXIST)
    assert alias_version(Client(missing), "m", "champion") is None
    assert alias_version(Client(no_model), "m", "champion") is None
    down = MlflowException("API request to http://127.0.0.1:1/api failed with exception ConnectionError")
    with pytest.raises(MlflowException, match="API request"):
        alias_version(Client(down), "m", "champion")
