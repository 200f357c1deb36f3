"""Monitor tasks: find new batches, check each for drift, emit the drift event,
publish the summary. The checking itself is effects.monitoring.monitor.check_batch."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from effects.monitoring.monitor import (
    REPORT_ARTIFACT,
    check_batch,
    claim_new,
    cooldown_line,
    new_batches,
    prediction_log_window,
    record_event_outcome,
    s3_batches,
)
from effects.runtime.settings import get_settings
from effects.state import monitor_state
from effects.tracking.summaries import monitor_markdown
from lepton_core.alerts import DRIFT_SUPPRESSED_EVENT, drift_summary
from lepton_core.drift import DRIFT_EVENT, drift_payload_fields
from lepton_core.params import MonitorParams


@task(name="find-new-batches")
def find_new_batches(inbox: str | None, prediction_log: bool = True, min_rows: int = 50) -> list[str]:
    """New batches in the inbox; with the default inbox also the model server's
    prediction log, in a window of the part files no run has checked yet. Each is
    claimed for this run (shared state when configured): two workers running at
    once get disjoint lists."""
    s = get_settings()
    if inbox and inbox.startswith("s3://"):
        done = monitor_state.processed(s)
        fresh = [b for b in s3_batches(inbox, s) if b.rsplit("/", 1)[-1] not in done]
        mine = set(monitor_state.claim_batches(s, [b.rsplit("/", 1)[-1] for b in fresh]))
        return [b for b in fresh if b.rsplit("/", 1)[-1] in mine]
    root = Path(inbox).expanduser() if inbox else s.home / "monitor" / "inbox"
    found = new_batches(root, s)
    if not inbox and prediction_log:
        prediction_log_window(s, min_rows)
        found += new_batches(s.home / "monitor" / "windows", s)
    # claimed: a second worker running now gets the others, never these
    return [str(p) for p in claim_new(found, s)]


@task(name="check-batch", retries=1, retry_delay_seconds=5, timeout_seconds=1800)
def check_batch_task(
    batch: str, fmt: str | None, params: MonitorParams, model_name: str, experiment: str, from_inbox: bool = True
) -> dict:
    r = check_batch(batch, fmt, params, model_name, experiment, flow_run_id=str(flow_run.id or ""))
    if from_inbox:  # a batch named on the command line leaves the inbox's record alone
        s3 = batch.startswith("s3://")
        monitor_state.mark_processed(get_settings(), [batch.rsplit("/", 1)[-1] if s3 else r.batch_id])
    return asdict(r)


@task(name="emit-drift-event")
def emit_drift_event(results: list[dict], params: MonitorParams, model_name: str) -> dict:
    """One `lepton.drift.detected` event for the drifted batches, unless in cool-down:
    then one `lepton.drift.suppressed` event (a notification, no retrain).
    Returns {"emitted": bool, "suppressed": None or "suppressed: cool-down until
    HH:MM UTC (...)"}; the drifted batches' monitoring runs say which (a tag). The
    payload carries `monitor.retrain_init`: the retrain the event triggers starts from
    the champion's weights when it is "champion" (lepton.deploy.drift_trigger_parameters),
    and `summary`, the text the notification sends (lepton_core.alerts)."""
    drifted = [r for r in results if r["status"] == "drift"]
    if not drifted:
        return {"emitted": False, "suppressed": None}
    payload = {
        "model_name": model_name,
        "model_version": drifted[0]["champion_version"],
        "batch_ids": [r["batch_id"] for r in drifted],
        "scores": {r["batch_id"]: r["scores"] for r in drifted},
        "mlflow_run_ids": [r["mlflow_run_id"] for r in drifted],
        "report_urls": {r["batch_id"]: r.get("report_url") for r in drifted},
        **drift_payload_fields(params.retrain_init),
    }
    cooldown = monitor_state.claim_event_or_cooldown(get_settings(), params.cooldown_minutes, payload)
    line = cooldown_line(*cooldown) if cooldown is not None else None
    summary = drift_summary(model_name, payload["model_version"], drifted, line)
    _emit(
        DRIFT_EVENT if line is None else DRIFT_SUPPRESSED_EVENT,
        model_name,
        {**payload, "summary": summary, **({"cooldown": line} if line else {})},
    )
    record_event_outcome(payload["mlflow_run_ids"], line or "emitted")
    return {"emitted": line is None, "suppressed": line}


def _emit(name: str, model_name: str, payload: dict) -> None:
    emit_event(
        event=name,
        resource={"prefect.resource.id": f"lepton.model.{model_name}", "prefect.resource.name": model_name},
        payload=payload,
    )


@task(name="publish-monitor-summary")
def publish_monitor_summary(results: list[dict], model_name: str, event: dict) -> str:
    md = monitor_markdown(results, model_name, event, get_settings().tracking_uri, REPORT_ARTIFACT)
    create_markdown_artifact(markdown=md, key="lepton-monitor-summary", description=f"{model_name} drift")
    return md
