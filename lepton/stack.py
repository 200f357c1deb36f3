"""`lepton up` / `lepton down`: the live platform on one machine.

Four background processes, each with a log and a PID under `<home>/stack/`:

    seaweedfs   S3-compatible object store (MLflow artifacts, the DVC remote)
    mlflow      MLflow tracking server + registry (--serve-artifacts to S3)
    prefect     Prefect API server + dashboard
    worker      a Prefect worker on a process work pool

Backends: SQLite files under `<home>/stack/` by default, or PostgreSQL with
`--db postgresql://user@host:port/NAME` (databases NAME_mlflow and NAME_prefect are
created when missing). S3 credentials are generated once, kept in
`<home>/stack/credentials.json` (mode 0600) and handed to the processes through
their environment, never through a committed file, a param or a tag.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effects.procs import free_port, http_ok, pid_alive, port_free, spawn, stop_group, wait_healthy
from effects.settings import Settings, redact_uri
from effects.stack_state import (
    SERVICES, credentials, read_state, running, stack_dir, urls, write_private, write_state,
)
from effects.stack_state import client_env as _client_env
from lepton_core.errors import LeptonError

DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333, "serve": 8000}


def client_env(s: Settings, state: dict) -> dict[str, str]:
    return _client_env(s.home, state)


def s3_ok(url: str) -> bool:
    """The S3 endpoint answers (403 to an unsigned request is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------- databases
def _pg_databases(db_url: str) -> tuple[str, str]:
    """postgresql://u@h:p/NAME -> (mlflow URL, prefect URL), creating NAME_mlflow and
    NAME_prefect when they do not exist."""
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(db_url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
        raise LeptonError("--db must look like postgresql://USER[:PASSWORD]@HOST:PORT/NAME")
    base = parts.path.strip("/")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    try:
        conn = psycopg2.connect(admin, connect_timeout=10)
    except psycopg2.OperationalError as e:
        raise LeptonError(f"cannot reach PostgreSQL at {redact_uri(db_url)}: {str(e).strip().splitlines()[0]}") from None
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    with conn.cursor() as cur:
        for suffix in ("mlflow", "prefect"):
            name = f"{base}_{suffix}"
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()
    mk = lambda scheme, suffix: urlunsplit(parts._replace(scheme=scheme, path=f"/{base}_{suffix}"))  # noqa: E731
    return mk("postgresql+psycopg2", "mlflow"), mk("postgresql+asyncpg", "prefect")


# ---------------------------------------------------------------- processes
def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _spawn(s: Settings, name: str, cmd: list[str], env: dict[str, str]) -> int:
    proc = spawn(cmd, env, stack_dir(s.home) / "logs" / f"{name}.log", cwd=s.project_dir)
    (stack_dir(s.home) / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _base_env(s: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "LEPTON_HOME": str(s.home),
        "LEPTON_PROJECT_DIR": str(s.project_dir),
        "PREFECT_HOME": str(s.prefect_home),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    return env


SSE_MODES = ("AES256", "aws:kms")


def _choose_sse(asked: str | None, stale: dict | None, s: Settings) -> str | None:
    """--sse, else LEPTON_S3_SSE, else what the last `up` used; "none" turns it off."""
    value = asked or s.s3_sse or (stale or {}).get("sse") or None
    if value is None or value.lower() == "none":
        return None
    if value not in SSE_MODES:
        raise LeptonError(f"server-side encryption must be one of {', '.join(SSE_MODES)} or none, not {value!r}")
    return value


def up(s: Settings, db_url: str | None, ports: dict[str, int | None], echo=print,
       sse: str | None = None) -> dict:
    """Start (or find running) the stack; returns its state."""
    current = running(s.home)
    if current:
        if sse is not None and _choose_sse(sse, None, s) != current.get("sse"):
            raise LeptonError("the stack is already running with another encryption setting; "
                              "`lepton down` first")
        return current
    stale = read_state(s.home)
    if stale:  # a half-started or crashed stack: clean what is left before starting again
        for name in reversed(SERVICES):
            stop_group(int(stale.get("pids", {}).get(name) or 0))
    d = stack_dir(s.home)
    d.mkdir(parents=True, exist_ok=True)
    chosen = {k: int(ports.get(k) or DEFAULT_PORTS[k]) for k in DEFAULT_PORTS}
    for name, port in chosen.items():
        if not port_free(port):
            raise LeptonError(f"port {port} ({name}) is already in use; choose another with --{name}-port")
    db_url = db_url or (stale or {}).get("db_url") or s.db_url
    if db_url:
        mlflow_db, prefect_db = _pg_databases(db_url)
    else:
        mlflow_db = f"sqlite:///{d / 'mlflow.db'}"
        prefect_db = f"sqlite+aiosqlite:///{d / 'prefect.db'}"
    state = {
        "up": False, "db_url": db_url, "ports": chosen,
        "bucket": s.s3_bucket,
        "pool": s.work_pool,
        # server-side encryption asked for on every write (MLflow's server and DVC)
        "sse": _choose_sse(sse, stale, s),
        "pids": {},
    }
    creds = credentials(s.home)
    u = urls(state)
    base = _base_env(s)
    logs = d / "logs"
    try:
        # 1. object store
        (d / "seaweedfs").mkdir(exist_ok=True)
        s3_config = d / "s3.json"
        write_private(s3_config, {"identities": [{
            "name": "lepton",
            "credentials": [{"accessKey": creds["aws_access_key_id"], "secretKey": creds["aws_secret_access_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]})
        internal = [free_port() for _ in range(7)]
        weed_env = {**base, "WEED_S3_SSE_KEK_PASSPHRASE": creds["sse_kek_passphrase"],
                    "WEED_S3_SSE_KEK": creds["sse_kek"]}
        state["pids"]["seaweedfs"] = _spawn(s, "seaweedfs", [
            _bin("weed"), "server", f"-dir={d / 'seaweedfs'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={internal[0]}", f"-master.port.grpc={internal[1]}",
            f"-volume.port={internal[2]}", f"-volume.port.grpc={internal[3]}",
            "-filer", f"-filer.port={internal[4]}", f"-filer.port.grpc={internal[5]}",
            "-s3", f"-s3.port={chosen['s3']}", f"-s3.port.grpc={internal[6]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
            "-master.telemetry=false", "-volume.max=0",
        ], weed_env)
        echo(f"starting seaweedfs (S3 on {u.s3}) ...")
        wait_healthy("seaweedfs", lambda: s3_ok(u.s3), state["pids"]["seaweedfs"], 90, logs / "seaweedfs.log")
        _ensure_bucket(u.s3, state["bucket"], creds)

        # 2. both servers at once: they take tens of seconds each to boot
        mlflow_env = {**base, "MLFLOW_S3_ENDPOINT_URL": u.s3,
                      "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
                      "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
                      "AWS_DEFAULT_REGION": "us-east-1",
                      "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if state["sse"]:
            mlflow_env["MLFLOW_S3_UPLOAD_EXTRA_ARGS"] = json.dumps({"ServerSideEncryption": state["sse"]})
        state["pids"]["mlflow"] = _spawn(s, "mlflow", [
            _bin("mlflow"), "server", "--backend-store-uri", mlflow_db,
            "--artifacts-destination", f"s3://{state['bucket']}/mlflow", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(chosen["mlflow"]), "--workers", "1",
        ], mlflow_env)
        prefect_env = {**base, "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_db,
                       "PREFECT_UI_API_URL": u.prefect_api, "PREFECT_SERVER_API_HOST": "127.0.0.1",
                       "PREFECT_SERVER_API_PORT": str(chosen["prefect"])}
        state["pids"]["prefect"] = _spawn(s, "prefect", [
            _bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(chosen["prefect"]),
        ], prefect_env)
        echo(f"starting mlflow ({u.mlflow}) and prefect ({u.prefect}) ...")
        wait_healthy("prefect server", lambda: http_ok(u.prefect_api + "/health"), state["pids"]["prefect"], 180,
              logs / "prefect.log")
        wait_healthy("mlflow server", lambda: http_ok(u.mlflow + "/health"), state["pids"]["mlflow"], 240,
              logs / "mlflow.log")

        # 3. the worker, with everything a flow run needs to reach the stack
        worker_env = {**base, **client_env(s, state)}
        state["pids"]["worker"] = _spawn(s, "worker", [
            _bin("prefect"), "worker", "start", "--pool", state["pool"], "--type", "process",
            "--name", f"lepton-{socket.gethostname()}",
        ], worker_env)
        echo("starting the worker ...")
        wait_healthy("prefect worker", lambda: _worker_online(u.prefect_api, state["pool"]),
              state["pids"]["worker"], 120, logs / "worker.log")

        # 4. the model server: follows @champion of the default model, token required
        state["pids"]["serve"] = _spawn(s, "serve", [
            _bin("lepton"), "serve", "--host", "127.0.0.1", "--port", str(chosen["serve"]),
        ], worker_env)
        echo(f"starting the model server ({u.serve}) ...")
        wait_healthy("model server", lambda: http_ok(u.serve + "/healthz"), state["pids"]["serve"], 120,
                     logs / "serve.log")
    except BaseException:
        write_state(s.home, state)
        for name in reversed(SERVICES):
            stop_group(int(state["pids"].get(name) or 0))
        raise
    state["up"] = True
    write_state(s.home, state)
    return state


def _ensure_bucket(endpoint: str, bucket: str, creds: dict) -> None:
    import boto3
    from botocore.exceptions import ClientError

    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=creds["aws_access_key_id"],
                     aws_secret_access_key=creds["aws_secret_access_key"])
    for attempt in range(30):
        try:
            c.head_bucket(Bucket=bucket)
            return
        except ClientError:
            try:
                c.create_bucket(Bucket=bucket)
                return
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
        time.sleep(1)  # the filer may still be electing its master
    raise LeptonError(f"could not create bucket {bucket!r} on {endpoint}")


def _worker_online(api: str, pool: str) -> bool:
    req = urllib.request.Request(
        f"{api}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return any(w.get("status") == "ONLINE" for w in json.loads(r.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return False


# How long each service gets between SIGTERM and SIGKILL. SeaweedFS's own graceful
# stop takes over 25 s: its filer waits 15 s for the S3 gateway's metadata stream (in
# the same process) to end, then its volume server waits 10 s more for a master that
# is stopping too. Every write it acknowledged is already in its files (volume .dat
# files, the filer's LevelDB log), which a SIGKILL leaves intact, and a single-node
# store has no peer to hand over to; so it gets 3 s. The stop/start test checks that
# runs, models and datasets all come back.
STOP_GRACE = {"serve": 10.0, "worker": 15.0, "prefect": 15.0, "mlflow": 15.0, "seaweedfs": 3.0}


def down(s: Settings) -> list[str]:
    st = read_state(s.home)
    if not st:
        return []
    stopped = []
    for name in reversed(SERVICES):
        pid = int(st.get("pids", {}).get(name) or 0)
        if pid_alive(pid):
            stop_group(pid, STOP_GRACE[name])
            stopped.append(name)
    st["up"] = False
    write_state(s.home, st)
    return stopped


def health(s: Settings) -> dict[str, dict]:
    st = read_state(s.home)
    if not st:
        return {}
    u = urls(st)
    checks = {
        "seaweedfs": (u.s3, lambda: s3_ok(u.s3)),
        "mlflow": (u.mlflow, lambda: http_ok(u.mlflow + "/health")),
        "prefect": (u.prefect, lambda: http_ok(u.prefect_api + "/health")),
        "worker": (f"pool {st['pool']}", lambda: _worker_online(u.prefect_api, st["pool"])),
        "serve": (u.serve, lambda: http_ok(u.serve + "/healthz")),
    }
    out = {}
    for name, (where, check) in checks.items():
        alive = pid_alive(int(st.get("pids", {}).get(name) or 0))
        out[name] = {"url": where, "running": alive, "healthy": bool(alive and check())}
    return out
