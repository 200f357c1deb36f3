"""The registered model's versions as the registry holds them, and two versions
compared on one test split.

A version is named by its number (`3`: a version of the params' registered model), an
alias (`@champion`) or a model URI (`models:/NAME/3`, `models:/NAME@champion`) for
another registered model. Two versions are compared only within one registered model.

The comparison pairs both versions' answers on the same test samples and runs the
gate's own paired test on them (lepton_core.gate): McNemar's exact test on right and
wrong for classification, the one-sided paired t-test on squared errors for
regression, with A in the champion's place and B in the challenger's. Comparing the
champion a version was judged against (A) with that version (B), on B's test split,
gives the p-value the gate recorded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from effects.data.dvc_store import dataset_path
from effects.runtime.settings import Settings, get_settings
from effects.tracking import runs, tags
from effects.tracking.registry import gate_record, predictor_of
from lepton_core.data.prepare import read_prepared
from lepton_core.errors import InputError, LeptonError
from lepton_core.evaluate import REGRESSION_KEYS, SUMMARY_KEYS, classification_metrics, regression_metrics
from lepton_core.gate import mcnemar_report, paired_t_worse
from lepton_core.predictor import BasePredictor

LISTED = 1000  # samples listed per side in a comparison (the counts are always whole)
_NUMBER = re.compile(r"[1-9][0-9]*")
_ALIAS = re.compile(r"[A-Za-z0-9_-]+")


# ---------------------------------------------------------------- naming a version
@dataclass(frozen=True)
class VersionRef:
    """A version as the user named it: a number or an alias, of a registered model."""

    model: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"models:/{self.model}@{self.alias}" if self.alias else f"models:/{self.model}/{self.version}"


def parse_ref(text: str, default_model: str) -> VersionRef:
    """`3`, `@champion`, `models:/NAME/3` or `models:/NAME@champion`; LeptonError else."""
    model, rest = default_model, text.strip()
    if rest.startswith("models:/"):
        body = rest.removeprefix("models:/")
        if "@" in body:
            model, _, alias = body.partition("@")
            rest = "@" + alias
        else:
            model, _, rest = body.rpartition("/")
        if not model or "/" in model:
            raise LeptonError(f"{text!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    if rest.startswith("@"):
        if not _ALIAS.fullmatch(rest[1:]):
            raise LeptonError(f"{text!r}: {rest[1:]!r} is not an alias name")
        return VersionRef(model, alias=rest[1:])
    if not _NUMBER.fullmatch(rest):
        raise LeptonError(f"{text!r} is not a model version (a number such as 3, @champion, or models:/NAME/3)")
    return VersionRef(model, version=rest)


def parse_pair(a: str, b: str, default_model: str) -> tuple[VersionRef, VersionRef]:
    """Both references, which must name versions of one registered model."""
    ra, rb = parse_ref(a, default_model), parse_ref(b, default_model)
    if ra.model != rb.model:
        raise LeptonError(
            f"{a} is a version of {ra.model!r} and {b} of {rb.model!r}: compare versions of one registered model"
        )
    return ra, rb


def resolve(c, ref: VersionRef):
    """The MLflow model version `ref` names; LeptonError when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.alias:
            return c.get_model_version_by_alias(ref.model, ref.alias)
        return c.get_model_version(ref.model, ref.version)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    if not _model_exists(c, ref.model):
        raise LeptonError(f"there is no registered model {ref.model!r}; `lepton retrain` registers it")
    what = f"alias @{ref.alias}" if ref.alias else f"version {ref.version}"
    raise LeptonError(f"model {ref.model!r} has no {what} (`lepton versions` lists them)")


def _model_exists(c, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


# ---------------------------------------------------------------- listing
def _metrics(c, mv) -> dict[str, float]:
    """The version's test metrics from its run (a variant's run logs its own); the
    headline tags when the run is gone."""
    keys = (*SUMMARY_KEYS, *REGRESSION_KEYS)
    try:
        logged = c.get_run(mv.run_id).data.metrics
    except Exception:  # noqa: BLE001  (a deleted run: the version still stands)
        logged = {}
    found = {k.removeprefix("test_"): float(v) for k, v in logged.items() if k.removeprefix("test_") in keys}
    if not found:
        for key, tag in (("accuracy", tags.TEST_ACCURACY), ("rmse", tags.TEST_RMSE), ("r2", tags.TEST_R2)):
            if mv.tags.get(tag):
                found[key] = float(mv.tags[tag])
    return {k: found[k] for k in keys if k in found}


def _number(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def gate_decision(mv) -> dict | None:
    """The latest gate decision on a version (None: never judged, as a variant)."""
    try:
        record = gate_record(mv)
    except (ValueError, IndexError):  # a description edited by hand: the tags still hold it
        record = {}
    if not record:
        record = {k.removeprefix(tags.GATE_PREFIX): v for k, v in mv.tags.items() if k.startswith(tags.GATE_PREFIX)}
    if "promote" not in record:
        return None
    promoted = str(record.get("promote", "")).lower() == "true"
    forced = str(record.get("forced", "")).lower() == "true"
    challenger = str(record.get("challenger", "")).lower() == "true"  # promote.mode shadow: passed, now @challenger
    return {
        "decision": "forced" if forced else "promoted" if promoted else "challenger" if challenger else "refused",
        "promoted": promoted,
        "forced": forced,
        "reason": record.get("reason", ""),
        "p_value": _number(record.get("p_value")),
        "champion_version": record.get("champion_version") or None,
        "test_data_version": record.get("test_data_version") or None,
        "decided_at": record.get("decided_at"),
    }


def describe_version(c, mv, aliases: list[str]) -> dict:
    """One version as `lepton versions` shows it."""
    created = datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, UTC)
    return {
        "version": str(mv.version),
        "aliases": sorted(aliases),
        "created_at": created.isoformat(timespec="seconds"),
        "run_id": mv.run_id,
        "task": mv.tags.get(tags.TASK, "classification"),
        "metrics": _metrics(c, mv),
        "data_version": mv.tags.get(tags.DATA_VERSION) or None,
        "git_commit": mv.tags.get(tags.GIT_COMMIT) or None,
        "variant": mv.tags.get(tags.VARIANT) or None,
        "variant_of": mv.tags.get(tags.VARIANT_OF) or None,
        "gate": gate_decision(mv),
    }


def list_versions(model_name: str, settings: Settings | None = None) -> dict:
    """Every version of the registered model, newest first."""
    s = settings or get_settings()
    c = runs.client(s)
    if not _model_exists(c, model_name):
        raise LeptonError(f"there is no registered model {model_name!r}; `lepton retrain` registers it")
    by_version: dict[str, list[str]] = {}
    for alias, version in (c.get_registered_model(model_name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    found, token = [], None
    while True:
        page = c.search_model_versions(f"name='{model_name}'", max_results=1000, page_token=token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            break
    found.sort(key=lambda mv: int(mv.version), reverse=True)
    return {
        "registered_model": model_name,
        "versions": [describe_version(c, mv, by_version.get(str(mv.version), [])) for mv in found],
    }


# ---------------------------------------------------------------- comparing
def load_predictor(mv, s: Settings) -> BasePredictor:
    """The predictor of a version: its checkpoint, or a variant's ONNX graph."""
    if mv.tags.get(tags.VARIANT):
        from effects.tracking.variants import variant_predictor

        return variant_predictor(mv, s)
    return predictor_of(mv, s)


@dataclass
class _Side:
    """One version's answers on the test split."""

    mv: Any
    predictor: BasePredictor
    answers: np.ndarray  # (N,) predicted labels, or (regression) predicted values


def _answer(mv, predictor: BasePredictor, x: np.ndarray, data_version: str) -> _Side:
    """Score the test split as the gate does (lepton_core.evaluate.gate_evidence):
    labels from the argmax of the logits, values in the target's units."""
    try:
        answers = predictor.values(x) if predictor.regression else predictor.logits(x).argmax(1)
    except InputError as e:
        raise LeptonError(
            f"v{mv.version} cannot read the test split of data version {data_version[:12]}: {e}"
        ) from None
    return _Side(mv, predictor, answers)


def _side_summary(side: _Side, aliases: list[str], metrics: dict) -> dict:
    return {
        "version": str(side.mv.version),
        "aliases": sorted(aliases),
        "data_version": side.mv.tags.get(tags.DATA_VERSION) or None,
        "variant": side.mv.tags.get(tags.VARIANT) or None,
        "variant_of": side.mv.tags.get(tags.VARIANT_OF) or None,
        "metrics": {k: v for k, v in metrics.items() if k in (*SUMMARY_KEYS, *REGRESSION_KEYS)},
        **({"confusion_matrix": metrics["confusion_matrix"]} if "confusion_matrix" in metrics else {}),
    }


def _classification(a: _Side, b: _Side, y: np.ndarray, classes: list[str]) -> dict:
    """Metrics, McNemar's counts and p-value, per-class differences and the samples
    one version labels right and the other wrong."""
    ma = classification_metrics(y, a.answers, classes)
    mb = classification_metrics(y, b.answers, classes)
    a_right, b_right = a.answers == y, b.answers == y  # what correct_mask gives the gate

    def rows(mask: np.ndarray) -> list[dict]:
        return [
            {
                "index": int(i),
                "true": classes[int(y[i])],
                "a": classes[int(a.answers[i])],
                "b": classes[int(b.answers[i])],
            }
            for i in np.flatnonzero(mask)[:LISTED]
        ]

    per_class = {
        name: {
            "a": ma["per_class"][name],
            "b": mb["per_class"][name],
            "f1_diff": mb["per_class"][name]["f1"] - ma["per_class"][name]["f1"],
            "recall_diff": mb["per_class"][name]["recall"] - ma["per_class"][name]["recall"],
        }
        for name in classes
    }
    return {
        "metrics": (ma, mb),
        "paired_test": mcnemar_report(a_right, b_right),  # A in the champion's place
        "per_class": per_class,
        "only_a_right": rows(a_right & ~b_right),
        "only_b_right": rows(~a_right & b_right),
    }


def _regression(a: _Side, b: _Side, y: np.ndarray) -> dict:
    """Metrics, the paired t-test on squared errors (one-sided: is B worse than A?),
    and the rows where each version is much the closer."""
    yv = np.asarray(y, dtype=np.float64)
    a_sq, b_sq = (a.answers - yv) ** 2, (b.answers - yv) ** 2  # what squared_errors gives the gate
    mean_d, t, p = paired_t_worse(a_sq, b_sq)
    d = b_sq - a_sq  # > 0: A is the closer

    def rows(order: np.ndarray) -> list[dict]:
        return [
            {"index": int(i), "true": float(yv[i]), "a": float(a.answers[i]), "b": float(b.answers[i])}
            for i in order[:LISTED]
        ]

    order = np.argsort(-d, kind="stable")
    return {
        "metrics": (regression_metrics(yv, a.answers), regression_metrics(yv, b.answers)),
        "paired_test": {
            "test": "paired t-test on squared errors (one-sided: B worse than A)",
            "a_closer": int((d > 0).sum()),
            "b_closer": int((d < 0).sum()),
            "mean_sq_err_diff": mean_d,
            "t_statistic": t,
            "p_value": p,
        },
        "a_closer": rows(order[d[order] > 0]),
        "b_closer": rows(order[::-1][d[order[::-1]] < 0]),
    }


def _recorded_gate(mv_a, mv_b, data_version: str) -> dict | None:
    """B's latest gate decision, when it judged B against A on this test split."""
    g = gate_decision(mv_b)
    if g and g["champion_version"] == str(mv_a.version) and g["test_data_version"] == data_version:
        return {"version": str(mv_b.version), **g}
    return None


def compare_versions(
    a: VersionRef, b: VersionRef, data_of: str = "b", settings: Settings | None = None
) -> tuple[dict, np.ndarray]:
    """Score A and B on one test split (B's data version, or A's with `data_of="a"`);
    returns the comparison and the split's raw samples (for pictures of them)."""
    s = settings or get_settings()
    c = runs.client(s)
    mv_a, mv_b = resolve(c, a), resolve(c, b)
    on = mv_b if data_of == "b" else mv_a
    data_version = on.tags.get(tags.DATA_VERSION)
    if not data_version:
        raise LeptonError(f"v{on.version} has no {tags.DATA_VERSION} tag: its test split is unknown")
    prepared = read_prepared(dataset_path(data_version, s))
    x, y = prepared.x["test"], prepared.y["test"]
    side_a = _answer(mv_a, load_predictor(mv_a, s), x, data_version)
    side_b = _answer(mv_b, load_predictor(mv_b, s), x, data_version)
    pa, pb = side_a.predictor, side_b.predictor
    if pa.regression != pb.regression:
        raise LeptonError(
            f"v{mv_a.version} and v{mv_b.version} cannot be compared: one predicts classes, the other values"
        )
    if not pa.regression and pa.classes != pb.classes:
        raise LeptonError(f"v{mv_a.version} and v{mv_b.version} cannot be compared: they predict different classes")
    found = _regression(side_a, side_b, y) if pa.regression else _classification(side_a, side_b, y, pb.classes)
    ma, mb = found.pop("metrics")
    aliases: dict[str, list[str]] = {}
    for alias, version in (c.get_registered_model(a.model).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    result = {
        "registered_model": a.model,
        "task": "regression" if pa.regression else "classification",
        "test_data_version": data_version,
        "test_data_of": "A" if data_of == "a" else "B",
        "n": int(len(y)),
        **({} if pa.regression else {"classes": pb.classes}),
        "input_kind": pb.preprocessing.kind,  # image | tabular
        **({"feature_names": list(pb.preprocessing.feature_names)} if pb.preprocessing.kind != "image" else {}),
        "a": _side_summary(side_a, aliases.get(str(mv_a.version), []), ma),
        "b": _side_summary(side_b, aliases.get(str(mv_b.version), []), mb),
        **found,
        "gate": _recorded_gate(mv_a, mv_b, data_version),
    }
    return result, x
