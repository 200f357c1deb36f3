"""Register a trained model in the MLflow registry and run the promotion gate.

Aliases: `@champion` is what serves; `@previous` is the champion it replaced.
Every read-decide-write on the aliases of one registered model happens under one
lock, so two promotions at once are serialised and the second is judged against
the first's result.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import lepton_core
from effects.data.dvc_store import dataset_path
from effects.runtime.locks import file_lock
from effects.runtime.settings import Settings, get_settings, redact_uri
from effects.tracking import runs, tags
from effects.tracking.model_report import has_report, report_url
from effects.tracking.resources import recorded_cost
from lepton_core.data.prepare import Prepared, read_prepared
from lepton_core.errors import InputError, LeptonError
from lepton_core.evaluate import REGRESSION_KEYS, SUMMARY_KEYS, gate_evidence
from lepton_core.gate import Decision, RegressionDecision, decide_promotion, decide_regression
from lepton_core.live import LiveDecision, decide_live
from lepton_core.params import PromoteParams
from lepton_core.predictor import Predictor

if TYPE_CHECKING:  # mlflow is imported lazily; only for annotations here
    from mlflow.entities.model_registry import ModelVersion

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
assert lepton_core.__file__ is not None  # a regular package (it has an __init__.py)
LEPTON_CORE = Path(lepton_core.__file__).parent

CHAMPION, PREVIOUS = "champion", "previous"
# a version that passed the gate on its test split and waits for live evidence (promote.mode: shadow)
CHALLENGER = "challenger"
# an ONNX / int8 variant of a version (effects/tracking/variants.py) is registered beside it


def _pip_requirements() -> list[str]:
    import mlflow
    import pandas
    import pydantic

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pandas.__version__}",
        f"pydantic=={pydantic.__version__}",
    ]


def _signature_and_example(predictor: Predictor, prepared: Prepared):
    """The pyfunc's contract: raw samples in (as the prepared dataset stores them),
    label, class name and probabilities out (regression: the value); the example is
    real raw samples."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    from mlflow.types.schema import Array

    pre = predictor.preprocessing
    raw = prepared.x["test"][:4]
    if pre.kind == "image":
        inputs = Schema([TensorSpec(np.dtype(pre.dtype), (-1, *pre.input_shape))])
        example = np.ascontiguousarray(raw)
    else:
        import pandas as pd

        names = list(pre.feature_names) or [str(i) for i in range(pre.n_features)]
        inputs = Schema([ColSpec("double", n) for n in names])
        example = pd.DataFrame(raw.astype(np.float64), columns=names)
    if pre.regression:
        outputs = Schema([ColSpec("double", "value")])
    else:
        outputs = Schema(
            [ColSpec("long", "label"), ColSpec("string", "class_name"), ColSpec(Array("float"), "probabilities")]
        )
    return ModelSignature(inputs=inputs, outputs=outputs), example


def log_and_register(
    run_id: str,
    checkpoint: str | Path,
    prepared: Prepared,
    model_name: str,
    tags: dict[str, str],
    description: str = "",
    settings: Settings | None = None,
) -> str:
    """Log the checkpoint as a pyfunc model that reads raw samples (Lepton's
    predictor, see effects/tracking/pyfunc_model.py) and register it. Returns the version."""
    import mlflow

    s = settings or get_settings()
    mlflow.set_tracking_uri(s.tracking_uri)
    mlflow.set_registry_uri(s.tracking_uri)
    predictor = Predictor.from_checkpoint(checkpoint)
    signature, example = _signature_and_example(predictor, prepared)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(LEPTON_CORE)],
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements() + list(predictor.model_config.requirements),
        )
    mv = mlflow.register_model(info.model_uri, model_name, tags=tags)
    if description:
        runs.client(s).update_model_version(model_name, str(mv.version), description=description)
    return str(mv.version)


# ---------------------------------------------------------------- the gate
def alias_version(c, name: str, alias: str):
    """The model version behind `@alias`, or None when the model or the alias does not
    exist. Any other failure (a registry that does not answer, a refused login) is
    raised: "no champion" must never be a guess, since the gate would then promote
    without comparing."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") and "not found" in str(e):
            return None
        raise


def source_version(c, name: str, version: str | None, instead: str):
    """Version `version` of model `name` (None: the champion), which must be a trained
    model, not an ONNX/int8 variant; `instead` tells what to do with a variant, where
    `{source}` stands for the version it was made from. LeptonError (one line) else."""
    from mlflow.exceptions import MlflowException

    if version is None:
        mv = alias_version(c, name, CHAMPION)
        if mv is None:
            raise LeptonError(f"model {name!r} has no @champion; run `lepton retrain` first")
    else:
        try:
            mv = c.get_model_version(name, str(version))
        except MlflowException:
            raise LeptonError(f"model {name!r} has no version {version!r}") from None
    if mv.tags.get(tags.VARIANT):
        source = mv.tags.get(tags.VARIANT_OF)
        raise LeptonError(
            f"v{mv.version} is the {mv.tags[tags.VARIANT]} variant of v{source}; " + instead.format(source=f"v{source}")
        )
    return mv


def champion(c, name: str):
    return alias_version(c, name, CHAMPION)


def _ver(mv) -> str | None:
    """Version as a string (MLflow's stores disagree on int vs str)."""
    return None if mv is None else str(mv.version)


def checkpoint_of(c, run_id: str, s: Settings) -> Path:
    """The final checkpoint of a training run (local copy, else downloaded)."""
    local = s.home / "runs" / run_id / "model.pt"
    if local.exists():
        return local
    return runs.run_artifact(c, run_id, "checkpoint/model.pt", s.home)


def init_weights_of(c, init_from: str, model_name: str, s: Settings) -> tuple[Path, str]:
    """The checkpoint file `train.init_from` names (champion, models:/NAME/VERSION or a
    file, relative to the project) and where its weights came from, for the lineage."""
    if init_from == "champion":
        mv = champion(c, model_name)
        if mv is None:
            raise LeptonError(f"train.init_from=champion: model {model_name!r} has no @champion yet")
    elif init_from.startswith("models:/"):
        name, _, version = init_from.removeprefix("models:/").rpartition("/")
        if not name or not version:
            raise LeptonError(f"train.init_from {init_from!r}: expected models:/NAME/VERSION")
        mv = source_version(c, name, version, "start from {source}")
    else:
        path = Path(init_from) if Path(init_from).is_absolute() else s.project_dir / init_from
        if not path.is_file():
            raise LeptonError(f"train.init_from {init_from!r}: no such checkpoint file")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return path, f"file {path.name} sha256:{digest[:16]}"
    return checkpoint_of(c, mv.run_id, s), f"models:/{mv.name}/{mv.version}"


GATE_TAGS = (tags.GATE_PROMOTE, tags.GATE_FORCED, tags.GATE_REASON, tags.GATE_P_VALUE, tags.GATE_CHAMPION_ACCURACY)
REGRESSION_GATE_TAGS = (tags.GATE_CHAMPION_RMSE, tags.GATE_CHALLENGER_RMSE)
LIVE_GATE_TAGS = tuple(
    tags.GATE_LIVE_PREFIX + k for k in ("promote", "labelled_pairs", "champion_metric", "challenger_metric", "p_value")
)


def _with_block(description: str | None, heading: str, block: str) -> str:
    """The description with its fenced block under `heading` replaced by `block` (a
    later gate run replaces the earlier one; whatever else is there stays)."""
    text = description or ""
    if heading in text:
        before, _, after = text.partition(heading)
        _, _, rest = after.partition("```")  # the opening fence
        _, _, rest = rest.partition("```")  # the closing fence
        text = (before.rstrip() + "\n\n" + rest.strip()).strip()
    return f"{text}\n\n{block}" if text else block


GATE_HISTORY = "gate/decisions.json"  # every decision on a version, oldest first (its run's artifact)


def gate_record(mv) -> dict:
    """The latest gate decision of a model version, from its description."""
    _, found, after = (mv.description or "").partition("Promotion gate:")
    if not found:
        return {}
    body = after.split("```", 2)[1].removeprefix("json")
    return json.loads(body)


def gate_history(c, mv, settings: Settings | None = None) -> list[dict]:
    """Every gate decision on a model version, oldest first, each with its UTC time
    (`decided_at`). They live in the version's run as `gate/decisions.json`: the
    description keeps only the latest, since MLflow caps a description at 5,000
    characters on a database server."""
    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    try:
        path = runs.run_artifact(c, mv.run_id, GATE_HISTORY, s.home)
    except (MlflowException, OSError):  # no decision yet (or one from before the history)
        latest = gate_record(mv)
        return [latest] if latest else []
    return list(json.loads(path.read_text()))


def load_alias(model_name: str, alias: str, settings: Settings | None = None) -> tuple[ModelVersion, Predictor]:
    """(model version, its predictor) behind `@alias`; LeptonError if there is none."""
    s = settings or get_settings()
    c = runs.client(s)
    mv = alias_version(c, model_name, alias)
    if mv is None:
        raise LeptonError(f"model {model_name!r} has no @{alias}; run `lepton retrain` first")
    return mv, predictor_of(mv, s)


def predictor_of(mv, settings: Settings | None = None, device: str = "cpu") -> Predictor:
    """The predictor of a model version (its run's final checkpoint), its model on `device`."""
    s = settings or get_settings()
    return Predictor.from_checkpoint(checkpoint_of(runs.client(s), mv.run_id, s), device)


def _registry_lock(s: Settings, name: str):
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return file_lock(s.locks_dir / f"registry-{safe}.lock")


def _judge(c, s: Settings, mv, champ, prepared: Prepared, params: PromoteParams) -> Decision | RegressionDecision:
    """The gate's decision for `mv` against `champ` (or None) on the prepared test
    split: McNemar on right/wrong for classification, the paired t-test on squared
    errors for regression. Each model reads the samples through its own preprocessing
    (its own scale)."""
    y = prepared.y["test"]
    challenger = Predictor.from_checkpoint(checkpoint_of(c, mv.run_id, s))
    chal = gate_evidence(challenger, prepared.x["test"], y)
    champ_evidence, note = None, ""
    if champ is not None:
        try:
            incumbent = Predictor.from_checkpoint(checkpoint_of(c, champ.run_id, s))
            if incumbent.regression != challenger.regression:
                raise InputError("one model predicts classes, the other values")
            champ_evidence = gate_evidence(incumbent, prepared.x["test"], y)
        except InputError as e:  # the champion cannot read this data (other input shape)
            note = f"; champion v{champ.version} not comparable: {e}"
    decision: Decision | RegressionDecision
    if challenger.regression:
        decision = decide_regression(chal, champ_evidence, y, params)
    else:
        decision = decide_promotion(chal, champ_evidence, params)
    return replace(decision, reason=decision.reason + note)


def _figures(decision: Decision | RegressionDecision) -> dict:
    """The decision's headline figures for the promote result."""
    if isinstance(decision, RegressionDecision):
        return {
            "challenger_rmse": decision.challenger_rmse,
            "challenger_r2": decision.challenger_r2,
            "champion_rmse": decision.champion_rmse,
            "mean_sq_err_diff": decision.mean_sq_err_diff,
        }
    return {"challenger_accuracy": decision.challenger_accuracy, "champion_accuracy": decision.champion_accuracy}


# (champion version, challenger version, settings) -> their live figures
# (lepton_core.live.live_figures; effects.serving.live_log.live_evidence reads them from
# the prediction log), LeptonError when one of them has no row there
LiveEvidence = Callable[[str, str, Settings], dict]


def _judge_live(mv, champ, params: PromoteParams, s: Settings, evidence: LiveEvidence | None) -> LiveDecision:
    """The live half: `mv` against the champion on the prediction log's requests both
    scored (a shadow beside the champion), as `lepton compare --live` reports them."""
    if evidence is None:
        raise ValueError(f"v{mv.version} is to be judged on live traffic, but no live evidence reader was given")
    try:
        figures = evidence(str(champ.version), str(mv.version), s)
    except LeptonError:  # one of them has no row in the log: nothing was scored by both
        figures = {
            "task": "regression" if mv.tags.get(tags.TASK) == "regression" else "classification",
            "paired": {"instances": 0, "labelled": 0, "a": {}, "b": {}, "paired_test": None},
        }
    live = decide_live(figures, params)
    if live.labelled_pairs < params.min_live_pairs:
        hint = f"; serve v{mv.version} as a shadow (serve.shadow: {CHALLENGER}) until clients post labels, or --force"
        live = replace(live, reason=live.reason + hint)
    return live


def _wants_live(c, model_name: str, mv, champ, params: PromoteParams, challenger_only: bool) -> bool:
    """Whether `lepton promote` judges `mv` on live traffic too: in promote.mode shadow,
    or when it is the @challenger (never with no champion to pair it with)."""
    if challenger_only or champ is None:
        return False
    chal = alias_version(c, model_name, CHALLENGER)
    return params.mode == "shadow" or (chal is not None and str(chal.version) == str(mv.version))


Verdict = Decision | RegressionDecision


def _settle(decision: Verdict, live: LiveDecision | None, as_challenger: bool, force: bool) -> tuple[Verdict, bool]:
    """The test split's decision with the live half (both must pass), as a challenger
    (passing means @challenger, not @champion) and forced; (decision, forced)."""
    if live is not None and decision.promote:
        why = f"{decision.reason}; {live.reason}" if live.promote else f"live traffic: {live.reason}"
        decision = replace(decision, promote=live.promote, reason=why)
    if as_challenger:
        why = (
            f"registered as @{CHALLENGER} (promote.mode: shadow), it passed the gate: {decision.reason}; serve it "
            f"as a shadow (serve.shadow: {CHALLENGER}), then `lepton promote` judges it on live traffic"
        )
        return replace(decision, promote=False, reason=why), False
    forced = force and not decision.promote
    if forced:
        decision = replace(decision, promote=True, reason=f"forced over the gate: {decision.reason}")
    return decision, forced


def _record_decision(c, s: Settings, model_name: str, mv, gate: dict[str, str]) -> None:
    """One gate decision (its `lepton.gate.*` tags) on the version: appended to the
    history in its run, the latest in its description, the headline ones as tags."""
    record = {k.removeprefix(tags.GATE_PREFIX): v for k, v in gate.items()}
    record["decided_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # every decision is kept, newest last, in the version's run (written first: if
    # that fails, nothing below has changed)
    history = [*gate_history(c, mv, s), record]
    c.log_text(mv.run_id, json.dumps(history, indent=1, sort_keys=True), GATE_HISTORY)
    # a few tags keep the versions table readable; the latest decision goes into
    # the version's description, as JSON
    for k in GATE_TAGS + REGRESSION_GATE_TAGS + (tags.GATE_CHALLENGER,):
        if k in gate:  # the regression gate has RMSEs where the classification gate has accuracies
            c.set_model_version_tag(model_name, str(mv.version), k, gate[k])
    for k in LIVE_GATE_TAGS:  # the live half's headline figures (all of them: the description)
        if k in gate:
            c.set_model_version_tag(model_name, str(mv.version), k, gate[k])
    block = (
        f"Promotion gate:\n\nThe latest of {len(history)} decisions (all of them: the run's "
        f"artifact {GATE_HISTORY}).\n\n```json\n" + json.dumps(record, indent=1, sort_keys=True) + "\n```"
    )
    description = _with_block(mv.description, "Promotion gate:", block)
    c.update_model_version(model_name, str(mv.version), description=description)


def promote_version(
    model_name: str,
    version: str | None,
    params: PromoteParams,
    force: bool = False,
    settings: Settings | None = None,
    challenger_only: bool = False,
    live_evidence: LiveEvidence | None = None,
) -> dict:
    """Run the gate for `version` (None: the @challenger) against the current champion
    on the challenger's test split, and, in promote.mode shadow or for the @challenger,
    on the live traffic both scored (effects/serving/live_log.py); move the aliases if
    it passes (or if `force`). `challenger_only` (the retrain flow in promote.mode
    shadow): a version that passes becomes @challenger, not @champion. `live_evidence`
    reads the live figures (effects.serving.live_log.live_evidence; needed where the
    live half is judged)."""
    s = settings or get_settings()
    c = runs.client(s)
    with _registry_lock(s, model_name):
        if version is None:
            chal = alias_version(c, model_name, CHALLENGER)
            if chal is None:
                raise LeptonError(
                    f"model {model_name!r} has no @{CHALLENGER}: name a version, or retrain with promote.mode=shadow"
                )
            version = str(chal.version)
        mv = source_version(c, model_name, version, "promote {source} (its variants follow it)")
        champ = alias_version(c, model_name, CHAMPION)
        if champ is not None and str(champ.version) == str(mv.version):
            return {
                "version": str(mv.version),
                "promoted": False,
                "reason": "already the champion",
                "champion": str(mv.version),
                "previous": _ver(alias_version(c, model_name, PREVIOUS)),
            }
        data_version = mv.tags.get(tags.DATA_VERSION)
        if not data_version:
            raise LeptonError(f"version {mv.version} has no data version tag; cannot evaluate it")
        prepared = read_prepared(dataset_path(data_version, s))
        decision = _judge(c, s, mv, champ, prepared, params)
        live = None
        if _wants_live(c, model_name, mv, champ, params, challenger_only):
            live = _judge_live(mv, champ, params, s, live_evidence)
        challenger = challenger_only and decision.promote and champ is not None
        decision, forced = _settle(decision, live, challenger, force)
        gate = decision.as_tags()
        gate[tags.GATE_FORCED] = str(forced).lower()
        gate[tags.GATE_CHAMPION_VERSION] = str(champ.version) if champ is not None else ""
        gate[tags.GATE_TEST_DATA_VERSION] = data_version
        gate.update({tags.GATE_CHALLENGER: "true"} if challenger else {})
        gate.update(live.as_tags() if live is not None else {})
        _record_decision(c, s, model_name, mv, gate)
        if challenger:
            c.set_registered_model_alias(model_name, CHALLENGER, str(mv.version))
        if decision.promote:
            if champ is not None:
                c.set_registered_model_alias(model_name, PREVIOUS, str(champ.version))
            c.set_registered_model_alias(model_name, CHAMPION, str(mv.version))
            waiting = alias_version(c, model_name, CHALLENGER)
            if waiting is not None and str(waiting.version) == str(mv.version):
                c.delete_registered_model_alias(model_name, CHALLENGER)
        return {
            "version": str(mv.version),
            "promoted": decision.promote,
            "forced": forced,
            "reason": decision.reason,
            **_figures(decision),
            "p_value": decision.p_value,
            "challenger": str(mv.version) if challenger else None,
            "live": None if live is None else asdict(live),
            "champion": str(mv.version) if decision.promote else _ver(champ),
            "previous": str(champ.version) if (decision.promote and champ is not None) else None,
        }


def rollback_champion(model_name: str, settings: Settings | None = None) -> dict:
    """Make `@previous` the champion again; the demoted version loses its alias."""
    s = settings or get_settings()
    c = runs.client(s)
    with _registry_lock(s, model_name):
        prev = alias_version(c, model_name, PREVIOUS)
        if prev is None:
            raise LeptonError(f"model {model_name!r} has no @previous version to roll back to")
        champ = alias_version(c, model_name, CHAMPION)
        c.set_registered_model_alias(model_name, CHAMPION, str(prev.version))
        c.delete_registered_model_alias(model_name, PREVIOUS)
        if champ is not None:
            c.set_model_version_tag(model_name, str(champ.version), tags.ROLLED_BACK, "true")
        c.set_model_version_tag(model_name, str(prev.version), tags.RESTORED_BY_ROLLBACK, "true")
        return {"champion": str(prev.version), "demoted": _ver(champ)}


def _describe(c, mv, tracking_uri: str = "") -> dict | None:
    if mv is None:
        return None
    metrics: dict[str, float] = {}
    report, cost = None, None
    try:
        run = c.get_run(mv.run_id)
        cost = recorded_cost(run)
        metrics = {
            k.removeprefix("test_"): v
            for k, v in run.data.metrics.items()
            if k.startswith("test_") and k.removeprefix("test_") in (*SUMMARY_KEYS, *REGRESSION_KEYS)
        }
        report = report_url(tracking_uri, run) if has_report(run) else None
    except Exception:  # the run may have been deleted; the version still stands
        acc, rmse = mv.tags.get(tags.TEST_ACCURACY), mv.tags.get(tags.TEST_RMSE)
        metrics = {"accuracy": float(acc)} if acc else {"rmse": float(rmse)} if rmse else {}
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "metrics": metrics,
        "data_version": mv.tags.get(tags.DATA_VERSION),
        "git_commit": mv.tags.get(tags.GIT_COMMIT),
        "report_url": report,  # the model report (report/model.html), where a browser opens it
        "cost": cost,  # what its training used and cost (lepton_core.resources.priced); None if not recorded
    }


def registry_status(model_name: str, settings: Settings | None = None) -> dict:
    s = settings or get_settings()
    c = runs.client(s)
    return {
        "registered_model": model_name,
        "tracking_uri": redact_uri(s.tracking_uri),
        "champion": _describe(c, alias_version(c, model_name, CHAMPION), s.tracking_uri),
        "previous": _describe(c, alias_version(c, model_name, PREVIOUS), s.tracking_uri),
    }
