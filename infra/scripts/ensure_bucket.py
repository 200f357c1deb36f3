"""Create Lepton's S3 bucket if it does not exist yet (idempotent).

The mlflow service of infra/compose.yaml runs this before `mlflow server`, so the
bucket behind MLflow's artifacts (s3://<bucket>/mlflow) and the DVC remote
(s3://<bucket>/dvc) exists before anything writes to it.

Reads LEPTON_S3_BUCKET (default lepton), LEPTON_S3_ENDPOINT_URL (falling back to
MLFLOW_S3_ENDPOINT_URL; unset = AWS) and the standard AWS_* credentials. Retries for
up to a minute while the endpoint is not answering yet.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

_MISSING = {"404", "NoSuchBucket", "NotFound"}
_ALREADY = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def ensure_bucket(bucket: str, endpoint_url: str | None, wait_s: float = 60.0) -> str:
    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            return "exists"
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in _MISSING:
                raise
            try:
                s3.create_bucket(Bucket=bucket)
                return "created"
            except ClientError as e2:
                if e2.response.get("Error", {}).get("Code") in _ALREADY:
                    return "exists"
                raise
        except BotoCoreError:  # endpoint not reachable yet
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def main() -> int:
    bucket = os.environ.get("LEPTON_S3_BUCKET") or "lepton"
    endpoint = os.environ.get("LEPTON_S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    try:
        outcome = ensure_bucket(bucket, endpoint)
    except (BotoCoreError, ClientError) as e:
        print(f"error: bucket {bucket!r} at {endpoint or 'AWS'}: {e}", file=sys.stderr)
        return 1
    print(f"bucket {bucket!r}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
