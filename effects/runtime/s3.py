"""The one S3 helper every caller uses: a client with explicit time-outs and
retries, paginated listings (objects, or "sub-folders"), and a whole-object download
with retries that never leaves a half-written file.

The endpoint and credentials come from the settings (LEPTON_S3_ENDPOINT_URL) and
the standard AWS_* variables, unless a caller hands them over (the stack's own
generated keys)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from lepton_core.errors import LeptonError

DOWNLOAD_TRIES = 3  # whole-object attempts (each with the client's own retries inside)


def client(
    endpoint_url: str | None,
    *,
    attempts: int = 5,
    connect_timeout: float = 10,
    read_timeout: float = 60,
    pool: int = 10,
    creds: dict | None = None,
    region: str | None = None,
) -> Any:
    """A boto3 S3 client. `attempts` counts botocore's tries of one request, the
    first included ("standard" mode: 5xx, throttling, dropped connections);
    `creds` ({"aws_access_key_id", "aws_secret_access_key"}) overrides AWS_*."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=pool,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config, **(creds or {}))


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key/prefix -> (bucket, key without surrounding slashes)."""
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    key = key.strip("/")
    if not bucket or ".." in PurePosixPath(key).parts:
        raise LeptonError(f"{uri}: not an s3://bucket/prefix address")
    return bucket, key


def pages(
    c: Any, bucket: str, prefix: str, delimiter: str | None = None, page_size: int | None = None
) -> Iterator[dict]:
    """Every page of a `list_objects_v2` listing."""
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter:
        kw["Delimiter"] = delimiter
    if page_size:
        kw["PaginationConfig"] = {"PageSize": page_size}
    yield from c.get_paginator("list_objects_v2").paginate(**kw)


def list_objects(
    c: Any, bucket: str, prefix: str, page_size: int | None = None, delimiter: str | None = None
) -> dict[str, dict]:
    """{key: {"ETag", "Size"}} of every object under `prefix` (with a delimiter: only
    those directly under it), over all pages."""
    out: dict[str, dict] = {}
    for page in pages(c, bucket, prefix, delimiter, page_size):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = {"ETag": obj["ETag"].strip('"'), "Size": int(obj["Size"])}
    return out


def list_prefixes(c: Any, bucket: str, prefix: str) -> list[str]:
    """The "sub-folders" directly under `prefix` (each ending in "/"), over all pages."""
    return sorted(p["Prefix"] for page in pages(c, bucket, prefix, "/") for p in page.get("CommonPrefixes", []))


def download(c: Any, bucket: str, key: str, target: Path, size: int | None = None, tries: int = DOWNLOAD_TRIES) -> None:
    """Fetch one object into `target`: written beside it and renamed into place, tried
    again as a whole when its body arrives cut short (`size`, when known)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(tries):
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            body = c.get_object(Bucket=bucket, Key=key)["Body"]  # one request, no HEAD first
            with tmp.open("wb") as fh:
                while piece := body.read(1 << 20):
                    fh.write(piece)
            if size is not None and tmp.stat().st_size != size:
                raise OSError(f"{key}: {tmp.stat().st_size} of {size} bytes")
            os.replace(tmp, target)
            return
        except Exception:
            tmp.unlink(missing_ok=True)
            if attempt == tries - 1:
                raise
