"""Drift report: a thin adapter over Evidently 0.7 (``evidently==0.7.23``).

One call, :func:`run_drift_report`, runs ONE Evidently ``Report`` over a reference and
a current frame of model inputs/outputs and returns the numbers a flow needs to act on
(:class:`DriftResult`), plus ``report.html`` and ``report.json`` written atomically.

The report holds
  * ``DataDriftPreset(columns=feature_columns)``: one ``DriftedColumnsCount`` and one
    ``ValueDrift`` per feature column (numerical). Evidently picks the test per column:
    reference <= 1000 rows -> K-S p-value (drift when p <= 0.05); more rows -> normed
    Wasserstein distance (drift when >= 0.1). Columns with <= 5 distinct values get
    chi-square / Z-test / Jensen-Shannon instead.
  * ``ValueDrift(prediction_column, method="jensenshannon")``: prediction drift, the class
    ids declared categorical. Jensen-Shannon distance, drift when >= 0.1, at every sample
    size. Evidently's default below 1000 rows is a chi-square test. It treats the
    reference counts as exact expected frequencies and so flags drift far too often:
    about 24 % of runs for 3 classes and 50 % for 10 classes when nothing changed.
  * ``ValueDrift(confidence_column)`` (numerical, Evidently's default test) if the column
    is in both frames.
  * ``DataSummaryPreset()``: rows, missing values, per-column stats.
  * ``ClassificationPreset()`` when both frames have a label column, via
    ``DataDefinition(classification=[MulticlassClassification(target=label,
    prediction_labels=prediction)])``. It is left out when a label or prediction is missing
    in either frame, because Evidently's classification metrics fail on nulls. ``quality``
    is computed here with numpy on the rows that have both a label and a prediction. The
    reason is that ``Snapshot.dict()`` only reports the current frame's value of each metric.

For a regression model (``regression=True``) the prediction column holds the predicted
numbers and the label column the true targets, both numerical:
  * ``ValueDrift(prediction_column)`` with Evidently's default numerical test (K-S p-value up
    to 1000 reference rows, normed Wasserstein distance above), as for a feature column;
    there is no confidence column.
  * ``RegressionPreset()`` (mean error, MAPE, RMSE, MAE, R2, max error, with the predicted
    vs actual and error plots) when both frames have a label column without nulls, via
    ``DataDefinition(regression=[Regression(target=label, prediction=prediction)])``.
    ``quality`` is then RMSE, MAE and R2 on each frame, computed here with numpy on the
    rows with both a label and a prediction (again: ``Snapshot.dict()`` holds the current
    frame's values only).

The report runs with ``include_tests=True``, so the HTML and JSON carry Evidently's
automatic tests. The per-column "drifted" flags are Evidently's own verdicts, read from
those tests; they are not recomputed here.

Telemetry: building and running a ``Report`` sends nothing. Evidently's usage telemetry
(``evidently.telemetry``, iterative-telemetry) is used only by its UI service and
collector, and setting the environment variable ``DO_NOT_TRACK`` (any value) turns it off
(see ``evidently/telemetry.py``). This module sets no environment variables. The saved
HTML embeds its JavaScript and font, so opening it loads nothing from the network.
Importing this module does not import Evidently, which takes about 3 s, nor does any
other work.
"""

from __future__ import annotations

import html as _html
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lepton_core.fileio import atomic_write

if TYPE_CHECKING:  # pandas is imported lazily as well; only for annotations here
    import pandas as pd

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
JSON_NAME = "report.json"
PREDICTION_METHOD = "jensenshannon"


@dataclass
class DriftResult:
    columns: dict[str, dict]  # feature -> {"score", "method", "threshold", "drifted"}
    share_drifted: float  # drifted feature columns / feature columns
    prediction: dict  # {"score", "method", "threshold", "drifted"} (categorical)
    confidence: dict | None  # same for the confidence column (numerical), None if absent
    quality: dict | None  # accuracy / macro-F1 (regression: RMSE / MAE / R2) on both frames; None without labels
    data_quality: dict  # {"rows_current", "rows_reference", "missing_share": {col: share}}
    html_path: Path
    json_path: Path
    # Evidently's SnapshotModel of the report (for an Evidently workspace); not in to_dict()
    snapshot: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = asdict(replace(self, snapshot=None))
        d.pop("snapshot")
        d["html_path"], d["json_path"] = str(self.html_path), str(self.json_path)
        return d


def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    feature_columns: list[str],
    out_dir: Path,
    prediction_column: str = "prediction",
    confidence_column: str | None = "confidence",
    label_column: str | None = "label",
    title: str = "Lepton drift report",
    *,
    prediction_method: str | None = None,
    prediction_threshold: float | None = None,
    regression: bool = False,
) -> DriftResult:
    """Run one Evidently report of `current` against `reference`.

    This writes `out_dir/report.html` and `out_dir/report.json`. Only the named columns are
    used. Feature columns and the confidence column must be numeric. Prediction and label
    are class ids (ints, or labels of any type) and are treated as categorical; with
    `regression` they are numbers (predicted and true targets) and numerical.
    `prediction_method` and `prediction_threshold` pick the Evidently test for prediction
    drift; None means Jensen-Shannon for classes and Evidently's default test for numbers,
    and a threshold of None the method's default."""
    features = list(dict.fromkeys(feature_columns))
    if regression:
        confidence_column = None  # one real-valued output: no confidence
    has_conf, has_label = _check_columns(
        reference, current, features, prediction_column, confidence_column, label_column
    )
    outputs = [prediction_column] + ([label_column] if has_label and label_column else [])
    numerical = features + ([confidence_column] if has_conf and confidence_column else [])
    numerical, categorical = (numerical + outputs, []) if regression else (numerical, outputs)
    ref = _prepare(reference, numerical, categorical)
    cur = _prepare(current, numerical, categorical)

    quality, with_quality = _quality_of(ref, cur, label_column if has_label else None, prediction_column, regression)
    page, raw, version, snapshot = _evidently_run(
        ref,
        cur,
        features,
        numerical,
        categorical,
        title,
        prediction_column=prediction_column,
        confidence_column=confidence_column if has_conf else None,
        label_column=label_column if with_quality else None,
        prediction_method=prediction_method if prediction_method or regression else PREDICTION_METHOD,
        prediction_threshold=prediction_threshold,
        regression=regression,
    )
    if regression and with_quality and quality is not None:
        _check_rmse(raw, quality["current_rmse"])

    drifts = _value_drifts(raw)
    columns = {c: _need(drifts, c) for c in features}
    share = _share_drifted(columns, raw)
    data_quality = {
        "rows_current": int(len(cur)),
        "rows_reference": int(len(ref)),
        "missing_share": _missing_shares(raw, cur, numerical + categorical),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = DriftResult(
        columns=columns,
        share_drifted=share,
        prediction=_need(drifts, prediction_column),
        confidence=_need(drifts, confidence_column) if has_conf and confidence_column else None,
        quality=quality,
        data_quality=data_quality,
        html_path=out / HTML_NAME,
        json_path=out / JSON_NAME,
        snapshot=snapshot,
    )
    _write_report(result, page, raw, title, version)
    return result


def _quality_of(
    ref: pd.DataFrame, cur: pd.DataFrame, label: str | None, prediction: str, regression: bool
) -> tuple[dict | None, bool]:
    """The model's quality on both frames (None without labels), and whether Evidently's
    quality preset can run: its classification and regression metrics raise on null
    labels or predictions."""
    if label is None:
        return None, False
    quality = (_regression_quality if regression else _quality)(ref, cur, label, prediction)
    with_quality = quality is not None and not any(f[c].isna().any() for f in (ref, cur) for c in (label, prediction))
    if quality is not None and not with_quality:
        log.warning(
            "labels or predictions have missing values: %s left out of the Evidently report; "
            "quality computed on the %d/%d labelled rows",
            "RegressionPreset" if regression else "ClassificationPreset",
            quality["rows_labelled_reference"],
            quality["rows_labelled_current"],
        )
    return quality, with_quality


def _share_drifted(columns: dict[str, dict], raw: dict) -> float:
    """The share of feature columns that drifted (checked against Evidently's own count)."""
    share = sum(v["drifted"] for v in columns.values()) / len(columns)
    evidently_share = _drifted_columns_share(raw)
    if evidently_share is not None and not math.isclose(evidently_share, share, abs_tol=1e-9):
        log.warning("DriftedColumnsCount share %.4f differs from the per-column verdicts %.4f", evidently_share, share)
    return share


def _check_columns(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    prediction_column: str,
    confidence_column: str | None,
    label_column: str | None,
) -> tuple[bool, bool]:
    """ValueError unless both frames hold rows and the named columns, each column in one
    role; returns whether the confidence and label columns are there."""
    if not features:
        raise ValueError("feature_columns is empty")
    for name, frame in (("reference", reference), ("current", current)):
        if len(frame) == 0:
            raise ValueError(f"the {name} frame has no rows")
        missing = [c for c in features + [prediction_column] if c not in frame.columns]
        if missing:
            raise ValueError(f"the {name} frame lacks columns {missing}")
    has_conf = confidence_column is not None and all(confidence_column in f.columns for f in (reference, current))
    has_label = label_column is not None and all(label_column in f.columns for f in (reference, current))
    roles = (
        [prediction_column]
        + ([confidence_column] if has_conf and confidence_column is not None else [])
        + ([label_column] if has_label and label_column is not None else [])
    )
    clash = sorted((set(roles) & set(features)) | {c for c in roles if roles.count(c) > 1})
    if clash:
        raise ValueError(f"columns {clash} have more than one role (feature/prediction/confidence/label)")
    return has_conf, has_label


def _evidently_run(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    features: list[str],
    numerical: list[str],
    categorical: list[str],
    title: str,
    *,
    prediction_column: str,
    confidence_column: str | None,
    label_column: str | None,
    prediction_method: str | None,
    prediction_threshold: float | None,
    regression: bool = False,
) -> tuple[str, dict, str, Any]:
    """One Evidently Report (classification or regression quality only with
    `label_column`): its HTML page, its Snapshot.dict(), Evidently's version and the
    snapshot's SnapshotModel."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Regression, Report
    from evidently import __version__ as evidently_version
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset, DataSummaryPreset, RegressionPreset

    task: dict[str, Any] = {}
    if label_column and regression:
        task["regression"] = [Regression(target=label_column, prediction=prediction_column)]
    elif label_column:
        task["classification"] = [MulticlassClassification(target=label_column, prediction_labels=prediction_column)]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical, **task)
    items: list[Any] = [
        DataDriftPreset(columns=features),
        ValueDrift(column=prediction_column, method=prediction_method, threshold=prediction_threshold),
    ]
    if confidence_column:
        items.append(ValueDrift(column=confidence_column))
    items.append(DataSummaryPreset())
    if label_column:
        items.append(RegressionPreset() if regression else ClassificationPreset())

    report = Report(items, include_tests=True, metadata={"title": title})
    with warnings.catch_warnings():
        # pandas FutureWarnings raised inside evidently (e.g. downcasting in `replace`)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"evidently(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"evidently(\.|$)")
        # a drifted batch may predict no sample of some class: precision 0 there is expected
        warnings.filterwarnings("ignore", message=".*ill-defined.*")
        # Evidently's regression plots score R2 per group, some of one row
        warnings.filterwarnings("ignore", message=".*R\\^2 score is not well-defined.*")
        snapshot = report.run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
            name=title,
        )
        page = snapshot.get_html_str(as_iframe=False)  # exactly what snapshot.save_html writes
        raw = json.loads(snapshot.json())  # == snapshot.dict(), numpy types made plain
    return page, raw, evidently_version, snapshot.to_snapshot_model()


def _write_report(result: DriftResult, page: str, raw: dict, title: str, evidently_version: str) -> None:
    head = f"<head>\n    <title>{_html.escape(title)}</title>"
    atomic_write(result.html_path, page.replace("<head>", head, 1))
    payload = {
        "title": title,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "evidently_version": evidently_version,
        "summary": result.to_dict(),
        **raw,  # Evidently's Snapshot.dict(): "metrics" and "tests"
    }
    atomic_write(result.json_path, json.dumps(payload, indent=1, default=str))


# --- inputs -----------------------------------------------------------------------------


def _prepare(frame: pd.DataFrame, numerical: list[str], categorical: list[str]) -> pd.DataFrame:
    """Only the used columns: numerical as float64, categorical as labels Evidently accepts."""
    import pandas as pd

    out = {}
    for c in numerical:
        s = frame[c]
        if not (pd.api.types.is_numeric_dtype(s) or s.isna().all()):
            raise TypeError(f"column {c!r} must be numeric, got dtype {s.dtype}")
        out[c] = pd.to_numeric(s, errors="raise").astype("float64")
    for c in categorical:
        out[c] = _as_labels(frame[c])
    return pd.DataFrame(out, index=frame.index).reset_index(drop=True)


def _as_labels(s: pd.Series) -> pd.Series:
    """Evidently's label type is bool | int | str | None. A float column (class ids that
    went through NaN, or parquet) or NaN itself breaks its per-value counts (pydantic
    error), so integral numbers become ints and missing values become None."""
    import numpy as np
    import pandas as pd

    missing = s.isna().to_numpy()
    if pd.api.types.is_integer_dtype(s) and not missing.any():
        return s.astype("int64")
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        vals = s.to_numpy(dtype="float64", na_value=np.nan)
        ok = vals[~missing]
        if np.all(np.isfinite(ok)) and np.all(ok == np.round(ok)):
            if not missing.any():
                return pd.Series(vals.astype("int64"), index=s.index, name=s.name)
            return pd.Series(
                [None if m else int(v) for v, m in zip(vals, missing)], index=s.index, name=s.name, dtype=object
            )

    def label(v):
        if isinstance(v, (bool, np.bool_, int, np.integer)):
            return int(v)
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            return int(v)
        return v if isinstance(v, str) else str(v)

    return pd.Series(
        [None if m else label(v) for v, m in zip(s.tolist(), missing)], index=s.index, name=s.name, dtype=object
    )


def _quality(ref: pd.DataFrame, cur: pd.DataFrame, label: str, pred: str) -> dict | None:
    """Accuracy and macro-F1 (sklearn's definition: mean over the classes in y_true or
    y_pred of 2TP/(2TP+FP+FN)) on each frame's rows with both a label and a prediction."""
    import numpy as np

    def scores(df):
        m = (df[label].notna() & df[pred].notna()).to_numpy()
        y, p = df[label].to_numpy()[m], df[pred].to_numpy()[m]
        if len(y) == 0:
            return None
        f1 = []
        for k in set(y.tolist()) | set(p.tolist()):
            tp = np.sum((y == k) & (p == k))
            f1.append(2 * tp / (np.sum(y == k) + np.sum(p == k)))
        return float(np.mean(y == p)), float(np.mean(f1)), int(len(y))

    r, c = scores(ref), scores(cur)
    if r is None or c is None:
        return None
    return {
        "reference_accuracy": r[0],
        "current_accuracy": c[0],
        "accuracy_drop": r[0] - c[0],
        "reference_macro_f1": r[1],
        "current_macro_f1": c[1],
        "macro_f1_drop": r[1] - c[1],
        "rows_labelled_reference": r[2],
        "rows_labelled_current": c[2],
    }


def _regression_quality(ref: pd.DataFrame, cur: pd.DataFrame, label: str, pred: str) -> dict | None:
    """RMSE, MAE and R2 on each frame's rows with both a label and a prediction, and the
    relative RMSE increase of `cur` over `ref` (0.41: 41 % worse)."""
    import numpy as np

    from lepton_core.drift import rmse_increase

    def scores(df):
        m = (df[label].notna() & df[pred].notna()).to_numpy()
        y, p = df[label].to_numpy(dtype="float64")[m], df[pred].to_numpy(dtype="float64")[m]
        if len(y) == 0:
            return None
        err = p - y
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
        return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err))), r2, int(len(y))

    r, c = scores(ref), scores(cur)
    if r is None or c is None:
        return None
    return {
        "reference_rmse": r[0],
        "current_rmse": c[0],
        "rmse_increase": rmse_increase(r[0], c[0]),
        "reference_mae": r[1],
        "current_mae": c[1],
        "reference_r2": r[2],
        "current_r2": c[2],
        "rows_labelled_reference": r[3],
        "rows_labelled_current": c[3],
    }


def _check_rmse(raw: dict, rmse: float) -> None:
    """Warn when Evidently's RMSE of the current frame is not the one the verdict uses."""
    for m in raw.get("metrics", []):
        if _metric_type(m) == "RMSE" and isinstance(m.get("value"), (int, float)):
            if not math.isclose(float(m["value"]), rmse, rel_tol=1e-6, abs_tol=1e-9):
                log.warning("Evidently's RMSE %.6g differs from the verdict's %.6g", float(m["value"]), rmse)
            return


# --- snapshot parsing ---------------------------------------------------------------------
# `Snapshot.dict()` in 0.7.23 (`snapshot.json()` is its JSON):
#   {"metrics": [{"id": <metric fingerprint>, "metric_name": "ValueDrift(column=f0,method=K-S p_value,threshold=0.05)",
#                 "config": {"type": "evidently:metric_v2:ValueDrift", "column": "f0",
#                            "method": "K-S p_value", "threshold": 0.05},   # resolved method/threshold
#                 "value": 0.43},                                           # the drift score
#                {"config": {"type": "evidently:metric_v2:DriftedColumnsCount", ...},
#                 "value": {"count": 1.0, "share": 0.125}},
#                {"config": {"type": "evidently:metric_v2:MissingValueCount", "column": "f0"},
#                 "value": {"count": 0.0, "share": 0.0}},                   # current frame only
#                ...],
#    "tests":   [{"id": "drift", "name": "Value Drift for column f0", "status": "SUCCESS" | "FAIL",
#                 "metric_config": {"metric_id": <metric fingerprint>, "params": {...}}, ...}, ...]}
# Every metric, including those generated by presets, is listed once. Only the current
# frame's values appear. A ValueDrift test FAILs exactly when Evidently detected drift.


def _metric_type(m: dict) -> str:
    return str((m.get("config") or {}).get("type", "")).rsplit(":", 1)[-1]


def _value_drifts(raw: dict) -> dict[str, dict]:
    verdicts: dict[str, bool] = {}
    for t in raw.get("tests", []):
        mid = (t.get("metric_config") or {}).get("metric_id")
        if t.get("id") == "drift" and mid is not None and t.get("status") in ("SUCCESS", "FAIL"):
            verdicts[mid] = t["status"] == "FAIL"
    out: dict[str, dict] = {}
    for m in raw.get("metrics", []):
        if _metric_type(m) != "ValueDrift":
            continue
        cfg = m["config"]
        score, method, threshold = float(m["value"]), _method_name(cfg.get("method")), cfg.get("threshold")
        threshold = None if threshold is None else float(threshold)
        drifted = verdicts.get(m.get("id"))
        if drifted is None:  # no test result: the direction follows the method's kind
            log.warning("no drift test for column %r; judging from score and threshold", cfg.get("column"))
            drifted = bool(
                threshold is not None and (score <= threshold if "p_value" in method else score >= threshold)
            )
        out[cfg["column"]] = {"score": score, "method": method, "threshold": threshold, "drifted": bool(drifted)}
    return out


def _method_name(method: Any) -> str:
    """Evidently reports an auto-picked test by display name ("K-S p_value") and an explicit
    one by its registry name ("jensenshannon"); use the display name for both."""
    if not isinstance(method, str):
        return str(method)
    try:
        from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

        tests = _registered_stat_tests.get(method)
        if tests:
            return next(iter(tests.values())).display_name
    except Exception:  # noqa: BLE001 - a private registry: fall back to the raw name
        pass
    return method


def _need(drifts: dict[str, dict], column: str) -> dict:
    if column not in drifts:
        raise RuntimeError(f"the Evidently snapshot has no ValueDrift result for column {column!r}")
    return drifts[column]


def _drifted_columns_share(raw: dict) -> float | None:
    for m in raw.get("metrics", []):
        if _metric_type(m) == "DriftedColumnsCount" and isinstance(m.get("value"), dict):
            return float(m["value"]["share"])
    return None


def _missing_shares(raw: dict, cur: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    found = {}
    for m in raw.get("metrics", []):
        if _metric_type(m) == "MissingValueCount" and isinstance(m.get("value"), dict):
            found[m["config"].get("column")] = float(m["value"]["share"])
    return {c: found[c] if c in found else float(cur[c].isna().mean()) for c in columns}
