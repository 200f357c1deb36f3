"""Raw data on S3: `data.path: s3://bucket/prefix` (a folder format: image folders,
MNIST, CIFAR-10) or `s3://bucket/key` (one file: a CSV/Parquet table).

The prefix is listed with the paginator (any number of pages) and its objects are
downloaded in parallel (a thread pool with a bounded number in flight; the boto3
client retries throttling, 5xx answers and dropped connections itself, and each
object is tried again as a whole if its body arrives cut short) into a cache under
<home>/data-cache/s3/<bucket>/<prefix>, keyed by each object's ETag: a rerun fetches
only what changed and deletes what is gone, so the cache mirrors the prefix. The
prepare stage then reads the local copy like any folder.

The endpoint and credentials come from the environment (LEPTON_S3_ENDPOINT_URL,
AWS_*), as for the DVC remote and the monitor's S3 inbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path, PurePosixPath
from typing import Any

from effects.runtime import s3
from effects.runtime.locks import file_lock
from effects.runtime.settings import Settings, get_settings
from lepton_core.errors import DataError
from lepton_core.fileio import atomic_write

WORKERS = 16  # downloads in flight at once
OBJECT_TRIES = 3  # whole-object attempts (each with the client's own retries inside)
CLIENT_ATTEMPTS = 5  # botocore's attempts per request, the first included ("standard" mode: 5xx,
# throttling, dropped connections)
_MANIFEST = ".lepton-s3-manifest.json"


def is_s3(path: str | os.PathLike | None) -> bool:
    return path is not None and str(path).startswith("s3://")


def s3_client(s: Settings, workers: int = WORKERS) -> Any:
    return s3.client(s.s3_endpoint_url, attempts=CLIENT_ATTEMPTS, pool=max(10, workers))


def cache_dir(uri: str, s: Settings) -> Path:
    bucket, key = s3.split_uri(uri)
    return s.home / "data-cache" / "s3" / bucket / (key or "_root")


def fetch(
    uri: str, settings: Settings | None = None, *, workers: int = WORKERS, page_size: int | None = None, client=None
) -> Path:
    """Mirror `uri` into the local cache and return the local folder (a prefix) or
    file (a single object). Raises DataError when there is nothing there."""
    s = settings or get_settings()
    bucket, key = s3.split_uri(uri)
    c = client or s3_client(s, workers)
    root = cache_dir(uri, s)
    try:
        prefix = key + "/" if key else ""
        objects = s3.list_objects(c, bucket, prefix, page_size)
        single = False
        if not objects and key:  # one object: a table
            head = c.head_object(Bucket=bucket, Key=key)
            objects = {key: {"ETag": head["ETag"].strip('"'), "Size": int(head["ContentLength"])}}
            single = True
    except Exception as e:
        code = getattr(e, "response", {}).get("Error", {}).get("Code")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise DataError(f"{uri}: no such S3 prefix or object") from None
        raise
    wanted: dict[str, dict] = {}
    for k, meta in objects.items():
        rel = PurePosixPath(k).name if single else k[len(prefix) :]
        parts = PurePosixPath(rel).parts
        if (
            not rel
            or k.endswith("/")
            or rel.startswith("/")
            or ".." in parts
            or any(p.startswith(".lepton-") for p in parts)
        ):
            continue  # folder markers; nothing may land outside the cache folder
        wanted[rel] = {**meta, "Key": k}
    if not wanted:
        raise DataError(f"{uri}: no objects under this S3 prefix")
    with file_lock(s.locks_dir / f"s3-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.lock"):
        _mirror(c, bucket, root, wanted, workers)
    return root / next(iter(wanted)) if single else root


def _mirror(c, bucket: str, root: Path, wanted: dict[str, dict], workers: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / _MANIFEST
    try:
        have = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        have = {}
    lock = threading.Lock()
    # what is gone from the prefix goes from the cache
    for rel in set(have) - set(wanted):
        (root / rel).unlink(missing_ok=True)
        have.pop(rel)
    todo = [
        rel
        for rel, m in sorted(wanted.items())
        if have.get(rel) != m["ETag"] or not (root / rel).is_file() or (root / rel).stat().st_size != m["Size"]
    ]

    def get(rel: str) -> str:
        m = wanted[rel]
        s3.download(c, bucket, m["Key"], root / rel, m["Size"], OBJECT_TRIES)
        with lock:
            have[rel] = m["ETag"]
        return rel

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lepton-s3") as pool:
            pending: set = set()
            it = iter(todo)
            for rel in it:  # at most 2 x workers queued at a time: memory does not grow with the listing
                pending.add(pool.submit(get, rel))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in pending:
                f.result()
    finally:
        # what did arrive is kept: a rerun after a failure fetches only the rest
        atomic_write(manifest_path, json.dumps(have, sort_keys=True))


def local_data_path(path: str | None, settings: Settings | None = None, **kw) -> str | None:
    """`path` itself, or for an s3:// address the local mirror it was fetched into."""
    if not is_s3(path):
        return path
    return str(fetch(str(path), settings, **kw))


def detect_format(path: Path, fmt: str | None) -> str:
    """The raw format of a local batch or data file: `fmt` when given, else guessed from
    its files (a parquet prediction log, a table, IDX, CIFAR batches or an image folder)."""
    import pandas as pd

    if fmt:
        return fmt
    parquet = [path] if path.suffix == ".parquet" else sorted(path.glob("*.parquet")) if path.is_dir() else []
    if parquet:
        cols = pd.read_parquet(parquet[0]).columns
        if "prediction" in cols and any(c.startswith("f_") for c in cols):
            return "predlog"
        return "csv"
    if path.is_dir() and any(path.glob("*-idx3-ubyte*")):
        return "mnist"
    if path.is_dir() and any(path.glob("data_batch_*")):
        return "cifar10"
    return "imagefolder" if path.is_dir() else "csv"
