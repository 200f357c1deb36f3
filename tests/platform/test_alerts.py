"""Notifications (lepton.alerts): the automations `lepton deploy` makes, the bodies
Prefect's server renders from each event, `lepton alerts test`, and a webhook that
cannot be reached turning into an event that `lepton status` reports."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import pytest

from effects.runtime.procs import free_port
from lepton.alerts import (
    PREFIX,
    alert_format,
    body_template,
    delivery_failures,
    ensure_notifications,
    notices,
    notification_automations,
    summarize_deliveries,
)
from lepton.cli import render
from lepton_core.alerts import DRIFT_SUPPRESSED_EVENT, GATE_REJECTED_EVENT, drift_summary, gate_event
from lepton_core.drift import DRIFT_EVENT
from tests.conftest import run_cli
from tests.live.receiver import Receiver

UI = "http://127.0.0.1:4200"
DEPLOYMENT = str(uuid.uuid4())
REPORT = "http://127.0.0.1:5000/#/experiments/2/runs/abc/artifactPath/monitoring/report.html"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _event(name: str, resource: dict, payload: dict | None = None, related: list | None = None):
    from prefect.server.events.schemas.events import ReceivedEvent

    return ReceivedEvent(
        occurred=datetime.now(UTC),
        event=name,
        resource=resource,
        related=related or [],
        payload=payload or {},
        id=uuid.uuid4(),
    )


def _run_event(state: str, run_count: int):
    run_id = str(uuid.uuid4())
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run_id}",
        "prefect.resource.name": "crafty-owl",
        "prefect.run-count": str(run_count),
        "prefect.state-message": "Flow run encountered an exception: LeptonError: no version 999",
        "prefect.state-name": state,
        "prefect.state-type": state.upper(),
    }
    related = [
        {
            "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": "promote",
        },
        {
            "prefect.resource.id": f"prefect.deployment.{DEPLOYMENT}",
            "prefect.resource.role": "deployment",
            "prefect.resource.name": "lepton",
        },
    ]
    return run_id, _event(f"prefect.flow-run.{state}", resource, {}, related)


def _render(template: str, event) -> dict:
    """The body as Prefect's server renders it (CallWebhook's Jinja environment)."""
    from prefect.server.utilities.user_templates import render_user_template

    return json.loads(asyncio.run(render_user_template(template, {"event": event})))


def _notice(name: str):
    (n,) = [n for n in notices(3) if n.name == PREFIX + name]
    return n


def _drift_payload(cooldown: str | None = None) -> dict:
    drifted = [
        {
            "batch_id": 'b2-"high"',
            "verdict": "drift: 90% of features drifted",
            "scores": {"share_drifted": 0.9},
            "mlflow_run_id": "abc",
            "report_url": REPORT,
        }
    ]
    return {
        "model_name": "lepton-digits",
        "model_version": "4",
        "batch_ids": ['b2-"high"'],
        "report_urls": {'b2-"high"': REPORT},
        "summary": drift_summary("lepton-digits", "4", drifted, cooldown),
        **({"cooldown": cooldown} if cooldown else {}),
    }


def test_one_automation_per_kind_and_a_crash_is_either_rerun_or_given_up():
    from prefect.server.events.schemas.events import matches

    names = [n.name for n in notices(3)]
    assert names == [
        PREFIX + k
        for k in ("drift", "drift-suppressed", "run-failed", "run-crashed", "gave-up", "gate-rejected", "promoted")
    ]
    crashed, gave_up = _notice("run-crashed"), _notice("gave-up")
    for count in range(1, 13):
        rerun = any(matches(p, str(count)) for p in crashed.run_count)
        given_up = any(matches(p, str(count)) for p in gave_up.run_count)
        assert rerun != given_up and rerun == (count <= 3), count
    automations = notification_automations(uuid.uuid4(), "json", [DEPLOYMENT], UI, 3)  # the templates validate
    by_name = {a.name: a for a in automations}
    run = by_name[PREFIX + "run-failed"].trigger
    assert run.match_related["prefect.resource.id"] == [f"prefect.deployment.{DEPLOYMENT}"]
    assert by_name[PREFIX + "drift"].trigger.expect == {DRIFT_EVENT}
    assert by_name[PREFIX + "drift-suppressed"].trigger.expect == {DRIFT_SUPPRESSED_EVENT}
    assert all(a.actions[0].type == "call-webhook" for a in automations)


def test_drift_bodies_carry_the_batch_and_the_report_link_in_both_formats():
    event = _event(DRIFT_EVENT, {"prefect.resource.id": "lepton.model.lepton-digits"}, _drift_payload())
    body = _render(body_template(_notice("drift"), "json", UI), event)
    assert body["source"] == "lepton" and body["kind"] == "drift" and body["event"] == DRIFT_EVENT
    assert body["subject"] == "Drift on lepton-digits v4"
    assert 'b2-"high"' in body["text"] and REPORT in body["text"] and "A retrain starts" in body["text"]
    assert body["details"]["report_urls"] == {'b2-"high"': REPORT}
    slack = _render(body_template(_notice("drift"), "slack", UI), event)
    assert list(slack) == ["text"]
    assert slack["text"].startswith("*Drift on lepton-digits v4*\n1 drifted batch on") and REPORT in slack["text"]

    line = "suppressed: cool-down until 10:00 UTC (the last event was at 09:30 UTC)"
    quiet = _event(DRIFT_SUPPRESSED_EVENT, {"prefect.resource.id": "lepton.model.m"}, _drift_payload(line))
    body = _render(body_template(_notice("drift-suppressed"), "json", UI), quiet)
    assert body["subject"] == "Drift on lepton-digits v4 (suppressed: cool-down, no retrain)"
    assert f"No retrain: drift event {line}." in body["text"]


def test_a_failed_run_names_its_deployment_run_and_link():
    run_id, event = _run_event("Failed", 1)
    body = _render(body_template(_notice("run-failed"), "json", UI), event)
    assert body["subject"] == "promote/lepton run crafty-owl failed"
    assert body["flow_run"] == {
        "id": run_id,
        "name": "crafty-owl",
        "flow": "promote",
        "deployment": "lepton",
        "state": "Failed",
        "message": "Flow run encountered an exception: LeptonError: no version 999",
        "run_count": "1",
        "url": f"{UI}/runs/flow-run/{run_id}",
    }
    _, crash = _run_event("Crashed", 4)
    slack = _render(body_template(_notice("gave-up"), "slack", UI), crash)
    assert slack["text"].startswith("*promote/lepton run crafty-owl gave up (crashed 4 times)*")
    assert "Lepton gave up on it" in slack["text"]


def test_a_gate_rejection_body_has_both_scores_and_the_p_value():
    result = {
        "version": "7",
        "promoted": False,
        "forced": False,
        "reason": "significantly worse than champion (McNemar p=0.003 < 0.05)",
        "challenger_accuracy": 0.9,
        "champion_accuracy": 0.95,
        "p_value": 0.003,
        "champion": "6",
        "previous": "5",
    }
    name, payload = gate_event("lepton-digits", result)
    body = _render(
        body_template(_notice("gate-rejected"), "json", UI),
        _event(name, {"prefect.resource.id": "lepton.model.x"}, payload),
    )
    assert body["subject"] == "lepton-digits v7 rejected by the promotion gate"
    assert "challenger accuracy 0.9, champion accuracy 0.95, p-value 0.003" in body["text"]
    assert body["details"]["p_value"] == 0.003


def test_the_format_follows_the_url_unless_told(monkeypatch):
    monkeypatch.delenv("LEPTON_ALERT_FORMAT", raising=False)
    assert alert_format("https://hooks.slack.com/services/T/B/C") == "slack"
    assert alert_format("https://alerts.example.com/hook") == "json"
    monkeypatch.setenv("LEPTON_ALERT_FORMAT", "slack")
    assert alert_format("https://alerts.example.com/hook") == "slack"


def test_failed_deliveries_summarised_for_status():
    def ev(name, status=None, reason=None, at="2026-12-07T10:42:00Z"):
        payload = {"status_code": status} if status else {"reason": reason}
        return {
            "event": name,
            "occurred": at,
            "resource": {"prefect.resource.name": PREFIX + "drift"},
            "payload": payload,
        }

    ok = "prefect.automation.action.executed"
    assert summarize_deliveries([ev(ok, 200), ev(ok, 204)]) is None
    f = summarize_deliveries(
        [
            ev(
                "prefect.automation.action.failed", reason="Webhook call failed: ConnectError('x http://h.example/sec')"
            ),
            ev(ok, 500),
            ev(ok, 200),
        ]
    )
    assert f["failed"] == 2 and f["delivered"] == 1 and "sec" not in f["latest"]["reason"]
    line = render.alert_failures_line(f)
    assert line.startswith(
        "alerts: 2 of the last 3 notifications did not reach the webhook (latest 2026-12-07 10:42 UTC"
    )
    assert "h.example/…" in line and "`lepton alerts test`" in line


def test_alerts_test_sends_one_notification_and_says_where(receiver, tmp_path):
    env = {"LEPTON_HOME": str(tmp_path / "home"), "LEPTON_ALERT_WEBHOOK": receiver.url, "LEPTON_ALERT_FORMAT": ""}
    r = run_cli(["alerts", "test"], env, timeout=60)
    assert r.returncode == 0, r.stderr
    port = receiver.url.split(":")[2].split("/")[0]
    assert r.stdout.strip() == f"sent a test notification to http://127.0.0.1:{port}/… (generic JSON): HTTP 200"
    (post,) = receiver.posts
    assert post["path"] == "/hook" and post["body"]["kind"] == "test" and post["body"]["source"] == "lepton"

    r = run_cli(["alerts", "test"], {**env, "LEPTON_ALERT_FORMAT": "slack"}, timeout=60)
    assert r.returncode == 0 and "(Slack JSON)" in r.stdout
    assert list(receiver.posts[1]["body"]) == ["text"]

    dead = f"http://127.0.0.1:{free_port()}/secret-path"
    r = run_cli(["alerts", "test"], {**env, "LEPTON_ALERT_WEBHOOK": dead}, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: the test notification did not reach http://127.0.0.1:")
    assert "secret-path" not in r.stderr + r.stdout and len(r.stderr.strip().splitlines()) == 1

    r = run_cli(["alerts", "test"], {**env, "LEPTON_ALERT_WEBHOOK": ""}, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: no alert webhook:")


def _wait(cond, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = cond()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_the_server_delivers_and_a_dead_webhook_becomes_a_status_line(prefect_server, receiver):
    """On a real Prefect server: an event reaches the receiver through the automation;
    pointed at a port nobody listens on, the delivery fails as an event, which
    `delivery_failures` (what `lepton status` shows) reports; no webhook, no automations."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    def gate(version: str) -> None:
        name, payload = gate_event("m", {"version": version, "promoted": False, "forced": False, "reason": "worse"})
        emit_event(event=name, resource={"prefect.resource.id": "lepton.model.m"}, payload=payload)

    ids = ensure_notifications(receiver.url, [DEPLOYMENT], UI, 3)
    assert sorted(ids) == sorted(n.name for n in notices(3))
    time.sleep(1)  # the triggers service loads new automations
    gate("11")
    text = receiver.wait_for(lambda t: "m v11 rejected" in t, timeout=30)
    assert json.loads(text)["event"] == GATE_REJECTED_EVENT

    ensure_notifications(f"http://127.0.0.1:{free_port()}/dead", [DEPLOYMENT], UI, 3)  # replaced by name
    time.sleep(1)
    gate("12")
    failures = _wait(lambda: delivery_failures(prefect_server, None))
    assert failures["failed"] >= 1 and failures["latest"]["automation"] == PREFIX + "gate-rejected"
    assert "ConnectError" in failures["latest"]["reason"] and "/dead" not in failures["latest"]["reason"]
    assert not [t for t in receiver.texts() if "v12" in t]

    assert ensure_notifications(None, [DEPLOYMENT], UI, 3) == {}
    with get_client(sync_client=True) as c:
        assert not [a for a in c.read_automations() if a.name.startswith(PREFIX)]


def test_deploy_says_where_notifications_go_or_that_none_are_sent():
    assert render.alert_deploy_lines(None, None, []) == [
        "notifications: off (no alert webhook; `lepton up --alert-webhook URL` or LEPTON_ALERT_WEBHOOK, "
        "then `lepton deploy`)"
    ]
    (line,) = render.alert_deploy_lines("https://hooks.slack.com/…", "slack", [n.name for n in notices(3)])
    assert line == (
        "notifications to https://hooks.slack.com/… (Slack JSON): drift, drift-suppressed, run-failed, "
        "run-crashed, gave-up, gate-rejected, promoted"
    )
