"""Someone is told, on the SQLite stack whose alert webhook is the package's local
receiver (`lepton up --alert-webhook`): a drifted batch, a drifted batch inside the
cool-down (no retrain), a deployment run that fails, and the promotion gate's
decisions each arrive as a notification, sent by Prefect's server through the
automations `lepton deploy` made."""

from __future__ import annotations

import json
import time

import pytest

from tests.live.conftest import deploy_and_run_retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(live_sqlite):
    assert live_sqlite.receiver is not None, "the package's stack has the receiver as its alert webhook"
    return live_sqlite


# the retrain a drift starts here: one epoch on 64 samples, from scratch, judged against
# the champion with no tolerance, so the gate rejects it (with both scores and a p-value)
CHEAP_RETRAIN = [
    *("--set", "train.epochs=1", "--set", "train.max_train_samples=64"),
    *("--set", "promote.min_accuracy=0", "--set", "promote.tolerance=0"),
]


@pytest.fixture(scope="module")
def deployed(live):
    run = deploy_and_run_retrain(live)  # a champion to monitor
    r = live.cli("deploy", *CHEAP_RETRAIN)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "notifications to http://127.0.0.1:" in r.stdout and "/hook" not in r.stdout, r.stdout
    yield run
    r = live.cli("deploy")  # params.yaml's deployments again, for the package's other modules
    assert r.returncode == 0, r.stderr[-3000:]


def _deployment(live, name: str) -> dict:
    return live.get(f"{live.prefect_api}/deployments/name/{name}")


def _start(live, name: str, parameters: dict) -> dict:
    dep = _deployment(live, name)
    return live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})


def _retrains(live) -> set[str]:
    """The retrain runs someone or something started (not the cron's future ones)."""
    dep = _deployment(live, "retrain/lepton")
    runs = live.post(f"{live.prefect_api}/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
    return {r["id"] for r in runs if not r["auto_scheduled"]}


def _notice(live, kind: str, match, since: int, timeout: float = 60) -> dict:
    """The first notification of `kind` after the first `since` posts that `match` accepts."""

    def ok(text: str) -> bool:
        body = json.loads(text)
        return isinstance(body, dict) and body.get("kind") == kind and match(body)

    return json.loads(live.receiver.wait_for(ok, timeout=timeout, since=since))


def _monitor(live, batch: str, cooldown_minutes: float) -> None:
    r = live.cli(
        "simulate-drift",
        "--kind",
        "rotate",
        "--strength",
        "high",
        "--out",
        str(live.home / "monitor" / "inbox" / batch),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    monitor = _deployment(live, "monitor/lepton")["parameters"]["monitor"]
    fr = _start(live, "monitor/lepton", {"monitor": {**monitor, "cooldown_minutes": cooldown_minutes}})
    done = live.wait_flow_run(fr["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]


def test_drift_suppressed_drift_a_failed_run_and_the_gate_reach_the_webhook(live, deployed):
    rx, start = live.receiver, len(live.receiver.posts)
    before = _retrains(live)

    # 1. a drifted batch (cool-down 0: drift earlier in the package does not hold it back)
    _monitor(live, "alerts-b1", 0)
    drift = _notice(live, "drift", lambda b: any(i.startswith("alerts-b1") for i in b["details"]["batch_ids"]), start)
    (bid,) = [i for i in drift["details"]["batch_ids"] if i.startswith("alerts-b1")]
    report = drift["details"]["report_urls"][bid]
    assert report.startswith(f"{live.mlflow}/#/experiments/") and report.endswith(
        "/artifactPath/monitoring/report.html"
    )
    assert drift["subject"].startswith("Drift on lepton-digits v") and bid in drift["text"] and report in drift["text"]
    deadline = time.monotonic() + 60
    while not (_retrains(live) - before) and time.monotonic() < deadline:
        time.sleep(1)
    triggered = _retrains(live) - before
    assert len(triggered) == 1, "the drift event started no retrain"

    # 2. another one inside the cool-down: told, and no retrain starts
    mark = len(rx.posts)
    _monitor(live, "alerts-b2", 600)
    quiet = _notice(
        live, "drift_suppressed", lambda b: any(i.startswith("alerts-b2") for i in b["details"]["batch_ids"]), mark
    )
    assert (
        "(suppressed: cool-down, no retrain)" in quiet["subject"]
        and "No retrain: drift event suppressed" in quiet["text"]
    )
    time.sleep(3)  # the trigger would have reacted by now, as the notification did
    assert _retrains(live) - before == triggered

    # 3. a deployment run that fails (no such version): the deployment and the run are named
    mark = len(rx.posts)
    fr = _start(live, "promote/lepton", {"version": "999"})
    assert live.wait_flow_run(fr["id"])["state"]["type"] == "FAILED"
    failed = _notice(live, "run_failed", lambda b: b["flow_run"]["id"] == fr["id"], mark)
    assert failed["subject"] == f"promote/lepton run {fr['name']} failed"
    assert failed["flow_run"]["url"] == f"{live.prefect_api.removesuffix('/api')}/runs/flow-run/{fr['id']}"

    # 4. the gate rejects the retrain the drift started: both scores and the p-value
    (run_id,) = triggered
    assert live.wait_flow_run(run_id)["state"]["type"] == "COMPLETED"
    rejected = _notice(live, "gate_rejected", lambda b: True, start)
    version, details = rejected["details"]["version"], rejected["details"]
    assert rejected["subject"] == f"lepton-digits v{version} rejected by the promotion gate"
    assert details["challenger_accuracy"] < details["champion_accuracy"] and details["p_value"] is not None
    assert f"p-value {details['p_value']:.4g}" in rejected["text"]

    # every notification went through: `lepton status` has no alerts line
    r = live.cli("status")
    assert r.returncode == 0 and "alerts:" not in r.stdout, r.stdout + r.stderr
