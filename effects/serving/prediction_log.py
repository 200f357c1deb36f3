"""The server's prediction log: every answered instance, written off the request
path in batches, in the monitor's prediction-log format (see effects/monitoring/monitor.py):

    timestamp, model_version, request_id, instance, prediction, confidence, f_<feature>...

(for a regression model, `value`, the predicted number in the target's units, in place
of prediction and confidence), and, in `feedback/`, the true labels clients post later:
request_id, instance, label (an int64 class index; a float64 target for regression),
received (when the server took it, ns since the epoch: of two labels for one instance
the one received last counts, see `latest_feedback`).

The log lives in a folder, or under an S3 prefix (`lepton up`): a `LogStore`.
Rows wait in a bounded queue; a background thread turns them into feature rows and
writes one parquet part (`<UTC time>-<id>-n<rows>.parquet`, atomically) every
`flush_seconds` or `flush_rows`. When S3 cannot take a part (an outage), the part
waits in a local spool and is sent, oldest first, once S3 answers again. A part
that cannot be written anywhere (full disk, no permission) or a full queue drops
its rows and counts them in `dropped`; nothing here raises into, or slows, a
prediction. Feedback waits in the same queue and is written on the same schedule,
so a stream of feedback makes a part every `flush_seconds`, not one per POST.

`sample_rate` below 1 logs that share of the instances, picked by the request id and
the instance's index alone (`sampled`): the feedback for an instance is kept exactly
when its prediction was. Compaction and retention (effects/serving/log_upkeep.py)
run on a thread of their own, every `upkeep_every_s`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effects.runtime import s3
from effects.runtime.settings import Settings
from lepton_core.drift import VALUE_COLUMN, feature_frame, output_features
from lepton_core.fileio import atomic_write

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

_ROWS = re.compile(r"-n(\d+)\.parquet$")
FEEDBACK = "feedback"  # the sub-folder of the true labels


def part_name(rows: int, at: float | None = None) -> str:
    """`<UTC time>-<id>-n<rows>.parquet`: names sort by the time they were written."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at))
    return f"{stamp}-{uuid.uuid4().hex[:8]}-n{rows}.parquet"


def processed_key(name: str) -> str:
    """How the monitor's state records a prediction-log part it has read."""
    return f"predlog:{name}"


_WEYL = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / the golden ratio: instance i's step


def sampled(request_id: str, instances: int, rate: float) -> np.ndarray:
    """(instances,) bool: which instances of a request the log keeps at `rate`.
    A function of the request id (its random leading hex digits) and the index
    alone, so predictions and their feedback agree without a lookup; consecutive
    instances follow a Weyl sequence, so a request keeps close to `rate` of its own."""
    if rate >= 1:
        return np.ones(instances, dtype=bool)
    try:
        seed = int(request_id[:16], 16)
    except ValueError:  # an id of another shape: its hash
        seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
    u = np.uint64(seed) + np.arange(instances, dtype=np.uint64) * _WEYL  # wraps around 2**64
    return (u >> np.uint64(11)).astype(np.float64) / 2.0**53 < rate


def latest_feedback(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Feedback frames (in the order their parts were written) as one, with one label
    per (request_id, instance): the one received last. Rows from before `received`
    was recorded count as older than any that have it, in their parts' order."""
    import pandas as pd

    parts = []
    for i, f in enumerate(frames):
        f = f if "received" in f.columns else f.assign(received=np.int64(-1))
        parts.append(f.assign(_part=i))
    if not parts:
        return pd.DataFrame(columns=["request_id", "instance", "label", "received"])
    fb = pd.concat(parts, ignore_index=True).sort_values(["received", "_part"], kind="stable")
    fb = fb.drop_duplicates(["request_id", "instance"], keep="last").drop(columns="_part")
    return fb.sort_values(["request_id", "instance"], kind="stable").reset_index(drop=True)


def part_rows(name: str, read=None) -> int:
    """Rows of a part, from its name (or, for parts named before the count was in
    the name, by `read()`ing its parquet footer)."""
    m = _ROWS.search(name)
    if m:
        return int(m.group(1))
    if read is None:
        return 0
    import pyarrow.parquet as pq

    return pq.ParquetFile(read()).metadata.num_rows


class LocalStore:
    """The log in a folder of this machine."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def __str__(self) -> str:
        return str(self.folder)

    def put(self, rel: str, data: bytes) -> None:
        atomic_write(self.folder / rel, data, fsync=False)

    def list(self, sub: str = "") -> list[str]:
        d = self.folder / sub if sub else self.folder
        return sorted(p.name for p in d.glob("*.parquet")) if d.is_dir() else []

    def rows(self, name: str) -> int:
        return part_rows(name, lambda: self.folder / name)

    def fetch(self, rel: str, dest: Path) -> None:
        """A part into `dest` (a hard link: parts never change once written)."""
        try:
            os.link(self.folder / rel, dest)
        except OSError:  # another file system
            dest.write_bytes((self.folder / rel).read_bytes())

    def read(self, rel: str) -> bytes:
        return (self.folder / rel).read_bytes()

    def delete(self, rels: Sequence[str]) -> None:
        for rel in rels:
            (self.folder / rel).unlink(missing_ok=True)


class S3Store:
    """The log under s3://bucket/prefix. Short timeouts and one retry: a flush during
    an outage gives up in seconds and the part goes to the spool."""

    def __init__(self, uri: str, s: Settings):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"{uri}: no bucket in the S3 prediction-log URI")
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix.strip("/")
        self.extra = {"ServerSideEncryption": s.sse} if s.sse else {}
        # three tries in all: an outage gives up in seconds
        self.client = s3.client(s.s3_endpoint_url, attempts=3, connect_timeout=2, read_timeout=10)

    def __str__(self) -> str:
        return self.uri

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, **self.extra)

    def list(self, sub: str = "") -> list[str]:
        base = self._key(sub + "/" if sub else "")
        base = base if base.endswith("/") or not base else base + "/"
        objects = s3.list_objects(self.client, self.bucket, base, delimiter="/")
        return sorted(k[len(base) :] for k in objects if k.endswith(".parquet"))

    def rows(self, name: str) -> int:
        return part_rows(
            name, lambda: io.BytesIO(self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read())
        )

    def fetch(self, rel: str, dest: Path) -> None:
        s3.download(self.client, self.bucket, self._key(rel), dest)

    def read(self, rel: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        return body

    def delete(self, rels: Sequence[str]) -> None:
        """Delete these parts (missing ones are no error), 1,000 keys a request."""
        for i in range(0, len(rels), 1000):
            keys = [{"Key": self._key(rel)} for rel in rels[i : i + 1000]]
            out = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            if out.get("Errors"):
                e = out["Errors"][0]
                raise OSError(f"S3 refused to delete {e.get('Key')}: {e.get('Code')} {e.get('Message', '')}".strip())


def open_store(uri: str, s: Settings) -> LocalStore | S3Store:
    return S3Store(uri, s) if uri.startswith("s3://") else LocalStore(Path(uri).expanduser())


def feedback_folder(s: Settings, store: LocalStore | S3Store | None = None) -> Path:
    """A local folder with every feedback part of the log (for S3, a copy in
    <home>/monitor/feedback that follows the prefix: new parts fetched, parts that
    compaction or retention removed there removed here)."""
    store = store or open_store(s.prediction_log, s)
    if isinstance(store, LocalStore):
        return store.folder / FEEDBACK
    cache = s.home / "monitor" / FEEDBACK
    cache.mkdir(parents=True, exist_ok=True)
    names = store.list(FEEDBACK)
    for name in names:
        if not (cache / name).exists():
            tmp = cache / f".{name}.part"
            store.fetch(f"{FEEDBACK}/{name}", tmp)
            os.replace(tmp, cache / name)
    for gone in set(p.name for p in cache.glob("*.parquet")) - set(names):
        (cache / gone).unlink(missing_ok=True)
    return cache


def read_feedback(folder: Path | None) -> pd.DataFrame | None:
    """Every label in a feedback folder, the last one per instance (`latest_feedback`);
    None when there is none."""
    import pandas as pd

    files = sorted(folder.glob("*.parquet")) if folder and folder.is_dir() else []
    if not files:
        return None
    return latest_feedback([pd.read_parquet(f) for f in files])


@dataclass
class _Entry:
    """The answered requests of one forward pass (or one request)."""

    timestamp: float
    version: str
    request_ids: list[str]  # the requests in order
    counts: list[int]  # how many of the N instances are each request's
    x: np.ndarray  # model input of the instances (N, ...)
    logits: np.ndarray  # (N, K)
    kind: str
    feature_names: list[str]
    values: np.ndarray | None = None  # (N,) float64 predicted targets (a regression model)
    instances: np.ndarray | None = None  # (N,) the instances' indices in their request (None: all, in order)


def _parquet(table: pa.Table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _nanoseconds(seconds: np.ndarray) -> np.ndarray:
    """Seconds since the epoch (float) -> int64 nanoseconds, the whole seconds apart from
    the fraction (a float64 of ~1.8e18 ns would keep only a quarter-microsecond)."""
    whole = np.floor(seconds)
    return whole.astype(np.int64) * 1_000_000_000 + np.round((seconds - whole) * 1e9).astype(np.int64)


def _part_table(version: str, group: list[_Entry], answers: dict[str, np.ndarray] | pd.DataFrame) -> pa.Table:
    """One group's rows as an Arrow table: timestamp, model_version, request_id and
    instance, then the answer's (and the features') columns. Built from the arrays
    directly, not through a DataFrame: the log's thread holds Python's interpreter lock,
    which the answers need, while it builds a part, and pandas' inserts and conversions
    cost several times the arrays' own work on a part of a few thousand rows."""
    import pyarrow as pa

    instance, ids, stamps = _group_index(group)
    columns: dict[str, Any] = {
        "timestamp": pa.array(_nanoseconds(stamps), pa.timestamp("ns", tz="UTC")),
        "model_version": pa.array(np.full(len(ids), version, dtype=object), pa.string()),
        "request_id": pa.array(ids, pa.string()),
        "instance": pa.array(instance, pa.int64()),
    }
    if isinstance(answers, dict):
        columns.update(answers)
        return pa.table(columns)
    # converted on this thread: pyarrow's pool of threads costs more than it saves on a part this size
    features = pa.Table.from_pandas(answers, preserve_index=False, nthreads=1)
    columns.update(zip(features.column_names, features.columns, strict=True))
    return pa.table(columns)


def _group_index(group: list[_Entry]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows' instance in their request, request id and timestamp, for the entries of
    one part: a few array operations for the whole part, not a few for each entry (a
    part may hold thousands of one-request entries, and the log's thread holds Python's
    interpreter lock, which the answers need, while it builds the part)."""
    ids: list[str] = []
    counts: list[int] = []
    for e in group:
        ids += e.request_ids
        counts += e.counts
    n = np.asarray(counts, dtype=np.int64)
    # each row's index in its request: the row's position minus where its request starts
    instance = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    sampled = [(i, e) for i, e in enumerate(group) if e.instances is not None]
    if sampled:  # a log below sample rate 1 keeps some instances of each request: theirs
        rows = np.cumsum([0] + [len(e.x) for e in group])
        for i, e in sampled:
            assert e.instances is not None
            instance[rows[i] : rows[i + 1]] = e.instances
    stamps = np.repeat(np.array([e.timestamp for e in group]), [len(e.x) for e in group])
    return instance, np.repeat(np.array(ids, dtype=object), n), stamps


@dataclass
class _Feedback:
    request_id: str
    instances: np.ndarray  # (N,) int64 indices in the request
    labels: np.ndarray  # (N,) int64 class indices, or float64 targets
    received: int  # ns since the epoch, increasing within the process


def _answers(logits: np.ndarray, values: np.ndarray | None) -> dict[str, np.ndarray]:
    """The answers of a log without features: a regression model's `value`, a
    classifier's prediction and confidence."""
    if values is not None:
        return {VALUE_COLUMN: values.astype(np.float64)}
    return output_features(logits)


def _regression_frame(x: np.ndarray, logits: np.ndarray, values: np.ndarray, kind: str, names: list[str]):
    """The monitored input features and the predicted `value`: a class and its
    confidence mean nothing for a model with one real-valued output."""
    df = feature_frame(x, logits, kind, names, None)
    df = df[[c for c in df.columns if str(c).startswith("f_")]].copy()
    df["value"] = values.astype(np.float64)
    return df


class _Inbox:
    """The writer thread's queue, of at most `max_rows` rows (beyond, a put is refused and
    its rows are counted as dropped). A put never wakes the writer (it looks twice a
    second on its own), except once `wake_rows` rows wait, or on close: a server
    answering thousands of requests a second pays no thread switch per request."""

    def __init__(self, max_rows: int, wake_rows: int):
        self.max_rows, self.wake_rows = max_rows, wake_rows
        self._items: collections.deque[_Entry | _Feedback | None] = collections.deque()
        self._rows = 0  # rows put since the last take (their sum races only with a take: a bound within a pass)
        self._wake = threading.Event()

    def put_nowait(self, item: _Entry | _Feedback | None, rows: int = 0) -> None:
        """Queue `item` (queue.Full when `max_rows` would be passed); None wakes the writer to stop."""
        if item is not None and self._items and self._rows + rows > self.max_rows:
            raise queue.Full
        self._items.append(item)  # deque appends and pops are atomic
        self._rows += rows
        if item is None or self._rows >= self.wake_rows:
            self._wake.set()

    def take(self, timeout: float) -> list[_Entry | _Feedback | None]:
        """Everything queued, once woken or after `timeout` seconds (maybe nothing)."""
        self._wake.wait(timeout)
        self._wake.clear()
        self._rows = 0
        out = []
        while self._items:
            out.append(self._items.popleft())
        return out


class PredictionLog:
    def __init__(
        self,
        store: LocalStore | S3Store,
        spool: Path | None = None,
        flush_seconds: float = 5.0,
        flush_rows: int = 2048,
        max_queued_rows: int = 65_536,
        sample_rate: float = 1.0,
        upkeep: Callable[[], object] | None = None,
        upkeep_every_s: float = 600.0,
        features: bool = True,
    ):
        self.store = store
        # the input's features in every row (what the monitor reads); without, the answers
        # only (a shadow's log: `lepton compare --live` pairs answers, no window reads it)
        self.features = features
        # parts S3 could not take wait here (a local store needs no spool)
        self.spool = Path(spool) if spool is not None and not isinstance(store, LocalStore) else None
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self.sample_rate = sample_rate
        self._queue = _Inbox(max_queued_rows, flush_rows)
        self.written = 0  # rows that reached the store
        self.dropped = 0  # rows lost (no store and no spool would take them, or the queue was full)
        self.unsampled = 0  # instances left out by sample_rate
        self.feedback_dropped = 0  # labels taken, then lost (no store and no spool would take their part)
        self.files = 0
        self._received = 0  # the last feedback's `received`
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()  # one writer to the store and the spool at a time
        self.spooled = sum(part_rows(p.name, lambda p=p: p) for p in self._spooled() if p.parent == self.spool)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        # compaction and retention: slow listing and merging, never in the writer's way
        self._upkeep, self._upkeep_every_s = upkeep, upkeep_every_s
        self._closing = threading.Event()
        self._upkeeper: threading.Thread | None = None
        if upkeep is not None:
            self._upkeeper = threading.Thread(target=self._keep_up, name="prediction-log-upkeep", daemon=True)
            self._upkeeper.start()

    @property
    def folder(self) -> str:
        return str(self.store)

    def add(
        self,
        version: str,
        request_id: str,
        x: np.ndarray,
        logits: np.ndarray,
        kind: str,
        feature_names: list[str],
        values: np.ndarray | None = None,
    ) -> None:
        """Queue the instances of one answered request (never blocks); `values`, the
        predicted targets of a regression model, are logged in place of the class.
        Below a sample rate of 1, only the sampled instances (`sampled`)."""
        self.add_many(version, [(len(x), request_id)], x, logits, kind, feature_names, values)

    def add_many(
        self,
        version: str,
        requests: list[tuple[int, str]],
        x: np.ndarray,
        logits: np.ndarray,
        kind: str,
        feature_names: list[str],
        values: np.ndarray | None = None,
    ) -> None:
        """`add` for the requests of one forward pass at once: `requests` as (instances,
        request id) in the order of the rows of `x` (one queued entry for all)."""
        ids, counts = [rid for _, rid in requests], [n for n, _ in requests]
        instances = None
        if self.sample_rate < 1:
            kept = [np.flatnonzero(sampled(rid, n, self.sample_rate)) for n, rid in requests]
            rows = np.concatenate([k + start for k, start in zip(kept, np.cumsum([0, *counts[:-1]]), strict=True)])
            with self._lock:
                self.unsampled += len(x) - len(rows)
            if len(rows) == 0:
                return
            counts, instances = [len(k) for k in kept], np.concatenate(kept)
            x, logits = x[rows], logits[rows]
            values = None if values is None else values[rows]
        entry = _Entry(time.time(), version, ids, counts, x, logits, kind, feature_names, values, instances)
        try:
            self._queue.put_nowait(entry, len(x))
        except queue.Full:
            self._drop(len(x))

    def add_feedback(self, request_id: str, labels: list[int] | list[float]) -> None:
        """True labels for the instances 0, 1, ... of an answered request (class
        indices, or the true targets of a regression model: floats), queued for the
        next part in `feedback/` (only those of instances the log sampled); OSError
        when the queue is full."""
        dtype = np.float64 if any(isinstance(v, float) for v in labels) else np.int64
        instances = np.flatnonzero(sampled(request_id, len(labels), self.sample_rate))
        if len(instances) == 0:
            return
        with self._lock:  # a correction sent after a label always sorts after it
            self._received = max(time.time_ns(), self._received + 1)
            received = self._received
        item = _Feedback(request_id, instances, np.asarray(labels, dtype=dtype)[instances], received)
        try:
            self._queue.put_nowait(item, len(instances))
        except queue.Full:
            raise OSError("the prediction log's queue is full") from None

    def _drop(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer (and the upkeep)."""
        self._closing.set()
        self._queue.put_nowait(None)
        self._thread.join(timeout)
        if self._upkeeper is not None:
            self._upkeeper.join(timeout)

    def _keep_up(self) -> None:
        assert self._upkeep is not None
        while not self._closing.is_set():
            try:
                self._upkeep()
            except Exception:  # noqa: BLE001 - an S3 outage or a race with another worker: next round
                pass
            self._closing.wait(self._upkeep_every_s)

    # ------------------------------------------------------------ writing
    def _spooled(self) -> list[Path]:
        if self.spool is None or not self.spool.is_dir():
            return []
        return sorted(p for p in self.spool.rglob("*.parquet"))

    def _write(self, rel: str, data: bytes, rows: int, count: bool = True) -> bool:
        """One part into the store, else into the spool; False when neither took it."""
        with self._store_lock:
            try:
                self.store.put(rel, data)
                if count:
                    with self._lock:
                        self.written += rows
                        self.files += 1
                return True
            except Exception:  # noqa: BLE001 - an outage or a full disk: the spool, else the count
                if self.spool is None:
                    return False
            try:
                atomic_write(self.spool / rel, data, fsync=False)
            except Exception:  # noqa: BLE001
                return False
            with self._lock:
                self.spooled += rows if count else 0
            return True

    def drain(self) -> int:
        """Send spooled parts to the store, oldest first, until one fails; the rows sent."""
        sent = 0
        with self._store_lock:
            for p in self._spooled():
                assert self.spool is not None  # _spooled() lists nothing without a spool
                rel = p.relative_to(self.spool).as_posix()
                try:
                    self.store.put(rel, p.read_bytes())
                except Exception:  # noqa: BLE001 - still out: try again at the next flush
                    break
                n = 0 if rel.startswith("feedback/") else part_rows(p.name, lambda part=p: part)
                p.unlink()
                sent += n
                with self._lock:
                    self.spooled -= n
                    self.written += n
                    self.files += 1 if n else 0
        return sent

    def _run(self) -> None:
        pending: list[_Entry | _Feedback] = []
        rows = 0
        last = time.monotonic()
        while True:
            for entry in self._queue.take(min(0.5, self.flush_seconds)):
                if entry is None:
                    self._flush(pending)
                    self.drain()
                    return
                pending.append(entry)
                rows += len(entry.x) if isinstance(entry, _Entry) else len(entry.labels)
                if rows >= self.flush_rows:  # a part of at most about flush_rows rows
                    self._write_pending(pending)
                    pending, rows, last = [], 0, time.monotonic()
            if time.monotonic() - last >= self.flush_seconds:
                self._write_pending(pending)
                pending, rows, last = [], 0, time.monotonic()

    def _write_pending(self, pending: list[_Entry | _Feedback]) -> None:
        if self.spooled or self._spooled():
            self.drain()
        if pending:
            self._flush(pending)

    def _flush(self, pending: list[_Entry | _Feedback]) -> None:
        self._flush_feedback([e for e in pending if isinstance(e, _Feedback)])
        entries = [e for e in pending if isinstance(e, _Entry)]
        if not entries:
            return
        n = sum(len(e.x) for e in entries)
        try:
            import pyarrow as pa

            tables = []
            # one feature computation per (version, input shape): thousands of small
            # requests cost one vectorised pass, not thousands of DataFrames
            groups: dict[tuple, list[_Entry]] = {}
            for e in entries:
                key = (e.version, e.kind, e.x.shape[1:], e.logits.shape[1], e.values is not None)
                groups.setdefault(key, []).append(e)
            for (version, kind, _, _, regression), group in groups.items():
                x = np.concatenate([e.x for e in group]) if self.features else np.empty(0)
                logits = np.concatenate([e.logits for e in group])
                names = group[0].feature_names
                values = np.concatenate([e.values for e in group if e.values is not None]) if regression else None
                answers: dict[str, np.ndarray] | pd.DataFrame
                if not self.features:
                    answers = _answers(logits, values)
                elif values is not None:
                    answers = _regression_frame(x, logits, values, kind, names)
                else:
                    answers = feature_frame(x, logits, kind, names, None)
                tables.append(_part_table(version, group, answers))
            # groups of other layouts (another version's kind, after a swap): every column, null where
            # absent, and a column whose type differs between them widened (int64 and double: double)
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
            data = _parquet(table)
        except Exception:  # noqa: BLE001 - a log that cannot be written never fails a prediction
            self._drop(n)
            return
        if not self._write(part_name(n), data, n):
            self._drop(n)

    def _flush_feedback(self, items: list[_Feedback]) -> None:
        """One part per label type (int64 classes, float64 targets) into `feedback/`."""
        import pandas as pd

        by_type: dict[np.dtype, list[_Feedback]] = {}
        for f in items:
            by_type.setdefault(f.labels.dtype, []).append(f)
        for group in by_type.values():
            n = sum(len(f.labels) for f in group)
            try:
                counts = [len(f.labels) for f in group]
                table = pd.DataFrame(
                    {
                        "request_id": np.repeat([f.request_id for f in group], counts),
                        "instance": np.concatenate([f.instances for f in group]).astype(np.int64),
                        "label": np.concatenate([f.labels for f in group]),
                        "received": np.repeat(np.array([f.received for f in group], dtype=np.int64), counts),
                    }
                )
                buf = io.BytesIO()
                table.to_parquet(buf, index=False)
                ok = self._write(f"{FEEDBACK}/" + part_name(n), buf.getvalue(), n, count=False)
            except Exception:  # noqa: BLE001 - as for predictions: counted, never raised
                ok = False
            if not ok:
                with self._lock:
                    self.feedback_dropped += n
