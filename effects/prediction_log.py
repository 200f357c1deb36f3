"""The server's prediction log: every answered instance, written off the request
path in batches, in the monitor's prediction-log format (see effects/monitor.py):

    timestamp, model_version, request_id, instance, prediction, confidence, f_<feature>...

and, in `feedback/`, the true labels clients post later: request_id, instance, label.

Rows wait in a bounded queue; a background thread turns them into feature rows and
writes one parquet part file (atomically) every `flush_seconds` or `flush_rows`.
A failed write (full disk, no permission) or a full queue drops the rows and counts
them in `dropped`; it never raises into, or slows, a prediction.
"""

from __future__ import annotations

import io
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lepton_core.drift import feature_frame
from lepton_core.fileio import atomic_write


@dataclass
class _Entry:
    timestamp: float
    version: str
    request_id: str
    x: np.ndarray  # model input of the instances (N, ...)
    logits: np.ndarray  # (N, K)
    kind: str
    feature_names: list[str]


class PredictionLog:
    def __init__(self, folder: Path, flush_seconds: float = 5.0, flush_rows: int = 2048,
                 max_queued: int = 1000):
        self.folder = Path(folder)
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=max_queued)
        self.written = 0  # rows
        self.dropped = 0  # rows
        self.files = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, version: str, request_id: str, x: np.ndarray, logits: np.ndarray, kind: str,
            feature_names: list[str]) -> None:
        """Queue the instances of one answered request (never blocks)."""
        try:
            self._queue.put_nowait(_Entry(time.time(), version, request_id, x, logits, kind, feature_names))
        except queue.Full:
            self._drop(len(x))

    def add_feedback(self, request_id: str, labels: list[int]) -> None:
        """True labels for the instances of an answered request, written at once
        (small, and a client waits for the confirmation) into `feedback/`."""
        import pandas as pd

        table = pd.DataFrame({"request_id": request_id, "instance": np.arange(len(labels)),
                              "label": np.asarray(labels, dtype=np.int64)})
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:8]}.parquet"
        atomic_write(self.folder / "feedback" / name, buf.getvalue(), fsync=False)

    def _drop(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        pending: list[_Entry] = []
        rows = 0
        last = time.monotonic()
        while True:
            try:
                entry = self._queue.get(timeout=min(0.5, self.flush_seconds))
            except queue.Empty:
                entry = ...
            if entry is None:
                self._flush(pending)
                return
            if entry is not ...:
                pending.append(entry)
                rows += len(entry.x)
            if pending and (rows >= self.flush_rows or time.monotonic() - last >= self.flush_seconds):
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
                groups.setdefault((e.version, e.kind, e.x.shape[1:], e.logits.shape[1]), []).append(e)
            for (version, kind, _, _), group in groups.items():
                x = np.concatenate([e.x for e in group])
                logits = np.concatenate([e.logits for e in group])
                df = feature_frame(x, logits, kind, group[0].feature_names, None)
                counts = [len(e.x) for e in group]
                df.insert(0, "instance", np.concatenate([np.arange(c) for c in counts]))
                df.insert(0, "request_id", np.repeat([e.request_id for e in group], counts))
                df.insert(0, "model_version", version)
                df.insert(0, "timestamp", pd.to_datetime(np.repeat([e.timestamp for e in group], counts), unit="s",
                                                         utc=True))
                frames.append(df)
            table = pd.concat(frames, ignore_index=True)
            buf = io.BytesIO()
            table.to_parquet(buf, index=False)
            name = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{uuid.uuid4().hex[:8]}.parquet"
            atomic_write(self.folder / name, buf.getvalue(), fsync=False)
        except Exception:  # noqa: BLE001 - a log that cannot be written never fails a prediction
            self._drop(n)
            return
        with self._lock:
            self.written += n
            self.files += 1
