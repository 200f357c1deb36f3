"""Register a trained model in the MLflow registry and run the promotion gate.

Aliases: `@champion` is what serves; `@previous` is the champion it replaced.
Every read-decide-write on the aliases of one registered model happens under one
lock, so two promotions at once are serialised and the second is judged against
the first's result.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from prefect import task

from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint
from lepton_core.data.prepare import read_prepared
from lepton_core.errors import LeptonError
from lepton_core.gate import Decision, decide_promotion
from lepton_core.params import Params, PromoteParams
from lepton_core.train import to_model_input
from tasks import tracking
from tasks.data import DataVersion, dataset_path
from tasks.evaluate import SUMMARY_KEYS, test_predictions
from tasks.locks import file_lock
from tasks.retry import not_user_error
from tasks.settings import Settings, get_settings
from tasks.train import TrainOutcome

CHAMPION, PREVIOUS = "champion", "previous"


def redact_uri(uri: str) -> str:
    """Hide a password in a URI (postgresql://user:secret@host -> user:***@host)."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", uri)


def _pip_requirements() -> list[str]:
    import mlflow

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_and_register(
    run_id: str, checkpoint: str | Path, example: np.ndarray, model_name: str, tags: dict[str, str],
    settings: Settings | None = None,
) -> str:
    """Log the checkpoint's model as a standard MLflow PyTorch model (pt2, with
    signature and input example) and register it. Returns the new version."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    s = settings or get_settings()
    mlflow.set_tracking_uri(s.tracking_uri)
    mlflow.set_registry_uri(s.tracking_uri)
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint))
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *cfg.input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, cfg.n_classes))]),
    )
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pt2", signature=signature,
            input_example=example, pip_requirements=_pip_requirements(),
            # MLflow turns the example into a JSON list, which the PyTorch flavor's
            # pyfunc rejects; the numpy example itself is checked by the tests instead.
            validate_serving_input=False,
        )
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags)
    return str(mv.version)


@task(name="register", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=900)
def register(outcome: TrainOutcome, data: DataVersion, params: Params, metrics: dict[str, float]) -> str:
    s = get_settings()
    prepared = read_prepared(dataset_path(data.version, s))
    state = load_checkpoint(outcome.checkpoint)
    _, cfg = model_from_checkpoint(state)
    # batch of 4 (> 1) so the exported graph keeps a dynamic batch dimension
    example = to_model_input(prepared.x["test"][:4], float(prepared.meta["x_scale"]), cfg).numpy()
    tags = {
        tracking.TAG_RUN_ID: outcome.run_id,
        tracking.TAG_DATA_VERSION: data.version,
        tracking.TAG_GIT_COMMIT: tracking.git_commit(s.project_dir),
        tracking.TAG_FLOW_RUN: tracking.flow_run_id(),
        **{f"lepton.metric.{k.removeprefix('test_')}": f"{v:.6f}" for k, v in metrics.items()},
    }
    return log_and_register(outcome.run_id, outcome.checkpoint, example, params.registry.model_name, tags, s)


# ---------------------------------------------------------------- the gate
def _alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _ver(mv) -> str | None:
    """Version as a string (MLflow's stores disagree on int vs str)."""
    return None if mv is None else str(mv.version)


def _checkpoint_of(c, run_id: str, s: Settings) -> Path:
    local = s.home / "runs" / run_id / "model.pt"
    if local.exists():
        return local
    return tracking.run_artifact(c, run_id, "checkpoint/model.pt", s.home)


def _registry_lock(s: Settings, name: str):
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return file_lock(s.locks_dir / f"registry-{safe}.lock")


def promote_version(
    model_name: str, version: str, params: PromoteParams, force: bool = False,
    settings: Settings | None = None,
) -> dict:
    """Run the gate for `version` against the current champion on the challenger's
    test split; move the aliases if it passes (or if `force`)."""
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    c = tracking.client(s)
    with _registry_lock(s, model_name):
        try:
            mv = c.get_model_version(model_name, str(version))
        except MlflowException:
            raise LeptonError(f"model {model_name!r} has no version {version!r}") from None
        champion = _alias(c, model_name, CHAMPION)
        if champion is not None and str(champion.version) == str(mv.version):
            return {"version": str(mv.version), "promoted": False, "reason": "already the champion",
                    "champion": str(mv.version), "previous": _ver(_alias(c, model_name, PREVIOUS))}
        data_version = mv.tags.get(tracking.TAG_DATA_VERSION)
        if not data_version:
            raise LeptonError(f"version {mv.version} has no data version tag; cannot evaluate it")
        prepared = read_prepared(dataset_path(data_version, s))
        y = prepared.y["test"]
        chal_correct = test_predictions(prepared, _checkpoint_of(c, mv.run_id, s)) == y
        champ_correct, note = None, ""
        if champion is not None:
            try:
                champ_correct = test_predictions(prepared, _checkpoint_of(c, champion.run_id, s)) == y
            except ValueError as e:  # the champion cannot read this data (other input shape)
                note = f"; champion v{champion.version} not comparable: {e}"
        decision: Decision = decide_promotion(chal_correct, champ_correct, params)
        decision = replace(decision, reason=decision.reason + note)
        forced = force and not decision.promote
        if forced:
            decision = replace(decision, promote=True, reason=f"forced over the gate: {decision.reason}")
        tags = decision.as_tags()
        tags["lepton.gate.forced"] = str(forced).lower()
        tags["lepton.gate.champion_version"] = str(champion.version) if champion is not None else ""
        tags["lepton.gate.test_data_version"] = data_version
        for k, v in tags.items():
            c.set_model_version_tag(model_name, str(mv.version), k, v)
        if decision.promote:
            if champion is not None:
                c.set_registered_model_alias(model_name, PREVIOUS, str(champion.version))
            c.set_registered_model_alias(model_name, CHAMPION, str(mv.version))
        return {
            "version": str(mv.version),
            "promoted": decision.promote,
            "forced": forced,
            "reason": decision.reason,
            "challenger_accuracy": decision.challenger_accuracy,
            "champion_accuracy": decision.champion_accuracy,
            "p_value": decision.p_value,
            "champion": str(mv.version) if decision.promote else _ver(champion),
            "previous": str(champion.version) if (decision.promote and champion is not None) else None,
        }


def rollback_champion(model_name: str, settings: Settings | None = None) -> dict:
    """Make `@previous` the champion again; the demoted version loses its alias."""
    s = settings or get_settings()
    c = tracking.client(s)
    with _registry_lock(s, model_name):
        prev = _alias(c, model_name, PREVIOUS)
        if prev is None:
            raise LeptonError(f"model {model_name!r} has no @previous version to roll back to")
        champ = _alias(c, model_name, CHAMPION)
        c.set_registered_model_alias(model_name, CHAMPION, str(prev.version))
        c.delete_registered_model_alias(model_name, PREVIOUS)
        if champ is not None:
            c.set_model_version_tag(model_name, str(champ.version), "lepton.rolled_back", "true")
        c.set_model_version_tag(model_name, str(prev.version), "lepton.restored_by_rollback", "true")
        return {"champion": str(prev.version), "demoted": _ver(champ)}


def _describe(c, mv) -> dict | None:
    if mv is None:
        return None
    metrics: dict[str, float] = {}
    try:
        run = c.get_run(mv.run_id)
        metrics = {k.removeprefix("test_"): v for k, v in run.data.metrics.items()
                   if k.startswith("test_") and k.removeprefix("test_") in SUMMARY_KEYS}
    except Exception:  # the run may have been deleted; the version still stands
        metrics = {k.removeprefix("lepton.metric."): float(v) for k, v in mv.tags.items()
                   if k.startswith("lepton.metric.")}
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "metrics": metrics,
        "data_version": mv.tags.get(tracking.TAG_DATA_VERSION),
        "git_commit": mv.tags.get(tracking.TAG_GIT_COMMIT),
    }


def registry_status(model_name: str, settings: Settings | None = None) -> dict:
    s = settings or get_settings()
    c = tracking.client(s)
    return {
        "registered_model": model_name,
        "tracking_uri": redact_uri(s.tracking_uri),
        "champion": _describe(c, _alias(c, model_name, CHAMPION)),
        "previous": _describe(c, _alias(c, model_name, PREVIOUS)),
    }


REGISTRY_LIMIT = "lepton-registry"


def registry_slot():
    """One registry change at a time across every worker: the Prefect global
    concurrency limit `lepton-registry` (created by `lepton deploy`, limit 1). Where it
    does not exist (no deploy yet) this passes straight through, and the file lock
    inside still serialises changes on this machine."""
    from contextlib import nullcontext

    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            c.read_global_concurrency_limit_by_name(REGISTRY_LIMIT)
        except ObjectNotFound:
            return nullcontext()
    return concurrency(REGISTRY_LIMIT, occupy=1, timeout_seconds=1800, strict=True)


@task(name="promote", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=1800,
      retry_condition_fn=not_user_error)
def promote(model_name: str, version: str, params: PromoteParams, force: bool = False) -> dict:
    with registry_slot():
        return promote_version(model_name, version, params, force)


@task(name="rollback", retries=2, retry_delay_seconds=[2, 5], timeout_seconds=600,
      retry_condition_fn=not_user_error)
def rollback(model_name: str) -> dict:
    with registry_slot():
        return rollback_champion(model_name)

