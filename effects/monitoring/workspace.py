"""Monitoring over time: every monitor run's Evidently snapshot in an Evidently workspace.

The workspace is the `evidently ui` service of `lepton up` (``$LEPTON_EVIDENTLY_URL``,
writes signed with ``$LEPTON_EVIDENTLY_SECRET``), else a local folder,
``<home>/monitor/evidently``, that ``evidently ui --workspace`` can open.

One Evidently project per model (named after it) holds the snapshots and a dashboard
whose panels show, over time: the share of drifted features, prediction drift, the
confidence (a regression model: its mean predicted value), the rows checked, accuracy
(regression: RMSE) on labelled batches, and each feature's drift score. A snapshot is
the monitor's own report (no second Evidently run), with

  * timestamp: the window's last prediction (a prediction log), else the batch's newest
    file (naive UTC, as Evidently keeps its timestamps);
  * tags: the champion version ("v3");
  * metadata: batch id, MLflow run id, champion version, verdict, MLflow report link.

A series is keyed by the metric's parameters, which the report keeps the same from run to
run (the columns, the resolved test and threshold), so each line stays one series. A
stored snapshot keeps the values of the metric types the dashboard draws and a note
where the full report is (MLflow), not the rendered report: `evidently ui` parses every
snapshot of its workspace on its first request and holds them in memory. For a table of
20 features, 300 snapshots with the report took 49 s and 2.5 GiB there, 300 of these
(53 kB each) 3.6 s and 0.4 GiB. At most `monitor.keep_snapshots` snapshots are kept,
the first added go first.

A workspace that is down, slow or refuses never fails the monitor: `add_snapshot` logs
one warning line and returns None. The secret is sent as a header, never logged.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from effects.runtime.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

URL_ENV = "LEPTON_EVIDENTLY_URL"
SECRET_ENV = "LEPTON_EVIDENTLY_SECRET"
TIMEOUT_S = 10.0  # per request to the UI service; a hung service costs the monitor this, then a warning
TAB = "Monitoring"
FEATURES_PER_PANEL = 10  # lines per feature-drift panel: readable
MAX_FEATURE_PANELS = 4  # at most 40 features get their own line; the share panel counts them all
_PREFIX = "evidently:metric_v2:"
# The metric types the dashboard draws: a snapshot keeps these values only (Evidently's UI
# holds every snapshot in memory, and parses them all on its first request after a start;
# the full report, ten to thirty times larger, stays in MLflow)
DRAWN = {_PREFIX + t for t in ("DriftedColumnsCount", "ValueDrift", "MeanValue", "RowCount", "Accuracy", "RMSE")}


class MonitorRun(Protocol):
    """What a snapshot says of its monitor run (effects.monitoring.monitor.MonitorResult)."""

    batch_id: str
    champion_version: str | None
    verdict: str
    status: str
    mlflow_run_id: str | None
    report_url: str | None


@dataclass
class SnapshotRecord:
    """What a monitor run hands over: its Evidently report and what the dashboard needs."""

    snapshot: Any  # the report's evidently.core.serialization.SnapshotModel
    features: list[str]  # the feature columns the report checked, in the model's order
    regression: bool
    timestamp: datetime  # the window's last prediction, or the batch's time


def workspace_dir(s: Settings) -> Path:
    return s.home / "monitor" / "evidently"


def location(s: Settings) -> str:
    """Where snapshots go: the UI's URL, or the local folder."""
    return os.environ.get(URL_ENV, "").strip() or str(workspace_dir(s))


def batch_time(path: Path, frame: pd.DataFrame) -> datetime:
    """The window's last prediction (a prediction log's `timestamp`), else the time of
    the batch's newest file; aware UTC."""
    import pandas as pd

    if "timestamp" in frame.columns:
        ts = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce").max()
        if not pd.isna(ts):
            return ts.to_pydatetime()
    try:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        newest = max((p.stat().st_mtime for p in files), default=path.stat().st_mtime)
    except OSError:  # gone meanwhile: the time of the check
        return datetime.now(UTC)
    return datetime.fromtimestamp(newest, UTC)


def add_snapshot(record: SnapshotRecord, model_name: str, result: MonitorRun, keep: int, s: Settings) -> str | None:
    """Add one monitor run's snapshot to the model's project (created with its dashboard
    when missing, the dashboard rewritten when its panels should differ), then drop the
    first-added snapshots beyond `keep`. `result` is the run's MonitorResult. Returns the
    snapshot's URL (a local workspace: its file), None when the workspace failed."""
    where = location(s)
    try:
        ws = open_workspace(s)
        project_id = ensure_project(ws, model_name, record)
        ref = ws.add_run(project_id, _stored(record, result))
        prune(ws, project_id, keep)
        return str(ref.url)
    except Exception as e:  # noqa: BLE001 - down, slow, refusing or full: the monitor goes on
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        log.warning(
            "Evidently workspace %s: snapshot of batch %s not added (%s: %s)",
            where,
            result.batch_id,
            type(e).__name__,
            first,
        )
        return None


def open_workspace(s: Settings):
    """The UI service at $LEPTON_EVIDENTLY_URL (checked, with request timeouts), else
    the local folder."""
    url = os.environ.get(URL_ENV, "").strip()
    if url:
        return _remote_class()(url, secret=os.environ.get(SECRET_ENV) or None)
    path = workspace_dir(s)
    path.mkdir(parents=True, exist_ok=True)
    return _local_class()(str(path))


def _local_class():
    """Evidently's local Workspace on the same files, without what this module does not
    use: its dataset manager, whose set-up parses every stored snapshot (each run would
    take longer the more are kept, and one malformed file would stop them all).
    Snapshots are written atomically and with the C JSON encoder (Evidently's own write
    streams through the pure-Python one)."""
    import json

    from evidently.legacy.core import new_id
    from evidently.legacy.utils import NumpyEncoder
    from evidently.ui.storage.local.base import LocalState
    from evidently.ui.workspace import Workspace

    from lepton_core.fileio import atomic_write

    class LightWorkspace(Workspace):
        def __init__(self, path: str):  # no super().__init__(): see above
            self.path = path
            self.state = LocalState(path)

        def _add_run(self, project_id, snapshot):
            snapshot_id = new_id()
            target = Path(self._get_snapshot_url(project_id, snapshot_id))
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, json.dumps(snapshot.to_snapshot_model().dict(), cls=NumpyEncoder))
            return snapshot_id

    return LightWorkspace


def _remote_class():
    """RemoteWorkspace whose requests time out (Evidently's own wait forever)."""
    from evidently.errors import EvidentlyError
    from evidently.ui.workspace import RemoteWorkspace
    from requests import Session

    class TimedRemoteWorkspace(RemoteWorkspace):
        def _request(self, path, method, query_params=None, body=None, response_model=None, **kw):  # type: ignore[override]
            from evidently._pydantic_compat import parse_obj_as

            request = self._prepare_request(path, method, query_params, body, **kw)
            with Session() as session:
                response = session.send(request.prepare(), timeout=TIMEOUT_S)
            if response.status_code >= 400:
                try:
                    detail = response.json()["detail"]
                except (ValueError, KeyError, TypeError):
                    detail = None
                if detail:
                    raise EvidentlyError(str(detail))
            response.raise_for_status()
            return parse_obj_as(response_model, response.json()) if response_model is not None else response

    return TimedRemoteWorkspace


# ---------------------------------------------------------------- project and dashboard
def ensure_project(ws, model_name: str, record: SnapshotRecord) -> uuid.UUID:
    """The model's project (the first created, should two workers have raced), with the
    dashboard `dashboard(...)` describes."""
    found = sorted(ws.search_project(model_name), key=lambda p: p.id)
    project = found[0] if found else ws.create_project(model_name, description=_description(model_name))
    want = dashboard(record)
    if _layout(ws.get_dashboard(project.id)) != _layout(want):
        ws.save_dashboard(project.id, want)
    return project.id


def _description(model_name: str) -> str:
    return f"Lepton's monitor runs of {model_name}: drift, confidence and quality over time, one point per batch."


def _layout(d) -> list:
    """A dashboard's content without its generated ids."""
    panels = {p.id: p for p in d.panels}
    return [
        (
            t.title,
            [
                (p.title, p.subtitle, p.size, p.plot_params, [v.dict() for v in p.values])
                for p in (panels[i] for i in t.panels if i in panels)
            ],
        )
        for t in d.tabs
    ]


def dashboard(record: SnapshotRecord):
    """The project's dashboard: one tab of line panels, each one metric of the report."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel

    panels = _summary_panels(record) + _feature_panels(record)
    return DashboardModel(tabs=[DashboardTabModel(title=TAB, panels=[p.id for p in panels])], panels=panels)


def _line(title: str, subtitle: str, values: list[tuple[str, str, dict]], size: str = "half"):
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    metrics = [PanelMetric(legend=legend, metric=_PREFIX + m, metric_labels=labels) for legend, m, labels in values]
    return line_plot_panel(title=title, values=metrics, description=subtitle, size=size)


def _summary_panels(record: SnapshotRecord) -> list:
    n = len(record.features)
    if record.regression:
        output = ("Prediction drift", "drift score of the predicted values: " + _test(record, "value"), "value")
        level = _line("Predicted value", "mean predicted value", [("mean", "MeanValue", {"column": "value"})])
        quality = _line("RMSE (labelled batches)", "root mean squared error", [("RMSE", "RMSE", {})])
    else:
        output = ("Prediction drift", "drift of the predicted classes: " + _test(record, "prediction"), "prediction")
        level = _line(
            "Confidence", "mean confidence of the predicted class", [("mean", "MeanValue", {"column": "confidence"})]
        )
        quality = _line("Accuracy (labelled batches)", "share of correct predictions", [("accuracy", "Accuracy", {})])
    return [
        _line(
            "Share of drifted features",
            f"drifted features / all {n} features",
            [("share", "DriftedColumnsCount", {"value_type": "share"})],
        ),
        _line(output[0], output[1], [("score", "ValueDrift", {"column": output[2]})]),
        level,
        _line("Rows checked", "usable rows in the batch", [("rows", "RowCount", {})]),
        quality,
    ]


def _feature_panels(record: SnapshotRecord) -> list:
    shown = record.features[: FEATURES_PER_PANEL * MAX_FEATURE_PANELS]
    total = len(record.features)
    chunks = [shown[i : i + FEATURES_PER_PANEL] for i in range(0, len(shown), FEATURES_PER_PANEL)]
    test = _test(record, shown[0]) if shown else ""
    panels = []
    for i, chunk in enumerate(chunks):
        title = "Feature drift scores"
        if total > FEATURES_PER_PANEL:
            start = i * FEATURES_PER_PANEL
            title += f" ({start + 1}-{start + len(chunk)} of {total})"
        values = [(c.removeprefix("f_"), "ValueDrift", {"column": c}) for c in chunk]
        panels.append(_line(title, "per feature: " + test, values, size="full"))
    return panels


def _test(record: SnapshotRecord, column: str) -> str:
    """How the report scored `column`'s drift, from the snapshot: "K-S p_value, drift at
    or below 0.05"; a distance drifts at or above its threshold."""
    for r in record.snapshot.metric_results.values():
        params = r.metric_value_location.metric.params
        if params.get("type") == _PREFIX + "ValueDrift" and params.get("column") == column:
            method, threshold = str(params.get("method")), params.get("threshold")
            side = "below" if "p_value" in method else "above"
            return f"{method}, drift at or {side} {threshold}"
    return "drift score"


# ---------------------------------------------------------------- snapshots
def _stored(record: SnapshotRecord, result: MonitorRun):
    """The snapshot as stored: this run's timestamp, tags and metadata; the values of the
    metric types the dashboard draws (`DRAWN`), and in place of the rendered report a
    note that says where the full report is."""
    from evidently.core.report import Snapshot
    from evidently.legacy.renderers.html_widgets import text_widget

    model = record.snapshot
    results = {
        k: r.copy(update={"widget": None})
        for k, r in model.metric_results.items()
        if r.metric_value_location.metric.params.get("type") in DRAWN
    }
    metadata = {
        "batch_id": result.batch_id,
        "mlflow_run_id": result.mlflow_run_id or "",
        "model_version": str(result.champion_version),
        "verdict": result.status,
        **({"mlflow_report": result.report_url} if result.report_url else {}),
    }
    stored = model.copy(
        update={
            "timestamp": record.timestamp.astimezone(UTC).replace(tzinfo=None),
            "tags": [f"v{result.champion_version}"],
            "metadata": {**model.metadata, **metadata},
            "metric_results": results,
            "top_level_metrics": [m for m in model.top_level_metrics if m in results],
            "widgets": [text_widget(title="Lepton monitor run", text=_note(result))],
            "tests_widgets": [],
        }
    )
    return Snapshot.load_model(stored)


def _note(result: MonitorRun) -> str:
    where = (
        f"[in MLflow]({result.report_url})"
        if result.report_url
        else f"in MLflow: monitoring run `{result.mlflow_run_id}`, artifact `monitoring/report.html`"
    )
    return (
        f"**{result.verdict or result.status}**\n\nBatch `{result.batch_id}`, champion v{result.champion_version}."
        f"\n\nThis snapshot keeps the values the dashboard draws; the full Evidently report is {where}."
    )


def snapshot_ids(ws, project_id) -> list[uuid.UUID]:
    """The project's snapshots, first added first (their ids are UUIDv7: time-ordered)."""
    from evidently.ui.workspace import RemoteWorkspace

    if isinstance(ws, RemoteWorkspace):
        listed = ws._request(f"/api/projects/{project_id}/snapshots", "GET").json()
        return sorted(uuid.UUID(str(m["id"])) for m in listed)
    return sorted(uuid.UUID(str(i)) for i in ws.list_runs(project_id))


def prune(ws, project_id, keep: int) -> int:
    """Delete the first-added snapshots beyond `keep`; how many went."""
    from evidently.ui.workspace import RemoteWorkspace

    ids = snapshot_ids(ws, project_id)
    drop = ids[: max(len(ids) - keep, 0)]
    for sid in drop:
        if isinstance(ws, RemoteWorkspace):
            ws._request(f"/api/projects/{project_id}/{sid}", "DELETE")
        else:
            try:
                ws.delete_run(project_id, sid)
            except FileNotFoundError:  # another worker took it first
                pass
    return len(drop)
