"""Keeping the prediction log bounded: compaction and retention.

Compaction: the parts of a finished UTC hour that the monitor has read (its state
records each part it took into a window, `processed_key`) are merged into one
`<hour>0000-hour-<digest>-n<rows>.parquet` per column layout, recorded as read before
it is written (so no window ever takes it again), and the parts are deleted after.
A part that arrives late for an hour (out of the spool after an S3 outage) is merged
with that hour's file once the monitor has read it. Feedback parts (keeping the last
label per instance) and a shadow version's parts (`shadow/`) are merged the same way,
without waiting: every check reads all the feedback, and no window the shadow's rows.
Rows repeated by a compaction cut short between writing and deleting are dropped by
the next one.

Retention: whatever is older than `retention_days` is deleted, in the folder or under
the S3 prefix: parts by the time in their name, an hour's file once its hour has
passed the cut-off, the monitor's local copies too (its windows of the log, its copy of
an S3 log's feedback).

`upkeep` does both; the server runs it on a thread of its own (PredictionLog's
`upkeep`), one process of a machine at a time.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import re
import shutil
import time

from effects.runtime.locks import file_lock
from effects.runtime.settings import Settings
from effects.serving.prediction_log import FEEDBACK, LocalStore, S3Store, latest_feedback, processed_key
from effects.state import monitor_state

HOUR_S = 3600
GRACE_S = 600  # an hour is finished this long after it ends: writers flushing late are done
_STAMP = re.compile(r"(\d{8}T\d{6})")
_HOURLY = "-hour-"
SHADOW = "shadow"  # a shadow version's rows (lepton/serving/rollout.py): kept and compacted like the rest
SUBS = ("", FEEDBACK, SHADOW)


def name_time(name: str) -> float | None:
    """The UTC time (epoch s) a part's name starts with; None for another name."""
    m = _STAMP.match(name)
    if not m:
        return None
    try:
        return float(calendar.timegm(time.strptime(m.group(1), "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


def newest_row_time(name: str) -> float | None:
    """Up to when a file holds rows: its name's time, the end of the hour for a
    compacted hour."""
    t = name_time(name)
    return None if t is None else t + HOUR_S if _HOURLY in name else t


def hourly_name(hour: str, inputs: list[str], rows: int) -> str:
    digest = hashlib.sha256("\n".join(sorted(inputs)).encode()).hexdigest()[:12]
    return f"{hour}0000{_HOURLY}{digest}-n{rows}.parquet"


def expire(store: LocalStore | S3Store, cutoff: float) -> int:
    """Delete the predictions, feedback and shadow rows whose newest row is older
    than `cutoff` (epoch s); how many files went."""
    gone = 0
    for sub in SUBS:
        old = [n for n in store.list(sub) if (t := newest_row_time(n)) is not None and t < cutoff]
        store.delete([f"{sub}/{n}" if sub else n for n in old])
        gone += len(old)
    return gone


def _finished_hours(names: list[str], now: float) -> dict[str, list[str]]:
    hours: dict[str, list[str]] = {}
    for n in names:
        t = name_time(n)
        if t is not None and t - t % HOUR_S + HOUR_S + GRACE_S <= now:
            hours.setdefault(n[:11], []).append(n)  # "20261207T04"
    return hours


def _tables(store: LocalStore | S3Store, rels: list[str]) -> dict[object, tuple[list[str], list]]:
    """The files' tables grouped by column layout: {schema: (names, tables)}."""
    import pyarrow.parquet as pq

    groups: dict[object, tuple[list[str], list]] = {}
    for rel in rels:
        t = pq.read_table(io.BytesIO(store.read(rel)))
        t = t.replace_schema_metadata(None)
        names, tables = groups.setdefault(t.schema, ([], []))
        names.append(rel)
        tables.append(t)
    return groups


def _parquet(df) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def compact(store: LocalStore | S3Store, s: Settings, now: float | None = None) -> int:
    """Merge the read parts of each finished hour (and every feedback and shadow part
    of one) into one file per hour and layout; how many files went."""
    import pyarrow as pa

    now = time.time() if now is None else now
    done = monitor_state.processed(s)
    gone = 0
    for sub in SUBS:
        for hour, names in sorted(_finished_hours(store.list(sub), now).items()):
            if not sub:  # predictions: only what the monitor has read
                names = [n for n in names if processed_key(n) in done]
            if len(names) < 2:
                continue
            rels = [f"{sub}/{n}" if sub else n for n in names]
            for group_rels, tables in _tables(store, rels).values():
                if len(group_rels) < 2:
                    continue
                df = pa.concat_tables(tables).to_pandas()
                df = latest_feedback([df]) if sub == FEEDBACK else df.drop_duplicates(ignore_index=True)
                out = hourly_name(hour, group_rels, len(df))
                if not sub:  # read already: recorded before it exists, so no window can take it
                    monitor_state.mark_processed(s, [processed_key(out)])
                store.put(f"{sub}/{out}" if sub else out, _parquet(df))
                store.delete([r for r in group_rels if r.rpartition("/")[2] != out])
                gone += len(group_rels) - 1
    return gone


def expire_local_copies(s: Settings, cutoff: float) -> int:
    """The monitor's windows of the log and its copy of S3 feedback, past `cutoff`."""
    gone = 0
    windows = s.home / "monitor" / "windows"
    for w in windows.glob("predlog-*--*") if windows.is_dir() else []:
        t = newest_row_time(w.name.rpartition("--")[2])
        if t is not None and t < cutoff:
            shutil.rmtree(w, ignore_errors=True)
            gone += 1
    cache = s.home / "monitor" / FEEDBACK
    for p in cache.glob("*.parquet") if cache.is_dir() else []:
        t = newest_row_time(p.name)
        if t is not None and t < cutoff:
            p.unlink(missing_ok=True)
            gone += 1
    return gone


def upkeep(store: LocalStore | S3Store, s: Settings, retention_days: float, now: float | None = None) -> dict:
    """Retention (`retention_days` > 0), then compaction; {"expired", "compacted"}
    (files removed), or {} when another process of this machine is at it."""
    now = time.time() if now is None else now
    try:
        with file_lock(s.locks_dir / "prediction-log-upkeep.lock", timeout=0):
            expired = 0
            if retention_days > 0:
                cutoff = now - retention_days * 86400
                expired = expire(store, cutoff) + expire_local_copies(s, cutoff)
            return {"expired": expired, "compacted": compact(store, s, now)}
    except TimeoutError:
        return {}
