"""The optimize task: ONNX and int8 variants of a registered version (after a
promotion in the retrain flow, or on demand via `lepton optimize`).

A variant that is refused (too far from the PyTorch model, or a model the ONNX
exporter cannot export) is a row of the result with its one-line reason, logged
here: the task succeeds, and the promotion before it stands."""

from __future__ import annotations

from prefect import get_run_logger, task

from effects.runtime.retry import not_user_error
from effects.tracking.variants import optimize_version
from lepton_core.params import OptimizeParams


@task(name="optimize", retries=1, retry_delay_seconds=[5], timeout_seconds=1800, retry_condition_fn=not_user_error)
def optimize(model_name: str, version: str | None, params: OptimizeParams) -> dict:
    log = get_run_logger()
    result = optimize_version(model_name, version, params, echo=log.info)
    refused = [v["variant"] for v in result["variants"] if not v["registered"]]
    if refused:
        log.warning(
            "v%s: %s variant(s) refused (reasons above); the promotion stands", result["version"], ", ".join(refused)
        )
    return result
