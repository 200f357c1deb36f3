"""The optimize task: ONNX and int8 variants of a registered version (after a
promotion in the retrain flow, or on demand via `lepton optimize`)."""

from __future__ import annotations

from prefect import get_run_logger, task

from effects.runtime.retry import not_user_error
from effects.tracking.variants import optimize_version
from lepton_core.params import OptimizeParams


@task(name="optimize", retries=1, retry_delay_seconds=[5], timeout_seconds=1800, retry_condition_fn=not_user_error)
def optimize(model_name: str, version: str | None, params: OptimizeParams) -> dict:
    log = get_run_logger()
    return optimize_version(model_name, version, params, echo=log.info)
