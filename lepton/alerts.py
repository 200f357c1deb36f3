"""Notifications: what `lepton deploy` sets up so that a person is told.

The destination is one webhook URL (`lepton up --alert-webhook URL` or
$LEPTON_ALERT_WEBHOOK, effects.runtime.stack_state.alert_webhook). `lepton deploy`
keeps it in a Prefect Webhook block (`lepton-alerts`: the URL is a secret field) and
(re)creates, by name, one automation per kind of news (`NOTICES`); each calls the
block with a JSON body rendered by Prefect's server from the event:

    lepton-notify-drift            lepton.drift.detected (a retrain starts)
    lepton-notify-drift-suppressed lepton.drift.suppressed (inside the cool-down: no retrain)
    lepton-notify-run-failed       a flow run of Lepton's deployments ended Failed
    lepton-notify-run-crashed      ... Crashed, and Lepton runs it again
    lepton-notify-gave-up          ... Crashed after its reruns: Lepton gave up on it
    lepton-notify-gate-rejected    lepton.gate.rejected (both scores, the p-value)
    lepton-notify-promoted         lepton.gate.promoted

The body is Slack-compatible (`{"text": ...}`) for a Slack URL or with
LEPTON_ALERT_FORMAT=slack, else a generic JSON object (`source`, `kind`, `subject`,
`text`, the event's name and time, its `details` or the `flow_run`).

Why Prefect's CallWebhook action and a Webhook block rather than SendNotification with
a notification block: a CustomWebhookNotificationBlock that cannot connect raises
out of Prefect 3.8's action consumer, which retries the message and then drops it
into its dead-letter folder, with no event; CallWebhook turns a refused, timed-out or
unreachable webhook into a `prefect.automation.action.failed` event (and records the
HTTP status of every call in `prefect.automation.action.executed`), which
`lepton status` reads (`delivery_failures`). A failing webhook never fails a flow:
the flow only emits the event; the server delivers it.
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from effects.runtime.stack_state import alert_format
from lepton_core.alerts import DRIFT_SUPPRESSED_EVENT, GATE_PROMOTED_EVENT, GATE_REJECTED_EVENT, redact_url
from lepton_core.drift import DRIFT_EVENT

BLOCK_NAME = "lepton-alerts"
PREFIX = "lepton-notify-"
SEND_TIMEOUT_S = 10  # `lepton alerts test`
FAILURES_WINDOW = timedelta(hours=24)  # what `lepton status` looks back on


# ---------------------------------------------------------------- what is sent
_RUN = (
    '{% set run_id = event.resource.id | replace("prefect.flow-run.", "") %}'
    "{% set run_name = event.resource.name %}"
    '{% set flow = event.resource_in_role["flow"].name %}'
    '{% set deployment = event.resource_in_role["deployment"].name %}'
    '{% set run_count = event.resource["prefect.run-count"] %}'
    '{% set state = event.resource["prefect.state-name"] %}'
    '{% set message = event.resource["prefect.state-message"] or "no message" %}'
)
_RUN_TEXT = (
    "Flow run {{ run_name }} ({{ run_id }}) of deployment {{ flow }}/{{ deployment }} ended {{ state }} "
    "(run {{ run_count }}): {{ message }}\n{{ url }}"
)
_LEPTON = "{% set p = event.payload %}"


@dataclass(frozen=True)
class Notice:
    """One automation: the events it reacts to and the subject and text it sends
    (Jinja, rendered by Prefect's server with the triggering `event`)."""

    name: str
    kind: str
    expect: tuple[str, ...]
    subject: str
    text: str
    run_count: list[str] = field(default_factory=list)  # flow runs: the prefect.run-count labels matched

    @property
    def flow_runs(self) -> bool:
        return self.expect[0].startswith("prefect.flow-run.")


def notices(crash_retries: int) -> list[Notice]:
    """Every notification; `crash_retries`: how often lepton-retry-crashed reruns a
    crashed run (lepton.deploy.CRASH_RETRIES), so a crash after that is "gave up"."""
    if not 1 <= crash_retries <= 9:  # the "gave up" match is one glob character class
        raise ValueError("crash_retries: 1 to 9")
    drift_subject = "Drift on {{ p.model_name }} v{{ p.model_version }}"
    run_subject = "{{ flow }}/{{ deployment }} run {{ run_name }} "
    return [
        Notice(PREFIX + "drift", "drift", (DRIFT_EVENT,), drift_subject, "{{ p.summary }}"),
        Notice(
            PREFIX + "drift-suppressed",
            "drift_suppressed",
            (DRIFT_SUPPRESSED_EVENT,),
            drift_subject + " (suppressed: cool-down, no retrain)",
            "{{ p.summary }}",
        ),
        Notice(PREFIX + "run-failed", "run_failed", ("prefect.flow-run.Failed",), run_subject + "failed", _RUN_TEXT),
        Notice(
            PREFIX + "run-crashed",
            "run_crashed",
            ("prefect.flow-run.Crashed",),
            run_subject + "crashed",
            _RUN_TEXT + f"\nLepton runs it again (at most {crash_retries} times), from its checkpoint.",
            [str(n) for n in range(1, crash_retries + 1)],
        ),
        Notice(
            PREFIX + "gave-up",
            "gave_up",
            ("prefect.flow-run.Crashed",),
            run_subject + "gave up (crashed {{ run_count }} times)",
            _RUN_TEXT + f"\nIt crashed after {crash_retries} reruns: Lepton gave up on it; start it again by hand.",
            [f"![1-{crash_retries}]"],
        ),
        Notice(
            PREFIX + "gate-rejected",
            "gate_rejected",
            (GATE_REJECTED_EVENT,),
            "{{ p.model_name }} v{{ p.version }} rejected by the promotion gate",
            "{{ p.summary }}",
        ),
        Notice(
            PREFIX + "promoted",
            "promoted",
            (GATE_PROMOTED_EVENT,),
            "{{ p.model_name }} v{{ p.version }} is the new champion",
            "{{ p.summary }}",
        ),
    ]


def body_template(notice: Notice, fmt: str, prefect_ui: str) -> str:
    """The JSON body Prefect's server renders for `notice`: Slack's {"text": ...}, or
    the generic object. `prefect_ui`: the dashboard's address, for a flow run's link."""
    ui = json.dumps(prefect_ui.rstrip("/") + "/runs/flow-run/")  # a string literal to Jinja too
    prelude = _RUN + "{% set url = " + ui + " ~ run_id %}" if notice.flow_runs else _LEPTON
    head = prelude + "{% set subject %}" + notice.subject + "{% endset %}{% set text %}" + notice.text + "{% endset %}"
    if fmt == "slack":
        return head + '{"text": {{ ("*" ~ subject ~ "*\\n" ~ text) | tojson }}}'
    if notice.flow_runs:
        details = (
            '"flow_run": {"id": {{ run_id | tojson }}, "name": {{ run_name | tojson }}, '
            '"flow": {{ flow | tojson }}, "deployment": {{ deployment | tojson }}, '
            '"state": {{ state | tojson }}, "message": {{ message | tojson }}, '
            '"run_count": {{ run_count | tojson }}, "url": {{ url | tojson }}}'
        )
    else:
        details = '"details": {{ p | tojson }}'
    return head + (
        '{"source": "lepton", "kind": "' + notice.kind + '", "subject": {{ subject | tojson }}, '
        '"text": {{ text | tojson }}, "event": {{ event.event | tojson }}, '
        '"occurred": {{ event.occurred.isoformat() | tojson }}, ' + details + "}"
    )


def notification_automations(
    block_id: Any, fmt: str, deployment_ids: list[str], prefect_ui: str, crash_retries: int
) -> list:
    """The automations (Prefect AutomationCore), each calling the webhook block."""
    from datetime import timedelta as td

    from prefect.automations import AutomationCore
    from prefect.events.actions import CallWebhook
    from prefect.events.schemas.automations import EventTrigger, Posture

    ours: dict[str, str | list[str]] = {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{d}" for d in deployment_ids],
    }
    out = []
    for n in notices(crash_retries):
        match: dict[str, str | list[str]] = {"prefect.resource.id": "prefect.flow-run.*" if n.flow_runs else "lepton.*"}
        if n.run_count:
            match["prefect.run-count"] = n.run_count
        trigger = EventTrigger(
            expect=set(n.expect),
            match=match,
            match_related=ours if n.flow_runs else {},
            posture=Posture.Reactive,
            threshold=1,
            within=td(0),
        )
        action = CallWebhook(block_document_id=block_id, payload=body_template(n, fmt, prefect_ui))
        out.append(
            AutomationCore(
                name=n.name, description=f"Tell the alert webhook: {n.kind}.", trigger=trigger, actions=[action]
            )
        )
    return out


def ensure_notifications(
    url: str | None, deployment_ids: list[str], prefect_ui: str, crash_retries: int
) -> dict[str, str]:
    """Replace Lepton's notification automations (by name) and the webhook block; with
    no webhook (`url` None) remove them. Returns {automation name: id}."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        for a in c.read_automations():
            if a.name.startswith(PREFIX):
                c.delete_automation(a.id)
        if not url:
            return {}
        fmt = alert_format(url)
        block = Webhook(url=url, headers={"Content-Type": "application/json"})  # type: ignore[arg-type]
        block_id = block.save(BLOCK_NAME, overwrite=True)
        return {
            a.name: str(c.create_automation(a))
            for a in notification_automations(block_id, fmt, deployment_ids, prefect_ui, crash_retries)
        }


# ---------------------------------------------------------------- `lepton alerts test`
def test_body(fmt: str) -> dict:
    """The one test notification."""
    subject = "Lepton test notification"
    text = f"Sent by `lepton alerts test` from {socket.gethostname()}: Lepton's alerts reach this webhook."
    if fmt == "slack":
        return {"text": f"*{subject}*\n{text}"}
    at = datetime.now(UTC).isoformat(timespec="seconds")
    return {"source": "lepton", "kind": "test", "subject": subject, "text": text, "event": None, "occurred": at}


def send_test(url: str, timeout: float = SEND_TIMEOUT_S) -> str:
    """POST the test notification; its HTTP status ("HTTP 200"), or LeptonError
    saying why it did not arrive (never the URL's secret part)."""
    fmt = alert_format(url)
    req = urllib.request.Request(
        url,
        data=json.dumps(test_body(fmt)).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "lepton-alerts"},
        method="POST",
    )
    where = redact_url(url)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        raise DeliveryFailed(f"the test notification did not reach {where}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", None) or e
        raise DeliveryFailed(f"the test notification did not reach {where}: {_safe(str(why))}") from None


class DeliveryFailed(Exception):
    """The webhook did not take the notification (exit 1: not the user's input)."""


def _safe(text: str) -> str:
    """A message with every URL in it redacted."""
    return re.sub(r"https?://[^\s'\"()]+", lambda m: redact_url(m.group(0)), text)


# ---------------------------------------------------------------- `lepton status`
def delivery_failures(api_url: str, auth_string: str | None, timeout: float = 3.0) -> dict | None:
    """The notifications of the last 24 h that did not reach the webhook, from the
    Prefect server's action events (one request). None when there were none, or the
    server did not answer in `timeout` seconds (status must stay quick)."""
    since = (datetime.now(UTC) - FAILURES_WINDOW).isoformat()
    body = {
        "filter": {
            "occurred": {"since": since},
            "event": {"name": ["prefect.automation.action.failed", "prefect.automation.action.executed"]},
            "resource": {"labels": {"prefect.resource.name": [PREFIX + "*"]}},
            "order": "DESC",
        },
        "limit": 50,  # the API's most per page; enough to say "failing"
    }
    headers = {"Content-Type": "application/json"}
    if auth_string:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(auth_string.encode()).decode()
    req = urllib.request.Request(
        api_url.rstrip("/") + "/events/filter", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            events = json.loads(r.read()).get("events", [])
    except (OSError, ValueError):
        return None
    return summarize_deliveries(events)


def summarize_deliveries(events: list[dict]) -> dict | None:
    """{failed, delivered, latest: {at, automation, reason}} over the action events
    (newest first); None when none failed."""
    failed, delivered = [], 0
    for e in events:
        status = (e.get("payload") or {}).get("status_code")
        if e["event"].endswith(".failed"):
            failed.append((e, _safe(str(e["payload"].get("reason", "failed")))))
        elif isinstance(status, int) and status >= 400:
            failed.append((e, f"HTTP {status}"))
        else:
            delivered += 1
    if not failed:
        return None
    latest, reason = failed[0]
    return {
        "failed": len(failed),
        "delivered": delivered,
        "latest": {
            "at": latest["occurred"],
            "automation": latest["resource"].get("prefect.resource.name"),
            "reason": reason,
        },
    }
