"""The server's prediction log: every answered instance, written off the request
path in batches, in the monitor's prediction-log format (see effects/monitoring/monitor.py):

    timestamp, model_version, request_id, instance, prediction, confidence, f_<feature>...

(for a regression model, `value`, the predicted number in the target's units, in place
of prediction and confidence), and, in `feedback/`, the true labels clients post later:
request_id, instance, label (an int64 class index; a float64 target for regression).

The log lives in a folder, or under an S3 prefix (`lepton up`): a `LogStore`.
Rows wait in a bounded queue; a background thread turns them into feature rows and
writes one parquet part (`<UTC time>-<id>-n<rows>.parquet`, atomically) every
`flush_seconds` or `flush_rows`. When S3 cannot take a part (an outage), the part
waits in a local spool and is sent, oldest first, once S3 answers again. A part
that cannot be written anywhere (full disk, no permission) or a full queue drops
its rows and counts them in `dropped`; nothing here raises into, or slows, a
prediction.
"""

from __future__ import annotations

import io
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType

import numpy as np

from effects.runtime import s3
from effects.runtime.settings import Settings
from lepton_core.drift import feature_frame
from lepton_core.fileio import atomic_write

_ROWS = re.compile(r"-n(\d+)\.parquet$")


def part_name(rows: int) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:8]}-n{rows}.parquet"


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


def open_store(uri: str, s: Settings) -> LocalStore | S3Store:
    return S3Store(uri, s) if uri.startswith("s3://") else LocalStore(Path(uri).expanduser())


def feedback_folder(s: Settings, store: LocalStore | S3Store | None = None) -> Path:
    """A local folder with every feedback part of the log (for S3, the parts not yet
    copied are fetched into <home>/monitor/feedback)."""
    store = store or open_store(s.prediction_log, s)
    if isinstance(store, LocalStore):
        return store.folder / "feedback"
    cache = s.home / "monitor" / "feedback"
    cache.mkdir(parents=True, exist_ok=True)
    for name in store.list("feedback"):
        if not (cache / name).exists():
            tmp = cache / f".{name}.part"
            store.fetch(f"feedback/{name}", tmp)
            os.replace(tmp, cache / name)
    return cache


@dataclass
class _Entry:
    timestamp: float
    version: str
    request_id: str
    x: np.ndarray  # model input of the instances (N, ...)
    logits: np.ndarray  # (N, K)
    kind: str
    feature_names: list[str]
    values: np.ndarray | None = None  # (N,) float64 predicted targets (a regression model)


def _regression_frame(x: np.ndarray, logits: np.ndarray, values: np.ndarray, kind: str, names: list[str]):
    """The monitored input features and the predicted `value`: a class and its
    confidence mean nothing for a model with one real-valued output."""
    df = feature_frame(x, logits, kind, names, None)
    df = df[[c for c in df.columns if str(c).startswith("f_")]].copy()
    df["value"] = values.astype(np.float64)
    return df


class PredictionLog:
    def __init__(
        self,
        store: LocalStore | S3Store,
        spool: Path | None = None,
        flush_seconds: float = 5.0,
        flush_rows: int = 2048,
        max_queued: int = 1000,
    ):
        self.store = store
        # parts S3 could not take wait here (a local store needs no spool)
        self.spool = Path(spool) if spool is not None and not isinstance(store, LocalStore) else None
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=max_queued)
        self.written = 0  # rows that reached the store
        self.dropped = 0  # rows lost (no store and no spool would take them, or the queue was full)
        self.files = 0
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()  # one writer to the store and the spool at a time
        self.spooled = sum(part_rows(p.name, lambda p=p: p) for p in self._spooled() if p.parent == self.spool)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

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
        predicted targets of a regression model, are logged in place of the class."""
        try:
            self._queue.put_nowait(_Entry(time.time(), version, request_id, x, logits, kind, feature_names, values))
        except queue.Full:
            self._drop(len(x))

    def add_feedback(self, request_id: str, labels: list[int] | list[float]) -> None:
        """True labels for the instances of an answered request (class indices, or the
        true targets of a regression model: floats), written at once (small, and a
        client waits for the confirmation) into `feedback/`; raises only when neither
        the store nor the spool would take them."""
        import pandas as pd

        dtype = np.float64 if any(isinstance(v, float) for v in labels) else np.int64
        table = pd.DataFrame(
            {"request_id": request_id, "instance": np.arange(len(labels)), "label": np.asarray(labels, dtype=dtype)}
        )
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        if not self._write("feedback/" + part_name(len(labels)), buf.getvalue(), len(labels), count=False):
            raise OSError("neither the prediction log nor its spool would take the feedback")

    def _drop(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout)

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
        pending: list[_Entry] = []
        rows = 0
        last = time.monotonic()
        while True:
            entry: _Entry | EllipsisType | None  # ...: nothing arrived in time
            try:
                entry = self._queue.get(timeout=min(0.5, self.flush_seconds))
            except queue.Empty:
                entry = ...
            if entry is None:
                self._flush(pending)
                self.drain()
                return
            if entry is not ...:
                pending.append(entry)
                rows += len(entry.x)
            if time.monotonic() - last >= self.flush_seconds or rows >= self.flush_rows:
                if self.spooled or self._spooled():
                    self.drain()
                if pending:
                    self._flush(pending)
                pending, rows, last = [], 0, time.monotonic()

    def _flush(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        n = sum(len(e.x) for e in entries)
        try:
            import pandas as pd

            frames = []
            # one feature computation per (version, input shape): thousands of small
            # requests cost one vectorised pass, not thousands of DataFrames
            groups: dict[tuple, list[_Entry]] = {}
            for e in entries:
                key = (e.version, e.kind, e.x.shape[1:], e.logits.shape[1], e.values is not None)
                groups.setdefault(key, []).append(e)
            for (version, kind, _, _, regression), group in groups.items():
                x = np.concatenate([e.x for e in group])
                logits = np.concatenate([e.logits for e in group])
                names = group[0].feature_names
                if regression:
                    values = np.concatenate([e.values for e in group if e.values is not None])
                    df = _regression_frame(x, logits, values, kind, names)
                else:
                    df = feature_frame(x, logits, kind, names, None)
                counts = [len(e.x) for e in group]
                df.insert(0, "instance", np.concatenate([np.arange(c) for c in counts]))
                df.insert(0, "request_id", np.repeat([e.request_id for e in group], counts))
                df.insert(0, "model_version", version)
                df.insert(
                    0, "timestamp", pd.to_datetime(np.repeat([e.timestamp for e in group], counts), unit="s", utc=True)
                )
                frames.append(df)
            table = pd.concat(frames, ignore_index=True)
            buf = io.BytesIO()
            table.to_parquet(buf, index=False)
            data = buf.getvalue()
        except Exception:  # noqa: BLE001 - a log that cannot be written never fails a prediction
            self._drop(n)
            return
        if not self._write(part_name(n), data, n):
            self._drop(n)
