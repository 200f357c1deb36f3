"""prefect.yaml is what `lepton deploy` registers: generated from the same specs and
kept in step with params.yaml. (The live tests deploy it for real and compare.)"""

from __future__ import annotations

import yaml

from flows.deploy import DRIFT_EVENT, deployment_specs, render_prefect_yaml
from lepton_core.params import load_params
from tests.conftest import ROOT


def test_committed_prefect_yaml_matches_params_yaml():
    expected = render_prefect_yaml(load_params(ROOT / "params.yaml"))
    assert (ROOT / "prefect.yaml").read_text() == expected, (
        "prefect.yaml is stale: run `lepton deploy --write-prefect-yaml prefect.yaml`")


def test_prefect_yaml_names_every_flow_once_with_its_schedule():
    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert doc["build"] is None and doc["push"] is None and "pull" not in doc  # pull from the project folder
    by_entry = {d["entrypoint"]: d for d in doc["deployments"]}
    assert set(by_entry) == {"flows/retrain.py:retrain", "flows/registry.py:promote_flow",
                             "flows/registry.py:rollback_flow", "flows/monitor.py:monitor"}
    params = load_params(ROOT / "params.yaml")
    assert by_entry["flows/retrain.py:retrain"]["schedules"] == [
        {"cron": params.deploy.retrain_cron, "timezone": params.deploy.timezone}]
    assert by_entry["flows/monitor.py:monitor"]["schedules"][0]["cron"] == params.monitor.cron
    assert "schedules" not in by_entry["flows/registry.py:promote_flow"]
    (trigger,) = by_entry["flows/retrain.py:retrain"]["triggers"]
    assert trigger["expect"] == [DRIFT_EVENT] and trigger["posture"] == "Reactive"
    assert all(d["work_pool"]["name"] == "lepton" for d in doc["deployments"])


def test_the_trigger_listens_for_the_event_the_monitor_emits():
    from tasks.monitor import EVENT

    assert DRIFT_EVENT == EVENT


def test_specs_follow_params_overrides():
    params = load_params(ROOT / "params.yaml", ["deploy.retrain_cron=15 4 * * *"])
    (retrain,) = [s for s in deployment_specs(params) if s["entrypoint"].startswith("flows/retrain.py")]
    assert retrain["schedules"][0]["cron"] == "15 4 * * *"
