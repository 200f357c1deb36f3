"""Drift monitoring: reference profiles, current batches, the Evidently report,
the verdict, the drift event.

A batch is a local folder or file, or an S3 prefix (s3://bucket/prefix, fetched with
boto3 through LEPTON_S3_ENDPOINT_URL and the AWS_* credentials); the inbox may be
either too. Batch formats: any raw format the loaders read (a folder of labelled images, IDX,
CIFAR, CSV/Parquet), or the prediction log the serving endpoint writes:

    prediction log = parquet files with columns
        timestamp      UTC timestamp of the request
        model_version  registry version that answered
        prediction     predicted class index (int)
        confidence     softmax probability of that class (float)
        value          a regression model's predicted number, in place of prediction and confidence
        f_<name>       one column per monitored input feature (see lepton_core.drift)
        label          true class index (regression: the true number), optional (when feedback arrives)

A regression champion is checked on its inputs, on the distribution of the numbers it
predicts, and, in a labelled batch, on its RMSE against the reference's.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from effects.data.data_source import detect_format
from effects.monitoring.workspace import SnapshotRecord, add_snapshot, batch_time
from effects.runtime import s3
from effects.runtime.settings import Settings, get_settings
from effects.serving.prediction_log import feedback_folder, open_store, processed_key, read_feedback
from effects.state import monitor_state
from effects.tracking import runs, tags
from effects.tracking.registry import champion, checkpoint_of
from lepton_core.data.formats import load_raw
from lepton_core.data.prepare import Prepared
from lepton_core.drift import VALUE_COLUMN, DriftThresholds, Verdict, decide_drift, output_column, predictor_frame
from lepton_core.errors import DataError, InputError, LeptonError
from lepton_core.fileio import publish_dir
from lepton_core.params import MonitorParams
from lepton_core.predictor import Predictor

if TYPE_CHECKING:
    from effects.monitoring.drift_report import DriftResult

REFERENCE_ARTIFACT = "monitoring/reference.parquet"


def reference_profile(prepared: Prepared, checkpoint: str | Path) -> pd.DataFrame:
    """Features and outputs on the frozen test split: what the monitor compares to."""
    return predictor_frame(Predictor.from_checkpoint(checkpoint), prepared.x["test"], prepared.y["test"])


# ---------------------------------------------------------------- batches
def fetch_s3_batch(uri: str, s: Settings) -> Path:
    """Download an S3 prefix (s3://bucket/prefix) into <home>/monitor/s3/ and return
    the local folder. The endpoint and credentials come from the environment."""
    bucket, prefix = s3.split_uri(uri)
    dst = s.home / "monitor" / "s3" / bucket / prefix
    c = s3.client(s.s3_endpoint_url)
    n = 0
    for key, meta in s3.list_objects(c, bucket, prefix + "/" if prefix else "").items():
        rel = key[len(prefix) + 1 if prefix else 0 :]
        if not rel or rel.endswith("/"):
            continue
        target = dst / rel
        if not target.exists() or target.stat().st_size != meta["Size"]:
            s3.download(c, bucket, key, target, meta["Size"])
        n += 1
    if n == 0:
        dst.mkdir(parents=True, exist_ok=True)  # an empty prefix is an empty batch
    return dst


def s3_batches(inbox: str, s: Settings) -> list[str]:
    """The "sub-folders" of an S3 inbox prefix, each one batch."""
    bucket, prefix = s3.split_uri(inbox)
    subs = s3.list_prefixes(s3.client(s.s3_endpoint_url), bucket, prefix + "/" if prefix else "")
    return sorted(f"s3://{bucket}/{p.rstrip('/')}" for p in subs)


def batch_id(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        h.update(f.read_bytes())
    return f"{path.name}-{h.hexdigest()[:12]}"


def batch_format(path: Path, fmt: str | None) -> str:
    """The batch's format: `fmt`, else detected (effects.data.data_source.detect_format),
    where a regression model's prediction log (`value` in place of prediction and
    confidence, next to the f_ features and request ids) is a prediction log too."""
    if not fmt:
        parquet = [path] if path.suffix == ".parquet" else sorted(path.glob("*.parquet")) if path.is_dir() else []
        if parquet:
            import pyarrow.parquet as pq

            cols = set(pq.read_schema(parquet[0]).names)
            if {VALUE_COLUMN, "request_id"} <= cols and any(c.startswith("f_") for c in cols):
                return "predlog"
    return detect_format(path, fmt)


def _with_feedback(df: pd.DataFrame, feedback_dir: Path | None) -> pd.DataFrame:
    """Join the true labels clients posted (`POST /v1/feedback`) onto logged rows: for
    each instance the label received last (a correction replaces what it corrects)."""
    if "request_id" not in df.columns or "label" in df.columns:
        return df
    fb = read_feedback(feedback_dir)
    if fb is None:
        return df
    fb = fb[["request_id", "instance", "label"]]
    out = df.merge(fb, on=["request_id", "instance"], how="left")
    return out if out["label"].notna().any() else df


def _table_columns(path: Path) -> list[str]:
    """The column names of a CSV/Parquet table, read from its header alone."""
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _batch_labels(path: Path, raw, predictor: Predictor) -> np.ndarray | None:
    """The batch's true labels in the model's terms, None for an unlabelled batch:
    class indices by class name (a batch with fewer classes maps correctly), or a
    regression model's targets (its label column is in the table)."""
    pre = predictor.preprocessing
    if pre.regression:
        # an unlabelled table reads as targets -1, a number like any other: ask the header
        return raw.y.astype(np.float64) if pre.label_column in _table_columns(path) else None
    index = {c: i for i, c in enumerate(pre.classes)}
    labels = np.array([index.get(raw.classes[int(c)], -1) if c >= 0 else -1 for c in raw.y], dtype=np.int64)
    return labels if len(labels) and (labels >= 0).all() else None


def current_frame(path: Path, fmt: str, predictor: Predictor, feedback_dir: Path | None = None) -> pd.DataFrame:
    """The batch as a feature frame; DataError with a verdict-ready message if unusable.
    Labelled raw batches are read with the model's own label column and class names
    (a regression model's: its target column, as numbers)."""
    pre = predictor.preprocessing
    if fmt == "predlog":
        files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
        if not files:
            raise DataError("insufficient data: no parquet files in the prediction log")
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        needed = (VALUE_COLUMN,) if pre.regression else ("prediction", "confidence")
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(f"schema mismatch: the prediction log lacks {', '.join(missing)}")
        return _with_feedback(df, feedback_dir)
    try:
        raw = load_raw(fmt, path, pre.label_column, labelled=False, task=pre.task)
    except DataError as e:
        msg = str(e)
        if "no readable" in msg or "no class sub-folders" in msg or "no usable" in msg:
            raise DataError(f"insufficient data: {msg}") from None
        raise DataError(f"schema mismatch: {msg}") from None
    labels = _batch_labels(path, raw, predictor)
    x = raw.x
    if np.issubdtype(x.dtype, np.floating):
        ok = np.isfinite(x.reshape(len(x), -1)).all(1)
        x, labels = x[ok], labels[ok] if labels is not None else None
    samples = pd.DataFrame(x, columns=raw.feature_names) if raw.kind == "tabular" else x
    try:
        return predictor_frame(predictor, samples, labels)
    except InputError as e:
        raise DataError(f"schema mismatch: {e}") from None


@dataclass
class MonitorResult:
    batch: str
    batch_id: str
    champion_version: str | None
    verdict: str
    status: str
    reasons: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    drifted_features: list[dict] = field(default_factory=list)
    report_html: str | None = None
    report_json: str | None = None
    mlflow_run_id: str | None = None
    report_url: str | None = None  # the report, rendered in the MLflow UI (a tracking server only)
    rows: int = 0
    accepted_for_training: bool = False
    event_emitted: bool = False


def _reference(c, run_id: str, s: Settings) -> pd.DataFrame:
    return pd.read_parquet(runs.run_artifact(c, run_id, REFERENCE_ARTIFACT, s.home))


def check_batch(
    batch: str | Path,
    fmt: str | None,
    params: MonitorParams,
    model_name: str,
    experiment: str,
    flow_run_id: str = "",
    settings: Settings | None = None,
) -> MonitorResult:
    """Compare one batch with the champion's reference profile; log the report."""
    s = settings or get_settings()
    path = fetch_s3_batch(str(batch), s) if str(batch).startswith("s3://") else Path(batch).expanduser().resolve()
    if not path.exists():
        raise LeptonError(f"{batch}: no such file or folder")
    bid = batch_id(path)
    c = runs.client(s)
    champ = champion(c, model_name)
    if champ is None:
        raise LeptonError(f"model {model_name!r} has no @champion to monitor; run `lepton retrain` first")
    result = MonitorResult(batch=str(path), batch_id=bid, champion_version=str(champ.version), verdict="", status="")
    reference = _reference(c, champ.run_id, s)
    verdict: Verdict
    record = None  # the report, for the Evidently workspace (none for a batch that could not be judged)
    try:
        fmt = batch_format(path, fmt)
        predictor = Predictor.from_checkpoint(checkpoint_of(c, champ.run_id, s))
        current = current_frame(path, fmt, predictor, feedback_folder(s) if fmt == "predlog" else None)
        out, title = s.home / "monitor" / "reports" / bid, f"{model_name} v{champ.version}: {bid}"
        verdict, drift = _judge(result, reference, current, predictor.regression, params, out, title)
        record = SnapshotRecord(drift.snapshot, list(drift.columns), predictor.regression, batch_time(path, current))
        result.accepted_for_training = "label" in current.columns and fmt != "predlog"
    except DataError as e:
        status, _, why = str(e).partition(": ")
        if status not in ("insufficient data", "schema mismatch"):
            status, why = "schema mismatch", str(e)
        verdict = Verdict(status, [why])
    result.verdict, result.status = verdict.line(), verdict.status
    result.reasons, result.scores = verdict.reasons, verdict.scores
    result.mlflow_run_id = _log_monitoring_run(c, s, experiment, champ, result, flow_run_id)
    if record is not None and record.snapshot is not None:  # over time: never fails the run
        add_snapshot(record, model_name, result, params.keep_snapshots, s)
    if result.accepted_for_training:  # False for a batch a person rejected before
        assert fmt is not None  # set only after detect_format named the format
        result.accepted_for_training = monitor_state.accept_batch(s, path, fmt, bid, result.rows)
    return result


def _judge(
    result: MonitorResult,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    regression: bool,
    params: MonitorParams,
    out: Path,
    title: str,
) -> tuple[Verdict, DriftResult]:
    """The verdict and the Evidently report of `current` against `reference`; fills in
    `result`'s rows, drifted features and report paths. DataError for a batch that
    cannot be judged."""
    from effects.monitoring.drift_report import run_drift_report

    output = output_column(regression)  # the predicted class, or a regression model's predicted number
    if output not in reference.columns:
        raise DataError(f"schema mismatch: the champion's reference profile has no {output!r} column")
    features = [col for col in reference.columns if col.startswith("f_")]
    missing = [col for col in features if col not in current.columns]
    if missing:
        raise DataError(f"schema mismatch: the batch lacks {', '.join(missing[:5])}")
    usable = current.dropna(subset=features + [output])
    result.rows = int(len(usable))
    if len(usable) < params.min_rows:
        raise DataError(f"insufficient data: {len(usable)} usable rows (< {params.min_rows})")
    drift = run_drift_report(
        reference,
        usable,
        features,
        out,
        prediction_column=output,
        title=title,
        label_column="label" if "label" in usable.columns else None,
        regression=regression,
    )
    t = DriftThresholds(
        params.drift_share, params.max_accuracy_drop, params.min_rows, params.prediction_drift, params.max_rmse_increase
    )
    q, drifted = drift.quality, bool(drift.prediction["drifted"])
    if regression:
        # The RMSE is compared with the reference's: the champion's predictions on its own
        # test split, so the same number as its test_rmse, but computed by the same code
        # on the frame the report shows beside the batch (no dependence on how a run
        # logged its metrics, and the HTML and the verdict cannot disagree).
        rmse = (q["reference_rmse"], q["current_rmse"]) if q else None
        verdict = decide_drift(drift.share_drifted, drifted, None, t, rmse=rmse, regression=True)
    else:
        verdict = decide_drift(drift.share_drifted, drifted, q["accuracy_drop"] if q else None, t)
    result.drifted_features = [
        {"feature": k.removeprefix("f_"), **v} for k, v in sorted(drift.columns.items()) if v["drifted"]
    ]
    result.report_html, result.report_json = str(drift.html_path), str(drift.json_path)
    return verdict, drift


def cooldown_line(last: float, until: float, now: float | None = None) -> str:
    """ "suppressed: cool-down until 15:42 UTC (the last event was at 14:42 UTC)"; the
    date too when the cool-down ends on another day."""

    def hm(t: float) -> str:
        same_day = time.gmtime(t)[:3] == time.gmtime(now if now is not None else time.time())[:3]
        return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", time.gmtime(t)) + " UTC"

    return f"suppressed: cool-down until {hm(until)} (the last event was at {hm(last)})"


def record_event_outcome(run_ids: list[str], outcome: str, settings: Settings | None = None) -> None:
    """Say on each drifted batch's monitoring run whether its drift event went out:
    the tag `lepton.monitor.event` ("emitted", or "suppressed: cool-down until ...")
    and a line in the run's description."""
    import logging

    from mlflow.exceptions import MlflowException

    s = settings or get_settings()
    c = runs.client(s)
    for rid in filter(None, run_ids):
        try:
            c.set_tag(rid, tags.MONITOR_EVENT, outcome)
            note = c.get_run(rid).data.tags.get("mlflow.note.content", "")
            c.set_tag(rid, "mlflow.note.content", f"{note}\n\nDrift event: {outcome}".strip())
        except MlflowException as e:  # bookkeeping: the event itself has gone out (or not) already
            logging.getLogger(__name__).warning(
                "monitoring run %s not tagged with its drift event: %s", rid, str(e).splitlines()[0][:200]
            )


REPORT_ARTIFACT = "monitoring/report.html"
_REPORT_LINE = "Latest drift report:"


def report_ui_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI page that opens the monitoring run with its HTML report shown
    (the UI renders HTML artifacts inline); None when there is no server to link to."""
    base = tracking_uri.rstrip("/")
    if not base.startswith(("http://", "https://")):
        return None
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{REPORT_ARTIFACT}"


def _with_report_line(description: str | None, line: str) -> str:
    """The version's description with its one "Latest drift report" line replaced;
    whatever else a person wrote there stays."""
    kept = [ln for ln in (description or "").splitlines() if not ln.startswith(_REPORT_LINE)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", line] if kept else [line])


def _log_monitoring_run(c, s: Settings, experiment: str, champ, r: MonitorResult, flow_run_id: str) -> str:
    exp = runs.ensure_experiment(c, f"{experiment}-monitoring", s)
    run = c.create_run(
        exp,
        run_name=f"monitor-{r.batch_id}",
        tags={
            tags.MONITORED_MODEL_VERSION: str(champ.version),
            tags.MONITORED_RUN_ID: champ.run_id,
            tags.BATCH_ID: r.batch_id,
            tags.MONITOR_VERDICT: r.verdict[:4000],
            tags.MONITOR_STATUS: r.status,
            tags.FLOW_RUN: flow_run_id,
        },
    )
    rid = run.info.run_id
    ts = int(time.time() * 1000)
    c.log_batch(
        rid,
        metrics=[runs.Metric(k, float(v), ts, 0) for k, v in r.scores.items()]
        + [runs.Metric("rows", float(r.rows), ts, 0)],
    )
    if r.report_html:
        c.log_artifact(rid, r.report_html, "monitoring")
        c.log_artifact(rid, r.report_json, "monitoring")
        r.report_url = report_ui_url(s.tracking_uri, exp, rid)
    # The run's description (markdown, shown on its page) leads to the report in one
    # click; so does the champion version's description, on the model's page.
    link = (
        f"[{REPORT_ARTIFACT}]({r.report_url})"
        if r.report_url
        else f"artifact {REPORT_ARTIFACT}"
        if r.report_html
        else None
    )
    c.set_tag(
        rid, "mlflow.note.content", f"**{r.verdict}**\n\nEvidently report: {link}" if link else f"**{r.verdict}**"
    )
    c.set_terminated(rid, "FINISHED")
    c.set_model_version_tag(champ.name, str(champ.version), tags.MONITOR_LAST_RUN_ID, rid)
    c.set_model_version_tag(champ.name, str(champ.version), tags.MONITOR_LAST_VERDICT, r.status)
    if link:
        line = f"{_REPORT_LINE} {link} ({r.status}, batch {r.batch_id})"
        c.update_model_version(champ.name, str(champ.version), description=_with_report_line(champ.description, line))
    return rid


def prediction_log_window(s: Settings, min_rows: int) -> Path | None:
    """Gather the prediction log's parts (a folder, or an S3 prefix under `lepton up`)
    that no run has checked into one window folder under <home>/monitor/windows/,
    and mark the parts taken; None while they hold fewer than `min_rows` rows. A
    window left unchecked by a crash is found by `new_batches` on the windows folder
    next time. Parts are claimed first: two workers at once take disjoint parts. The
    log's upkeep merges parts only once they are marked here, and marks each merged
    hour before writing it, so a window never takes a row twice."""
    store = open_store(s.prediction_log, s)
    done = monitor_state.processed(s)
    parts = [name for name in store.list() if processed_key(name) not in done]
    rows = {name: store.rows(name) for name in parts}
    if not parts or sum(rows.values()) < min_rows:
        return None
    mine = set(monitor_state.claim_batches(s, [processed_key(name) for name in parts]))
    parts = [name for name in parts if processed_key(name) in mine]
    if not parts or sum(rows[name] for name in parts) < min_rows:
        monitor_state.release_batches(s, sorted(mine))  # too few left for this worker
        return None
    window = s.home / "monitor" / "windows" / f"predlog-{Path(parts[0]).stem}--{Path(parts[-1]).stem}"

    def fetch(tmp: Path) -> None:
        for name in parts:
            store.fetch(name, tmp / name)

    publish_dir(window, fetch, replace=False)
    monitor_state.mark_processed(s, [processed_key(name) for name in parts])
    return window


def new_batches(inbox: Path, s: Settings) -> list[Path]:
    """Batches in the inbox that no monitor run has processed yet, oldest first."""
    if not inbox.exists():
        return []
    done = monitor_state.processed(s)
    items = [p for p in inbox.iterdir() if not p.name.startswith(".")]
    # by content id (name + hash): a new batch under an old name is new; bare names
    # are what earlier versions recorded
    fresh = [p for p in items if p.name not in done and batch_id(p) not in done]
    return sorted(fresh, key=lambda p: p.stat().st_mtime)


def claim_new(paths: list[Path], s: Settings) -> list[Path]:
    """Those of `paths` (from `new_batches`) this process now holds for checking,
    claimed by content id: a batch another worker is checking is left to it."""
    ids = {p: batch_id(p) for p in paths}
    mine = set(monitor_state.claim_batches(s, list(ids.values())))
    return [p for p in paths if ids[p] in mine]


# ---------------------------------------------------------------- demonstrations
def write_drift_batch(kind: str, strength: str, out_dir: str | Path, seed: int = 0) -> dict:
    """Write a labelled image-folder batch derived from held-out digits (the test
    split of the default digits preparation), drifted by `kind` at `strength`."""
    from PIL import Image

    from lepton_core.data.formats import load_digits
    from lepton_core.data.prepare import prepare_dataset
    from lepton_core.drift import KINDS, parse_strength, simulate_drift
    from lepton_core.params import DataParams

    if kind not in KINDS:
        raise LeptonError(f"unknown drift kind {kind!r} ({', '.join(KINDS)})")
    try:
        level = parse_strength(strength)
    except ValueError as e:
        raise LeptonError(str(e)) from None
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LeptonError(f"{out}: exists and is not an empty folder")
    d = DataParams()
    digits = load_digits()
    held_out = prepare_dataset(digits, val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=d.seed)
    x, y = simulate_drift(held_out.x["test"], held_out.y["test"], kind, level, seed=seed)

    def write_images(tmp: Path) -> None:
        for name in digits.classes:
            (tmp / name).mkdir()
        for i, (img, label) in enumerate(zip(x, y)):
            Image.fromarray(img[0], mode="L").save(tmp / digits.classes[int(label)] / f"{i:05d}.png")

    if out.exists():
        out.rmdir()  # empty (checked above): the new batch takes its place
    publish_dir(out, write_images)
    return {"path": str(out), "samples": int(len(y)), "kind": kind, "strength": level}
