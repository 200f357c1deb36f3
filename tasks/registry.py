"""Registry tasks: register a trained model, run the promotion gate, roll back.

One registry change at a time across every worker: the Prefect global concurrency
limit `lepton-registry` (created by `lepton deploy`, limit 1); the file lock inside
effects.tracking.registry still serialises changes on one machine.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

from prefect import task
from prefect.runtime import flow_run

from effects.data.dvc_store import DataVersion, dataset_path
from effects.runtime.retry import not_user_error
from effects.runtime.settings import get_settings
from effects.serving.live_log import live_evidence
from effects.tracking import runs, tags
from effects.tracking.model_report import report_line, report_url
from effects.tracking.registry import log_and_register, promote_version, rollback_champion
from effects.tracking.variants import follow_champion
from lepton_core.data.prepare import read_prepared
from lepton_core.params import Params, PromoteParams
from tasks.train import TrainOutcome

REGISTRY_LIMIT = "lepton-registry"


def registry_slot():
    """The `lepton-registry` concurrency slot; where the limit does not exist (no
    deploy yet) this passes straight through."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            c.read_global_concurrency_limit_by_name(REGISTRY_LIMIT)
        except ObjectNotFound:
            return nullcontext()
    return concurrency(REGISTRY_LIMIT, occupy=1, timeout_seconds=1800, strict=True)


def headline_tags(metrics: dict[str, float]) -> dict[str, str]:
    """The version's headline test figures as tags: accuracy, or RMSE and R²."""
    if "test_rmse" in metrics:
        return {
            tags.TASK: "regression",
            tags.TEST_RMSE: f"{metrics['test_rmse']:.6g}",
            tags.TEST_R2: f"{metrics['test_r2']:.4f}",
        }
    return {tags.TEST_ACCURACY: f"{metrics['test_accuracy']:.4f}"}


@task(name="register", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=900)
def register(outcome: TrainOutcome, data: DataVersion, params: Params, metrics: dict[str, float]) -> str:
    """Log the model as a pyfunc (raw samples in) and register it. A few tags on
    the version; the full provenance goes into its description as JSON."""
    s = get_settings()
    prepared = read_prepared(dataset_path(data.version, s))
    commit = runs.git_commit(s.project_dir)
    run_flow = str(flow_run.id or "")
    version_tags = {
        tags.RUN_ID: outcome.run_id,
        tags.DATA_VERSION: data.version,
        tags.GIT_COMMIT: commit,
        tags.FLOW_RUN: run_flow,
        **headline_tags(metrics),
        **({tags.INIT_FROM: outcome.init_from} if outcome.init_from else {}),
    }
    provenance = {
        "run_id": outcome.run_id,
        "data_version": data.version,
        "git_commit": commit,
        "prefect_flow_run_id": run_flow,
        "init_from": outcome.init_from or None,
        "monitored_batches": data.meta.get("monitored_batches", []),
        "metrics": metrics,
        "params": params.model_dump(mode="json"),
    }
    description = "Provenance:\n\n```json\n" + json.dumps(provenance, indent=1, sort_keys=True) + "\n```"
    if params.evaluate.report:  # the evaluate task logged the model report on the run
        run = runs.client(s).get_run(outcome.run_id)
        description = report_line(report_url(s.tracking_uri, run)) + "\n\n" + description
    return log_and_register(
        outcome.run_id, outcome.checkpoint, prepared, params.registry.model_name, version_tags, description, s
    )


@task(name="promote", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=1800, retry_condition_fn=not_user_error)
def promote(
    model_name: str, version: str | None, params: PromoteParams, force: bool = False, challenger_only: bool = False
) -> dict:
    """The gate for `version` (None: the @challenger); `challenger_only` (a retrain in
    promote.mode shadow): a version that passes becomes @challenger, not @champion."""
    with registry_slot():
        result = promote_version(
            model_name, version, params, force, challenger_only=challenger_only, live_evidence=live_evidence
        )
        # @champion-onnx / @champion-int8 follow the champion (or go, until it has variants)
        moved = follow_champion(model_name)
        if moved:
            result["variant_aliases"] = moved
    if not result.get("challenger"):  # a challenger waits for `lepton promote`: no decision to announce yet
        emit_gate_event(model_name, result)
    return result


def emit_gate_event(model_name: str, result: dict) -> None:
    """`lepton.gate.rejected` or `lepton.gate.promoted` (both scores, the p-value and
    the reason), which the notification automations of `lepton deploy` send on."""
    from prefect.events import emit_event

    from lepton_core.alerts import gate_event

    found = gate_event(model_name, result)
    if found is not None:
        name, payload = found
        resource = {"prefect.resource.id": f"lepton.model.{model_name}", "prefect.resource.name": model_name}
        emit_event(event=name, resource=resource, payload=payload)


@task(name="rollback", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=600, retry_condition_fn=not_user_error)
def rollback(model_name: str) -> dict:
    with registry_slot():
        result = rollback_champion(model_name)
        moved = follow_champion(model_name)
        if moved:
            result["variant_aliases"] = moved
        return result
