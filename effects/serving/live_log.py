"""Two versions' answers read back from the prediction log, for `lepton compare
--live` and for `lepton promote`'s live half (lepton_core.live does the figures).

Where the rows are (effects/serving/prediction_log.py, lepton/serving/rollout.py):
- the log's own parts: the versions that answered (the champion; a canary version,
  for the requests it answered);
- `shadow/`: a shadow version's rows, with the request id and instance of the
  champion's row for the same request;
- `feedback/`: the true labels clients posted (request_id, instance, label); where one
  instance got two labels, the later one counts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from effects.runtime.settings import Settings, get_settings
from effects.serving import prediction_log
from effects.serving.prediction_log import LocalStore, S3Store, open_store
from effects.tracking import runs
from effects.tracking.versions import VersionRef, resolve
from lepton_core.drift import PREDICTION_COLUMN, VALUE_COLUMN
from lepton_core.errors import LeptonError
from lepton_core.live import KEY, live_figures

SHADOW = "shadow"  # the shadow's rows: <log>/shadow/
# without the log's own reader, a later label for the same instance wins by the first of
# these columns a feedback part has (else by the parts' names, which start with their time)
FEEDBACK_ORDER = ("received", "received_at", "sequence", "timestamp")


def _part_files(store: LocalStore | S3Store, sub: str, tmp: Path) -> Iterator[Path]:
    """Each part of `<log>/<sub>` (sub "": the log's own parts) as a local file, in name order."""
    for name in store.list(sub):
        rel = f"{sub}/{name}" if sub else name
        if isinstance(store, LocalStore):
            yield store.folder / rel
        else:
            dest = tmp / rel.replace("/", "--")
            try:
                store.fetch(rel, dest)
            except Exception as e:
                code = getattr(e, "response", {}).get("Error", {}).get("Code")
                if code in ("NoSuchKey", "404"):  # gone since the listing (compaction merged it)
                    continue
                raise
            yield dest


def _read(path: Path, wanted: tuple[str, ...]) -> pd.DataFrame | None:
    """The `wanted` columns a part has (None: a part that cannot be read, such as one
    being replaced by compaction, is skipped)."""
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        return pq.read_table(path, columns=[c for c in wanted if c in names]).to_pandas()
    except (OSError, ValueError):
        return None


def read_answers(
    store: LocalStore | S3Store, versions: set[str], since: datetime | None = None
) -> tuple[pd.DataFrame, bool]:
    """Every logged answer of `versions` (main parts and shadow/): model_version,
    request_id, instance, answer; and whether they are regression values."""
    wanted = ("timestamp", "model_version", "request_id", "instance", PREDICTION_COLUMN, VALUE_COLUMN)
    frames, regression = [], False
    with tempfile.TemporaryDirectory(prefix="lepton-live-") as tmp:
        for sub in ("", SHADOW):
            for path in _part_files(store, sub, Path(tmp)):
                df = _read(path, wanted)
                if df is None or "model_version" not in df.columns:
                    continue
                df = df[df["model_version"].astype(str).isin(versions)]
                if since is not None and "timestamp" in df.columns:
                    df = df[pd.to_datetime(df["timestamp"], utc=True) >= since]
                if df.empty:
                    continue
                column = VALUE_COLUMN if VALUE_COLUMN in df.columns else PREDICTION_COLUMN
                regression |= column == VALUE_COLUMN
                frames.append(
                    pd.DataFrame(
                        {
                            "model_version": df["model_version"].astype(str),
                            "request_id": df["request_id"].astype(str),
                            "instance": df["instance"].astype("int64"),
                            "answer": df[column],
                        }
                    )
                )
    if not frames:
        return pd.DataFrame({"model_version": [], "request_id": [], "instance": [], "answer": []}), regression
    out = pd.concat(frames, ignore_index=True)
    # one answer per version and instance (a part written twice by a retried flush)
    return out.drop_duplicates(["model_version", *KEY], keep="last"), regression


def read_feedback(store: LocalStore | S3Store, s: Settings) -> pd.DataFrame:
    """The true labels: request_id, instance, label, the latest one per instance
    (prediction_log.read_feedback, which the monitor reads them with)."""
    folder = prediction_log.feedback_folder(s, store)
    reader = getattr(prediction_log, "read_feedback", None)
    if callable(reader):
        fb = reader(folder)
    else:  # a log module from before the reader: the parts' order, or an order column
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        fb = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else None
        order = next((c for c in FEEDBACK_ORDER if fb is not None and c in fb.columns), None)
        fb = fb.sort_values(order, kind="stable") if fb is not None and order else fb
    if fb is None or fb.empty:
        return pd.DataFrame({"request_id": pd.Series(dtype=str), "instance": pd.Series(dtype="int64"), "label": []})
    fb = pd.DataFrame(
        {"request_id": fb["request_id"].astype(str), "instance": fb["instance"].astype("int64"), "label": fb["label"]}
    )
    return fb.drop_duplicates(KEY, keep="last")


def live_comparison(
    version_a: str, version_b: str, since_hours: float | None = None, settings: Settings | None = None
) -> dict:
    """A's and B's answers in the prediction log (the last `since_hours`, or all of
    it), paired on the requests both scored, with the labels clients posted: see
    lepton_core.live.live_figures. LeptonError (one line) when B (or A) has no row
    and so no request was scored by both."""
    s = settings or get_settings()
    store = open_store(s.prediction_log, s)
    since = datetime.now(UTC) - timedelta(hours=since_hours) if since_hours is not None else None
    answers, regression = read_answers(store, {version_a, version_b}, since)
    a = answers[answers["model_version"] == version_a].drop(columns="model_version")
    b = answers[answers["model_version"] == version_b].drop(columns="model_version")
    if a.empty or b.empty:
        within = f" in the last {since_hours:g} hours" if since_hours is not None else ""
        missing = version_b if b.empty else version_a
        raise LeptonError(
            f"no request was scored by both {version_a} and {version_b} (v{missing} has no row in the prediction "
            f"log {store}{within}); run a shadow (serve.shadow) first"
        )
    figures = live_figures(a, b, read_feedback(store, s), regression)
    return {"log": str(store), "since_hours": since_hours, **figures}


def live_evidence(champion: str, challenger: str, settings: Settings) -> dict:
    """The live figures `lepton promote` judges a challenger on (all of the log):
    effects.tracking.registry.promote_version's `live_evidence`."""
    return live_comparison(champion, challenger, None, settings)


def compare_live(
    a: VersionRef, b: VersionRef, since_hours: float | None = None, settings: Settings | None = None
) -> dict:
    """`lepton compare --live A B`: the two versions the references name (numbers or
    aliases, resolved in the registry) on the traffic in the prediction log, with
    their aliases."""
    s = settings or get_settings()
    c = runs.client(s)
    mv_a, mv_b = resolve(c, a), resolve(c, b)
    if str(mv_a.version) == str(mv_b.version):
        raise LeptonError(f"{a} and {b} are both v{mv_a.version}: compare two different versions")
    figures = live_comparison(str(mv_a.version), str(mv_b.version), since_hours, s)
    aliases: dict[str, list[str]] = {}
    for alias, version in (c.get_registered_model(a.model).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    for side, mv in (("a", mv_a), ("b", mv_b)):
        names = sorted(aliases.get(str(mv.version), []))
        figures[side] = {"version": str(mv.version), "aliases": names, **figures[side]}
    return {"registered_model": a.model, **figures}
