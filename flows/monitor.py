"""The monitor flow: new batches -> Evidently report -> verdict -> drift event."""

from __future__ import annotations

from prefect import flow

from lepton_core.params import MonitorParams, RegistryParams
from tasks.monitor import check_batch_task, emit_drift_event, find_new_batches, publish_monitor_summary


@flow(name="monitor", log_prints=True)
def monitor(
    batch: str | None = None,
    batch_format: str | None = None,
    monitor: MonitorParams = MonitorParams(),
    registry: RegistryParams = RegistryParams(),
) -> dict:
    """Check one batch (`batch`), or every unprocessed batch in the inbox, for drift
    against the champion; emit `lepton.drift.detected` when the thresholds say so. The
    event carries `monitor.retrain_init`, which makes the retrain it triggers a warm
    start from the champion ("champion") or leaves it as deployed ("scratch")."""
    batches = [batch] if batch else find_new_batches(monitor.inbox, monitor.prediction_log, monitor.min_rows)
    results = [
        check_batch_task(b, batch_format, monitor, registry.model_name, registry.experiment, from_inbox=batch is None)
        for b in batches
    ]
    event = emit_drift_event(results, monitor, registry.model_name)
    publish_monitor_summary(results, registry.model_name, event)
    return {"results": results, "event_emitted": event["emitted"], "event_suppressed": event["suppressed"]}
