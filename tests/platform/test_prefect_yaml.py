"""prefect.yaml is what `lepton deploy` registers: generated from the same specs and
kept in step with params.yaml. (The live tests deploy it for real and compare.)"""

from __future__ import annotations

import json

import pytest
import yaml

from lepton.deploy import DRIFT_EVENT, deployment_specs, render_prefect_yaml
from lepton_core.params import load_params
from tests.conftest import ROOT


def test_committed_prefect_yaml_matches_params_yaml():
    expected = render_prefect_yaml(load_params(ROOT / "params.yaml"))
    assert (ROOT / "prefect.yaml").read_text() == expected, (
        "prefect.yaml is stale: run `lepton deploy --write-prefect-yaml prefect.yaml`"
    )


def test_prefect_yaml_names_every_flow_once_with_its_schedule():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert doc["build"] is None and doc["push"] is None and "pull" not in doc  # pull from the project folder
    by_entry = {d["entrypoint"]: d for d in doc["deployments"]}
    assert set(by_entry) == {
        "flows/retrain.py:retrain",
        "flows/registry.py:promote_flow",
        "flows/registry.py:rollback_flow",
        "flows/monitor.py:monitor",
        "flows/sweep.py:sweep",
    }
    params = load_params(ROOT / "params.yaml")
    assert by_entry["flows/retrain.py:retrain"]["schedules"] == [
        {"cron": params.deploy.retrain_cron, "timezone": params.deploy.timezone}
    ]
    assert by_entry["flows/monitor.py:monitor"]["schedules"][0]["cron"] == params.monitor.cron
    assert "schedules" not in by_entry["flows/registry.py:promote_flow"]
    (trigger,) = by_entry["flows/retrain.py:retrain"]["triggers"]
    assert trigger["expect"] == [DRIFT_EVENT] and trigger["posture"] == "Reactive"
    assert all(d["work_pool"]["name"] == "lepton" for d in doc["deployments"])


def test_the_trigger_listens_for_the_event_the_monitor_emits(tmp_path, monkeypatch):
    """Run the monitor's emit task on a drifted result and catch what it sends: the
    event name must be the one the retrain deployment's trigger expects; within the
    cool-down a second drift sends only `lepton.drift.suppressed`, which no trigger
    turns into a retrain."""
    import tasks.monitor as monitor_tasks
    from lepton_core.params import MonitorParams

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    sent = []
    monkeypatch.setattr(monitor_tasks, "emit_event", lambda **kw: sent.append(kw))
    drifted = [
        {
            "status": "drift",
            "champion_version": "3",
            "batch_id": "b-1",
            "scores": {"share_drifted": 0.9},
            "mlflow_run_id": "r1",
        }
    ]
    params = MonitorParams(cooldown_minutes=60)
    assert monitor_tasks.emit_drift_event.fn(drifted, params, "m") == {"emitted": True, "suppressed": None}
    quiet = monitor_tasks.emit_drift_event.fn(drifted, params, "m")  # cool-down: nothing sent, and says until when
    assert quiet["emitted"] is False
    assert (
        quiet["suppressed"].startswith("suppressed: cool-down until ")
        and " UTC (the last event was at " in quiet["suppressed"]
    )
    assert monitor_tasks.emit_drift_event.fn([{**drifted[0], "status": "no drift"}], params, "m") == {
        "emitted": False,
        "suppressed": None,
    }
    event, suppressed = sent
    (spec,) = [
        s for s in deployment_specs(load_params(ROOT / "params.yaml")) if s["entrypoint"] == "flows/retrain.py:retrain"
    ]
    assert spec["triggers"][0]["expect"] == [event["event"]]
    assert event["payload"]["batch_ids"] == ["b-1"] and event["payload"]["model_version"] == "3"
    assert suppressed["event"] == "lepton.drift.suppressed" and suppressed["payload"]["cooldown"] == quiet["suppressed"]
    assert suppressed["payload"]["batch_ids"] == ["b-1"] and "No retrain" in suppressed["payload"]["summary"]


def test_specs_follow_params_overrides():
    params = load_params(ROOT / "params.yaml", ["deploy.retrain_cron=15 4 * * *"])
    (retrain,) = [s for s in deployment_specs(params) if s["entrypoint"].startswith("flows/retrain.py")]
    assert retrain["schedules"][0]["cron"] == "15 4 * * *"


def test_the_sweep_deployment_takes_every_section_and_retrain_takes_no_sweep_section():
    """Each deployment's parameters are exactly what its flow accepts (the server
    enforces the schema): the sweep flow takes `sweep` and `dask`, retrain neither."""
    import inspect

    from flows.retrain import retrain
    from flows.sweep import sweep
    from lepton_core.params import SECTIONS

    specs = {s["entrypoint"]: s for s in deployment_specs(load_params(ROOT / "params.yaml"))}
    for entry, fn in (("flows/retrain.py:retrain", retrain), ("flows/sweep.py:sweep", sweep)):
        assert set(specs[entry]["parameters"]) <= set(inspect.signature(fn.fn).parameters), entry
    assert set(SECTIONS) | {"dask", "progress"} == set(specs["flows/sweep.py:sweep"]["parameters"])
    assert "sweep" not in specs["flows/retrain.py:retrain"]["parameters"]
    assert specs["flows/sweep.py:sweep"]["parameters"]["sweep"]["space"]["train.lr"]["log"] is True
    # what the server checks with enforce_parameter_schema: the form's values against the flow's schema
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    schema = parameter_schema(sweep.fn).model_dump_for_openapi()
    validate(specs["flows/sweep.py:sweep"]["parameters"], schema, raise_on_error=True, preprocess=True)
    bad = json.loads(json.dumps(specs["flows/sweep.py:sweep"]["parameters"]))
    bad["sweep"]["trials"] = "eight"
    with pytest.raises(ValidationError):
        validate(bad, schema, raise_on_error=True, preprocess=True)


def test_a_params_section_reaches_each_flows_form_with_no_other_edit():
    """The flows take their sections from `Params` (takes_sections): the parameter
    schema Prefect builds for a deployment and its dashboard form (parameter_schema of
    the loaded flow, as `prefect deploy` and `lepton deploy` build it) lists every one,
    and a flow run receives them as one Params."""
    import inspect

    from prefect.utilities.callables import parameter_schema

    from flows.retrain import retrain
    from flows.sweep import sweep
    from lepton_core.params import RETRAIN_SECTIONS, SECTIONS, Params

    for fn, sections, rest in ((retrain, RETRAIN_SECTIONS, {"progress"}), (sweep, SECTIONS, {"dask", "progress"})):
        schema = parameter_schema(fn)
        assert set(schema.properties) == set(sections) | rest, fn.name
        assert list(inspect.signature(fn.fn).parameters)[: len(sections)] == list(sections)
        for k in sections:  # each section's form is its model's schema, with its defaults
            assert schema.definitions[Params.model_fields[k].annotation.__name__]
    assert "sweep" not in RETRAIN_SECTIONS and set(SECTIONS) == set(Params.model_fields)


def test_takes_sections_hands_the_flow_one_params_and_a_new_section_appears(monkeypatch):
    from pydantic import BaseModel

    import lepton_core.params as P

    class Extra(BaseModel):
        knob: int = 3

    class Wider(P.Params):
        extra: Extra = Extra()

    monkeypatch.setattr(P, "Params", Wider)
    seen = {}

    @P.takes_sections(tuple(Wider.model_fields))
    def fn(params, progress: bool = True):
        seen["params"], seen["progress"] = params, progress
        return "ok"

    import inspect

    assert "extra" in inspect.signature(fn).parameters  # the new section, with no edit to fn
    assert fn(extra=Extra(knob=5), progress=False) == "ok"
    assert seen["params"].extra.knob == 5 and seen["progress"] is False
    assert seen["params"].train == P.TrainParams()  # the sections not given keep their defaults
