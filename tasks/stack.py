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
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lepton_core.errors import LeptonError
from tasks.settings import Settings

SERVICES = ("seaweedfs", "mlflow", "prefect", "worker")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333}
BUCKET_DEFAULT = "lepton"
POOL_DEFAULT = "lepton"


def stack_dir(s: Settings) -> Path:
    return s.home / "stack"


def _state_path(s: Settings) -> Path:
    return stack_dir(s) / "stack.json"


def _write_private(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_state(s: Settings) -> dict | None:
    p = _state_path(s)
    return json.loads(p.read_text()) if p.exists() else None


def credentials(s: Settings) -> dict:
    """S3 keys for the bundled store (and the SSE key-encryption passphrase)."""
    p = stack_dir(s) / "credentials.json"
    if p.exists():
        creds = json.loads(p.read_text())
        if "sse_kek" not in creds:  # states written before SSE keys were kept
            creds["sse_kek"] = secrets.token_hex(32)
            _write_private(p, creds)
        return creds
    creds = {
        "aws_access_key_id": "LEPTON" + secrets.token_hex(7).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
        "sse_kek_passphrase": secrets.token_urlsafe(24),
        "sse_kek": secrets.token_hex(32),  # SeaweedFS's SSE-S3 key-encryption key
    }
    _write_private(p, creds)
    return creds


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def s3_ok(url: str) -> bool:
    """The S3 endpoint answers (403 to an unsigned request is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------- URLs and env
@dataclass(frozen=True)
class Urls:
    prefect: str
    prefect_api: str
    mlflow: str
    s3: str


def urls(state: dict) -> Urls:
    p = state["ports"]
    return Urls(
        prefect=f"http://127.0.0.1:{p['prefect']}",
        prefect_api=f"http://127.0.0.1:{p['prefect']}/api",
        mlflow=f"http://127.0.0.1:{p['mlflow']}",
        s3=f"http://127.0.0.1:{p['s3']}",
    )


def client_env(s: Settings, state: dict) -> dict[str, str]:
    """What every Lepton command (and the worker's flow runs) needs to use the stack."""
    u, creds = urls(state), credentials(s)
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
        **({"LEPTON_S3_SSE": state["sse"]} if state.get("sse") else {}),
    }


def running(s: Settings) -> dict | None:
    """The stack's state if `lepton up` started it and its processes live."""
    st = read_state(s)
    if not st or not st.get("up"):
        return None
    if not all(pid_alive(st["pids"].get(name)) for name in SERVICES):
        return None
    return st


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


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
        raise LeptonError(f"cannot reach PostgreSQL at {redact(db_url)}: {str(e).strip().splitlines()[0]}") from None
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
    logs = stack_dir(s) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: `down` stops its children too
            cwd=str(s.project_dir),
        )
    (stack_dir(s) / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
    if not pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    try:  # the leader may be gone while children linger (SeaweedFS, MLflow's workers)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait(what: str, check, pid: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not pid_alive(pid):
            raise LeptonError(f"{what} exited during start-up; see {log}")
        time.sleep(0.3)
    raise LeptonError(f"{what} did not become healthy in {timeout:.0f} s; see {log}")


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


def _choose_sse(asked: str | None, stale: dict | None) -> str | None:
    """--sse, else LEPTON_S3_SSE, else what the last `up` used; "none" turns it off."""
    value = asked or os.environ.get("LEPTON_S3_SSE") or (stale or {}).get("sse") or None
    if value is None or value.lower() == "none":
        return None
    if value not in SSE_MODES:
        raise LeptonError(f"server-side encryption must be one of {', '.join(SSE_MODES)} or none, not {value!r}")
    return value


def up(s: Settings, db_url: str | None, ports: dict[str, int | None], echo=print,
       sse: str | None = None) -> dict:
    """Start (or find running) the stack; returns its state."""
    current = running(s)
    if current:
        if sse is not None and _choose_sse(sse, None) != current.get("sse"):
            raise LeptonError("the stack is already running with another encryption setting; "
                              "`lepton down` first")
        return current
    stale = read_state(s)
    if stale:  # a half-started or crashed stack: clean what is left before starting again
        for name in reversed(SERVICES):
            _stop_pid(int(stale.get("pids", {}).get(name) or 0))
    d = stack_dir(s)
    d.mkdir(parents=True, exist_ok=True)
    chosen = {k: int(ports.get(k) or DEFAULT_PORTS[k]) for k in DEFAULT_PORTS}
    for name, port in chosen.items():
        if not port_free(port):
            raise LeptonError(f"port {port} ({name}) is already in use; choose another with --{name}-port")
    db_url = db_url or (stale or {}).get("db_url") or os.environ.get("LEPTON_DB_URL") or None
    if db_url:
        mlflow_db, prefect_db = _pg_databases(db_url)
    else:
        mlflow_db = f"sqlite:///{d / 'mlflow.db'}"
        prefect_db = f"sqlite+aiosqlite:///{d / 'prefect.db'}"
    state = {
        "up": False, "db_url": db_url, "ports": chosen,
        "bucket": os.environ.get("LEPTON_S3_BUCKET") or BUCKET_DEFAULT,
        "pool": os.environ.get("LEPTON_WORK_POOL") or POOL_DEFAULT,
        # server-side encryption asked for on every write (MLflow's server and DVC)
        "sse": _choose_sse(sse, stale),
        "pids": {},
    }
    creds = credentials(s)
    u = urls(state)
    base = _base_env(s)
    logs = d / "logs"
    try:
        # 1. object store
        (d / "seaweedfs").mkdir(exist_ok=True)
        s3_config = d / "s3.json"
        _write_private(s3_config, {"identities": [{
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
        _wait("seaweedfs", lambda: s3_ok(u.s3), state["pids"]["seaweedfs"], 90, logs / "seaweedfs.log")
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
        _wait("prefect server", lambda: http_ok(u.prefect_api + "/health"), state["pids"]["prefect"], 180,
              logs / "prefect.log")
        _wait("mlflow server", lambda: http_ok(u.mlflow + "/health"), state["pids"]["mlflow"], 240,
              logs / "mlflow.log")

        # 3. the worker, with everything a flow run needs to reach the stack
        worker_env = {**base, **client_env(s, state)}
        state["pids"]["worker"] = _spawn(s, "worker", [
            _bin("prefect"), "worker", "start", "--pool", state["pool"], "--type", "process",
            "--name", f"lepton-{socket.gethostname()}",
        ], worker_env)
        echo("starting the worker ...")
        _wait("prefect worker", lambda: _worker_online(u.prefect_api, state["pool"]),
              state["pids"]["worker"], 120, logs / "worker.log")
    except BaseException:
        _write_private(_state_path(s), state)
        for name in reversed(SERVICES):
            _stop_pid(int(state["pids"].get(name) or 0))
        raise
    state["up"] = True
    _write_private(_state_path(s), state)
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
STOP_GRACE = {"worker": 15.0, "prefect": 15.0, "mlflow": 15.0, "seaweedfs": 3.0}


def down(s: Settings) -> list[str]:
    st = read_state(s)
    if not st:
        return []
    stopped = []
    for name in reversed(SERVICES):
        pid = int(st.get("pids", {}).get(name) or 0)
        if pid_alive(pid):
            _stop_pid(pid, STOP_GRACE[name])
            stopped.append(name)
    st["up"] = False
    _write_private(_state_path(s), st)
    return stopped


def health(s: Settings) -> dict[str, dict]:
    st = read_state(s)
    if not st:
        return {}
    u = urls(st)
    checks = {
        "seaweedfs": (u.s3, lambda: s3_ok(u.s3)),
        "mlflow": (u.mlflow, lambda: http_ok(u.mlflow + "/health")),
        "prefect": (u.prefect, lambda: http_ok(u.prefect_api + "/health")),
        "worker": (f"pool {st['pool']}", lambda: _worker_online(u.prefect_api, st["pool"])),
    }
    out = {}
    for name, (where, check) in checks.items():
        alive = pid_alive(int(st.get("pids", {}).get(name) or 0))
        out[name] = {"url": where, "running": alive, "healthy": bool(alive and check())}
    return out
