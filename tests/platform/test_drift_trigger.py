"""The retrain a drift event starts: the deployment's trigger renders the event's
`retrain_init` into `train.init_from` (monitor.retrain_init: champion makes the
retrain a warm start), through Prefect's own server-side rendering."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from lepton.deploy import drift_trigger_parameters
from lepton_core.drift import DRIFT_EVENT, drift_payload_fields, retrain_init_from
from lepton_core.params import MonitorParams, Params, TrainParams


def _rendered(parameters: dict, payload: dict) -> dict:
    """The parameters Prefect's server hands the triggered run: its RunDeployment action
    renders the trigger's parameters against the event, and the deployment's own are
    overlaid key by key at the top level (prefect/server/api/deployments.py)."""
    from prefect.server.events.actions import RunDeployment
    from prefect.server.events.schemas.automations import Automation, EventTrigger, Posture, TriggeredAction
    from prefect.server.events.schemas.events import ReceivedEvent

    action = RunDeployment(source="selected", deployment_id=uuid.uuid4(), parameters=parameters)
    trigger = EventTrigger(expect={DRIFT_EVENT}, posture=Posture.Reactive, threshold=1)
    automation = Automation(name="lepton-retrain-on-drift", trigger=trigger, actions=[action])
    event = ReceivedEvent(
        occurred=datetime.now(UTC),
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": "lepton.model.m"},
        payload=payload,
        id=uuid.uuid4(),
    )
    fired = TriggeredAction(
        automation=automation,
        triggered=datetime.now(UTC),
        triggering_labels={},
        triggering_event=event,
        action=action,
    )
    return asyncio.run(action.render_parameters(fired))


@pytest.mark.parametrize(
    ("retrain_init", "deployed", "expected"),
    [
        ("champion", None, "champion"),
        ("champion", "models:/m/3", "champion"),
        ("scratch", None, None),
        ("scratch", "models:/m/3", "models:/m/3"),
        (None, "weights/{{odd}}.pt", "weights/{{odd}}.pt"),  # a path is never read as a template
    ],
)
def test_the_triggered_retrain_receives_init_from_the_event(retrain_init, deployed, expected):
    train = TrainParams(epochs=7, width=48, init_from=deployed).model_dump(mode="json")
    deployment = {"train": train, "monitor": MonitorParams().model_dump(mode="json"), "progress": True}
    payload = drift_payload_fields(retrain_init) if retrain_init else {}
    run_params = {**deployment, **_rendered(drift_trigger_parameters(train), payload)}
    assert run_params["train"]["init_from"] == expected == retrain_init_from(payload, deployed)
    # the rest of the section is the deployment's, and the run's params validate
    assert {k: v for k, v in run_params["train"].items() if k != "init_from"} == {
        k: v for k, v in train.items() if k != "init_from"
    }
    params = Params(train=run_params["train"], monitor=run_params["monitor"])
    assert params.train.init_from == expected and params.train.epochs == 7
