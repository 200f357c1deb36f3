"""What `lepton up` leaves for every other command: the stack's state file (ports,
PIDs, bucket, pool, encryption) and its generated credentials, both under
`<home>/stack/` with mode 0600. Starting and stopping the processes is the
platform's job (`lepton.stack`); this module only reads and writes the records.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effects.runtime.procs import pid_alive, port_open
from lepton_core.errors import LeptonError
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


def _new_secrets() -> dict:
    """Every secret of the stack, generated once (the file keeps them)."""
    return {
        "aws_access_key_id": "LEPTON" + secrets.token_hex(7).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
        "sse_kek_passphrase": secrets.token_urlsafe(24),
        "sse_kek": secrets.token_hex(32),  # SeaweedFS's SSE-S3 key-encryption key
        "serve_token": secrets.token_urlsafe(32),  # bearer token of the model server
        # SeaweedFS's JWT signing keys: its volume server accepts reads and writes only
        # with a token the master signed, its filer only with one the S3 gateway signed
        "weed_jwt_key": secrets.token_hex(32),
        "weed_jwt_read_key": secrets.token_hex(32),
        "weed_filer_jwt_key": secrets.token_hex(32),
        "weed_filer_jwt_read_key": secrets.token_hex(32),
        # MLflow's basic-auth app: its admin user, and the key of its CSRF tokens
        "mlflow_username": "lepton",
        "mlflow_password": secrets.token_urlsafe(24),
        "mlflow_flask_secret": secrets.token_hex(32),
        # Prefect's API auth string (user:password, sent as HTTP basic auth)
        "prefect_auth_string": "lepton:" + secrets.token_urlsafe(24),
        # the write secret of `evidently ui` (its reads are open: it listens on loopback only)
        "evidently_secret": secrets.token_urlsafe(32),
    }


def credentials(home: Path) -> dict:
    """The stack's secrets: S3 keys for the bundled store, the SSE key-encryption
    key, the JWT keys of SeaweedFS, MLflow's and Prefect's credentials and the
    serving token; in `<home>/stack/credentials.json` (0600)."""
    p = stack_dir(home) / "credentials.json"
    if p.exists():
        creds = json.loads(p.read_text())
        missing = {k: v for k, v in _new_secrets().items() if k not in creds}  # states from before they were kept
        if missing:
            creds.update(missing)
            write_private(p, creds)
        return creds
    creds = _new_secrets()
    write_private(p, creds)
    return creds


ALERT_WEBHOOK_ENV = "LEPTON_ALERT_WEBHOOK"


def set_alert_webhook(home: Path, url: str | None) -> None:
    """Keep the alert webhook with the stack's secrets (`lepton up --alert-webhook URL`);
    None forgets it. Never in params, tags or logs: a webhook URL is a credential."""
    creds = credentials(home)
    if url:
        creds["alert_webhook"] = url
    else:
        creds.pop("alert_webhook", None)
    write_private(stack_dir(home) / "credentials.json", creds)


def alert_webhook(home: Path) -> str | None:
    """Where notifications go: $LEPTON_ALERT_WEBHOOK, else the one `lepton up
    --alert-webhook` kept; None when neither is set."""
    env = os.environ.get(ALERT_WEBHOOK_ENV, "").strip()
    if env:
        return env
    p = stack_dir(home) / "credentials.json"
    return json.loads(p.read_text()).get("alert_webhook") if p.exists() else None


ALERT_FORMATS = ("slack", "json")
SLACK_HOSTS = ("hooks.slack.com", "hooks.slack-gov.com")


def alert_format(url: str) -> str:
    """How a webhook wants its notifications: "slack" (a JSON `text`) for a Slack URL,
    else "json" (a generic JSON body); $LEPTON_ALERT_FORMAT (slack|json) decides over
    the guess. Prefect's notifications and Alertmanager's both follow it."""
    chosen = os.environ.get("LEPTON_ALERT_FORMAT", "").strip().lower()
    if chosen and chosen not in ALERT_FORMATS:
        raise LeptonError(f"LEPTON_ALERT_FORMAT={chosen!r}: one of {', '.join(ALERT_FORMATS)}")
    if chosen:
        return chosen
    return "slack" if (urlsplit(url).hostname or "").lower() in SLACK_HOSTS else "json"


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


def watch_port(state: dict, name: str) -> int | None:
    """The port of a watching service (prometheus, alertmanager, evidently) while
    `lepton up` runs it; None when it does not (not installed, or an older stack)."""
    w = state.get("watch") or {}
    return (w.get("ports") or {}).get(name) if (w.get("pids") or {}).get(name) else None


def auth_on(state: dict) -> bool:
    """Whether the stack was started with authentication (the default; `up --no-auth`)."""
    return state.get("auth", False)


def client_env(home: Path, state: dict) -> dict[str, str]:
    """What every Lepton command (and the worker's flow runs, and the model server)
    needs to use the stack: its addresses and, with authentication on, its
    credentials. The one place clients get them from."""
    u, creds = urls(state), credentials(home)
    env = {
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
        # the model server logs its predictions to the bucket, where every monitor run sees them
        "LEPTON_PREDICTION_LOG": f"s3://{state['bucket']}/serve/predictions",
        **({"LEPTON_S3_SSE": state["sse"]} if state.get("sse") else {}),
        # the monitor's state (processed batches, cool-down) where every worker sees it
        **({"LEPTON_STATE_DB": state_db_url(state["db_url"])} if state.get("db_url") else {}),
        # the Evidently UI's workspace, where every monitor run adds its snapshot
        **(
            {
                "LEPTON_EVIDENTLY_URL": f"http://127.0.0.1:{watch_port(state, 'evidently')}",
                "LEPTON_EVIDENTLY_SECRET": creds["evidently_secret"],
            }
            if watch_port(state, "evidently")
            else {}
        ),
    }
    if auth_on(state):
        env.update(
            {
                "MLFLOW_TRACKING_USERNAME": creds["mlflow_username"],
                "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
                "PREFECT_API_AUTH_STRING": creds["prefect_auth_string"],
            }
        )
    return env


# What a user's own clients need to reach the stack (`lepton env`): the mlflow and
# prefect CLIs and SDKs, the AWS CLI and SDKs (AWS_ENDPOINT_URL, read by boto3 >= 1.28
# and the AWS CLI v2), and curl to the model server. In the order they are printed.
USER_ENV: tuple[str, ...] = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "LEPTON_SERVE_URL",
    "LEPTON_SERVE_TOKEN",
    "LEPTON_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def user_env(home: Path, state: dict) -> dict[str, str]:
    """`client_env` narrowed to USER_ENV, plus what only outside clients need: the
    model server's address and S3's endpoint under the AWS SDKs' own name."""
    u = urls(state)
    env = {**client_env(home, state), "LEPTON_SERVE_URL": u.serve, "AWS_ENDPOINT_URL": u.s3}
    return {k: env[k] for k in USER_ENV if k in env}


def state_db_url(db_url: str) -> str:
    """postgresql://u@h:p/NAME (`lepton up --db`) -> the monitor's shared state
    database beside MLflow's and Prefect's: postgresql://u@h:p/NAME_lepton."""
    parts = urlsplit(db_url)
    return urlunsplit(parts._replace(scheme="postgresql", path=f"/{parts.path.strip('/')}_lepton"))


def auth_headers(home: Path, state: dict, service: str) -> dict[str, str]:
    """HTTP headers that authenticate a plain HTTP client to `service` ("mlflow",
    "prefect" or "serve"); none when the stack runs without authentication."""
    creds = credentials(home)
    if service == "serve":
        return {"Authorization": f"Bearer {creds['serve_token']}"}
    if not auth_on(state):
        return {}
    user_pass = (
        f"{creds['mlflow_username']}:{creds['mlflow_password']}"
        if service == "mlflow"
        else creds["prefect_auth_string"]
    )
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


# The services a Lepton command itself talks to (the worker and the model server
# are the stack's own clients: a retrain or a promotion does not need them).
NEEDED = ("seaweedfs", "mlflow", "prefect")


def configured(home: Path) -> dict | None:
    """The stack's state while a stack is configured for this home: from a `lepton up`
    that succeeded once until `lepton down`, whatever its processes are doing."""
    st = read_state(home)
    return st if st and st.get("up") else None


def dead(state: dict, names=SERVICES) -> list[str]:
    """Those of `names` whose process is gone or whose port does not answer."""
    ports = {
        "seaweedfs": state["ports"]["s3"],
        "mlflow": state["ports"]["mlflow"],
        "prefect": state["ports"]["prefect"],
        "serve": state["ports"].get("serve"),
    }
    out = []
    for name in names:
        if not pid_alive(state.get("pids", {}).get(name)) or (ports.get(name) and not port_open(ports[name])):
            out.append(name)
    return out


def describe(state: dict, name: str) -> str:
    """Why `dead` counts `name` as down, in a few words."""
    pid = state.get("pids", {}).get(name)
    if not pid_alive(pid):
        return f"PID {pid} is gone" if pid else "never started"
    port = {"seaweedfs": state["ports"]["s3"]}.get(name) or state["ports"].get(name)
    return f"nothing answers on port {port}"


def running(home: Path) -> dict | None:
    """The stack's state if `lepton up` started it and all its processes live."""
    st = configured(home)
    if not st or dead(st):
        return None
    return st
