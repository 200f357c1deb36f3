"""What `lepton up` leaves for every other command: the stack's state file (ports,
PIDs, bucket, pool, encryption) and its generated credentials, both under
`<home>/stack/` with mode 0600. Starting and stopping the processes is the
platform's job (`lepton.stack`); this module only reads and writes the records.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from effects.procs import pid_alive
from lepton_core.fileio import atomic_write

SERVICES = ("seaweedfs", "mlflow", "prefect", "worker", "serve")


def stack_dir(home: Path) -> Path:
    return home / "stack"


def state_path(home: Path) -> Path:
    return stack_dir(home) / "stack.json"


def write_private(path: Path, obj: dict) -> None:
    """JSON that may hold secrets: mode 0600, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True), mode=0o600, fsync=False)


def read_state(home: Path) -> dict | None:
    p = state_path(home)
    return json.loads(p.read_text()) if p.exists() else None


def write_state(home: Path, state: dict) -> None:
    write_private(state_path(home), state)


def credentials(home: Path) -> dict:
    """S3 keys for the bundled store (and the SSE key-encryption passphrase)."""
    p = stack_dir(home) / "credentials.json"
    if p.exists():
        creds = json.loads(p.read_text())
        missing = {"sse_kek": secrets.token_hex(32), "serve_token": secrets.token_urlsafe(32)}
        missing = {k: v for k, v in missing.items() if k not in creds}  # states from before they were kept
        if missing:
            creds.update(missing)
            write_private(p, creds)
        return creds
    creds = {
        "aws_access_key_id": "LEPTON" + secrets.token_hex(7).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
        "sse_kek_passphrase": secrets.token_urlsafe(24),
        "sse_kek": secrets.token_hex(32),  # SeaweedFS's SSE-S3 key-encryption key
        "serve_token": secrets.token_urlsafe(32),  # bearer token of the model server
    }
    write_private(p, creds)
    return creds


@dataclass(frozen=True)
class Urls:
    prefect: str
    prefect_api: str
    mlflow: str
    s3: str
    serve: str


def urls(state: dict) -> Urls:
    p = state["ports"]
    return Urls(
        prefect=f"http://127.0.0.1:{p['prefect']}",
        prefect_api=f"http://127.0.0.1:{p['prefect']}/api",
        mlflow=f"http://127.0.0.1:{p['mlflow']}",
        s3=f"http://127.0.0.1:{p['s3']}",
        serve=f"http://127.0.0.1:{p.get('serve', 8000)}",
    )


def client_env(home: Path, state: dict) -> dict[str, str]:
    """What every Lepton command (and the worker's flow runs) needs to use the stack."""
    u, creds = urls(state), credentials(home)
    return {
        "MLFLOW_TRACKING_URI": u.mlflow,
        "PREFECT_API_URL": u.prefect_api,
        "LEPTON_DVC_REMOTE": f"s3://{state['bucket']}/dvc",
        "LEPTON_S3_ENDPOINT_URL": u.s3,
        "LEPTON_S3_BUCKET": state["bucket"],
        "LEPTON_WORK_POOL": state["pool"],
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "LEPTON_SERVE_TOKEN": creds["serve_token"],
        **({"LEPTON_S3_SSE": state["sse"]} if state.get("sse") else {}),
    }


def running(home: Path) -> dict | None:
    """The stack's state if `lepton up` started it and its processes live."""
    st = read_state(home)
    if not st or not st.get("up"):
        return None
    if not all(pid_alive(st["pids"].get(name)) for name in SERVICES):
        return None
    return st
