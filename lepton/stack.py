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
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from effects.runtime.procs import (
    free_port, http_ok, kill_leftovers, pid_alive, port_free, spawn, stop_group, wait_healthy, wait_port_free,
)
from effects.runtime.settings import Settings, redact_uri
from effects.runtime.stack_state import (
    SERVICES, auth_headers, credentials, read_state, stack_dir, urls, write_private, write_state,
)
from effects.runtime.stack_state import client_env as _client_env
from lepton_core.errors import LeptonError
from lepton_core.fileio import atomic_write

DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333, "serve": 8000}


def client_env(s: Settings, state: dict) -> dict[str, str]:
    return _client_env(s.home, state)


def s3_answers(url: str) -> bool:
    """The S3 endpoint answers (403 to an unsigned request is an answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def s3_roundtrip(endpoint: str, bucket: str, creds: dict, timeout: float = 5.0) -> bool:
    """A signed write, read and delete of a small object in the bucket all go
    through (an S3 port that answers while writes fail is not healthy)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id=creds["aws_access_key_id"],
                     aws_secret_access_key=creds["aws_secret_access_key"],
                     config=Config(connect_timeout=timeout, read_timeout=timeout,
                                   retries={"max_attempts": 1, "mode": "standard"}))
    key = f"_lepton/health/{secrets.token_hex(8)}"
    body = secrets.token_bytes(64)
    try:
        c.put_object(Bucket=bucket, Key=key, Body=body)
        try:
            ok = c.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        finally:
            c.delete_object(Bucket=bucket, Key=key)
        return ok
    except (BotoCoreError, ClientError, OSError):
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


# SeaweedFS's volumes: small, and a fixed number of slots. With -volume.max=0 it
# allowed free disk / 30 GB volumes (2 on a disk with 75 GB free), the filer's own
# collection could take them all, and then every write to the bucket failed. Volumes
# of 128 MB (files grow as written: nothing is preallocated) and 2000 slots let a
# handful of collections grow on a disk with a few GB free, up to 250 GB in all.
WEED_VOLUME_SIZE_MB = 128
WEED_VOLUME_MAX = 2000

# How long `up` waits for a dead service's port to be released before it gives up.
PORT_RELEASE_WAIT = 60.0


def _seaweedfs_cmd(d: Path, s3_port: int, internal: dict[str, int], s3_config: Path) -> list[str]:
    return [
        _bin("weed"), "server", f"-dir={d / 'seaweedfs'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={internal['master']}", f"-master.port.grpc={internal['master_grpc']}",
        f"-volume.port={internal['volume']}", f"-volume.port.grpc={internal['volume_grpc']}",
        "-filer", f"-filer.port={internal['filer']}", f"-filer.port.grpc={internal['filer_grpc']}",
        f"-filer.localSocket={d / 'seaweedfs' / 'filer.sock'}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={internal['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
        f"-s3.localSocket={d / 'seaweedfs' / 's3.sock'}",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={WEED_VOLUME_SIZE_MB}", f"-volume.max={WEED_VOLUME_MAX}",
    ]


def _service_ports(name: str, state: dict) -> list[int]:
    """The fixed ports of a service (those clients know); SeaweedFS's internal ones
    are chosen afresh at every start."""
    p = state["ports"]
    return {"seaweedfs": [p["s3"]], "mlflow": [p["mlflow"]], "prefect": [p["prefect"]],
            "serve": [p["serve"]]}.get(name, [])


class _Starter:
    """Starts the services of one `up`, each only when it is not already running."""

    def __init__(self, s: Settings, state: dict, mlflow_db: str, prefect_db: str, echo):
        self.s, self.state, self.echo = s, state, echo
        self.mlflow_db, self.prefect_db = mlflow_db, prefect_db
        self.d = stack_dir(s.home)
        self.logs = self.d / "logs"
        self.creds = credentials(s.home)
        self.u = urls(state)
        self.base = _base_env(s)
        self.started: list[str] = []  # by this call
        self.kept: list[str] = []  # found running and healthy

    # -- one service: keep it when alive and healthy, else start it
    def ensure(self, name: str, health, start) -> None:
        pid = int(self.state["pids"].get(name) or 0)
        if pid_alive(pid):
            if _healthy_within(health, pid, 30 if name != "worker" else 60):
                self.kept.append(name)
                return
            self.echo(f"{name} (PID {pid}) is running but not healthy: restarting it")
            stop_group(pid, STOP_GRACE[name])
        else:
            kill_leftovers(pid)  # its workers may still hold the port
            if pid and self.state.get("up"):
                self.echo(f"{name} is down: starting it again")
        for port in _service_ports(name, self.state):
            if not wait_port_free(port, name, PORT_RELEASE_WAIT, self.echo):
                raise LeptonError(f"port {port} ({name}) is already in use; choose another with "
                                  f"--{'s3' if name == 'seaweedfs' else name}-port")
        self.state["pids"][name] = start()
        self.started.append(name)
        write_state(self.s.home, self.state)

    def wait(self, name: str, what: str, health, timeout: float) -> None:
        if name in self.started:
            wait_healthy(what, health, self.state["pids"][name], timeout, self.logs / f"{name}.log")

    # -- the five services
    def seaweedfs(self) -> int:
        d, creds = self.d, self.creds
        (d / "seaweedfs").mkdir(exist_ok=True)
        s3_config = d / "s3.json"
        write_private(s3_config, {"identities": [{
            "name": "lepton",
            "credentials": [{"accessKey": creds["aws_access_key_id"], "secretKey": creds["aws_secret_access_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]})
        internal = dict(zip(("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc"),
                            (free_port(avoid=self.state["ports"].values()) for _ in range(7))))
        self.state["internal"] = internal
        weed_env = {**self.base, "WEED_S3_SSE_KEK_PASSPHRASE": creds["sse_kek_passphrase"],
                    "WEED_S3_SSE_KEK": creds["sse_kek"]}
        if self.state["auth"]:
            weed_env.update(_weed_jwt_env(creds))
        self.echo(f"starting seaweedfs (S3 on {self.u.s3}) ...")
        return _spawn(self.s, "seaweedfs", _seaweedfs_cmd(d, self.state["ports"]["s3"], internal, s3_config),
                      weed_env)

    def mlflow(self) -> int:
        creds, u, state = self.creds, self.u, self.state
        env = {**self.base, "MLFLOW_S3_ENDPOINT_URL": u.s3,
               "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
               "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
               "AWS_DEFAULT_REGION": "us-east-1",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if state["sse"]:
            env["MLFLOW_S3_UPLOAD_EXTRA_ARGS"] = json.dumps({"ServerSideEncryption": state["sse"]})
        auth = []
        if state["auth"]:
            env.update({"MLFLOW_AUTH_CONFIG_PATH": str(self._mlflow_auth_ini()),
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_flask_secret"]})
            auth = ["--app-name", "basic-auth"]
        self.echo(f"starting mlflow ({u.mlflow}) ...")
        return _spawn(self.s, "mlflow", [
            _bin("mlflow"), "server", "--backend-store-uri", self.mlflow_db,
            "--artifacts-destination", f"s3://{state['bucket']}/mlflow", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(state["ports"]["mlflow"]), "--workers", "1", *auth,
        ], env)

    def _mlflow_auth_ini(self) -> Path:
        """MLflow's basic-auth config: its user database beside the stack's others, the
        admin (the stack's MLflow user) created on first start; signed-in users read."""
        creds = self.creds
        ini = self.d / "mlflow-auth.ini"
        db = f"sqlite:///{self.d / 'mlflow-auth.db'}"
        atomic_write(ini, "\n".join([
            "[mlflow]", "default_permission = READ", f"database_uri = {db}",
            f"admin_username = {creds['mlflow_username']}", f"admin_password = {creds['mlflow_password']}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth", "",
        ]), mode=0o600, fsync=False)
        return ini

    def prefect(self) -> int:
        u, state = self.u, self.state
        env = {**self.base, "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.prefect_db,
               "PREFECT_UI_API_URL": u.prefect_api, "PREFECT_SERVER_API_HOST": "127.0.0.1",
               "PREFECT_SERVER_API_PORT": str(state["ports"]["prefect"])}
        if state["auth"]:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.creds["prefect_auth_string"]
        self.echo(f"starting prefect ({u.prefect}) ...")
        return _spawn(self.s, "prefect", [
            _bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(state["ports"]["prefect"]),
        ], env)

    def client_env(self) -> dict[str, str]:
        return {**self.base, **client_env(self.s, self.state)}

    def worker(self) -> int:
        from lepton.deploy import worker_env  # heartbeats, so a run whose process dies is rerun

        self.echo("starting the worker ...")
        return _spawn(self.s, "worker", [
            _bin("prefect"), "worker", "start", "--pool", self.state["pool"], "--type", "process",
            "--name", f"lepton-{socket.gethostname()}",
        ], {**self.client_env(), **worker_env()})

    def serve(self) -> int:
        self.echo(f"starting the model server ({self.u.serve}) ...")
        return _spawn(self.s, "serve", [
            _bin("lepton"), "serve", "--host", "127.0.0.1", "--port", str(self.state["ports"]["serve"]),
        ], self.client_env())


def _weed_jwt_env(creds: dict) -> dict[str, str]:
    """SeaweedFS's security.toml as environment variables: its volume server takes
    reads and writes only with a JWT from its master, its filer only with one from
    its S3 gateway (which checks the S3 signature first)."""
    return {"WEED_JWT_SIGNING_KEY": creds["weed_jwt_key"],
            "WEED_JWT_SIGNING_READ_KEY": creds["weed_jwt_read_key"],
            "WEED_JWT_FILER_SIGNING_KEY": creds["weed_filer_jwt_key"],
            "WEED_JWT_FILER_SIGNING_READ_KEY": creds["weed_filer_jwt_read_key"]}


def _healthy_within(check, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not pid_alive(pid):
            return False
        time.sleep(0.5)
    return False


def up(s: Settings, db_url: str | None, ports: dict[str, int | None], echo=print,
       sse: str | None = None, auth: bool | None = None) -> dict:
    """Start the stack, or what is missing of it: services that run and answer keep
    their processes; dead ones are started again (after their port is released).
    Returns the state."""
    stale = read_state(s.home) or {}
    survivors = [n for n in SERVICES if pid_alive(int(stale.get("pids", {}).get(n) or 0))]
    d = stack_dir(s.home)
    d.mkdir(parents=True, exist_ok=True)
    asked_sse = _choose_sse(sse, stale, s)
    asked_auth = (stale.get("auth", True) if stale.get("pids") else True) if auth is None else auth
    chosen = {k: int(ports.get(k) or stale.get("ports", {}).get(k) or DEFAULT_PORTS[k]) for k in DEFAULT_PORTS}
    clash = sorted({p for p in chosen.values() if list(chosen.values()).count(p) > 1})
    if clash:
        names = ", ".join(k for k, p in chosen.items() if p == clash[0])
        raise LeptonError(f"port {clash[0]} is given to more than one service ({names}); "
                          "give each its own with --prefect-port, --mlflow-port, --s3-port and --serve-port")
    if survivors:
        if sse is not None and asked_sse != stale.get("sse"):
            raise LeptonError("the stack is already running with another encryption setting; `lepton down` first")
        if auth is not None and auth != stale.get("auth", False):
            raise LeptonError("the stack is already running with another authentication setting; "
                              "`lepton down` first")
        if chosen != {**DEFAULT_PORTS, **stale["ports"]}:
            raise LeptonError("the stack is already running on other ports; `lepton down` first")
        asked_sse, asked_auth = stale.get("sse"), stale.get("auth", False)
    else:
        for name in SERVICES:  # a crashed stack's servers may have left workers holding its ports
            kill_leftovers(int(stale.get("pids", {}).get(name) or 0))
        for name, port in chosen.items():
            # a port of this home's last stack may take a moment to be released; any other is taken
            ours = stale.get("pids") and port == stale.get("ports", {}).get(name)
            if not (port_free(port) or (ours and wait_port_free(port, name, PORT_RELEASE_WAIT, echo))):
                raise LeptonError(f"port {port} ({name}) is already in use; choose another with --{name}-port")
    db_url = db_url or stale.get("db_url") or s.db_url
    if survivors and db_url != stale.get("db_url"):
        raise LeptonError("the stack is already running on another database; `lepton down` first")
    if db_url:
        mlflow_db, prefect_db = _pg_databases(db_url)
    else:
        mlflow_db = f"sqlite:///{d / 'mlflow.db'}"
        prefect_db = f"sqlite+aiosqlite:///{d / 'prefect.db'}"
    state = {
        "up": bool(stale.get("up")), "db_url": db_url, "ports": chosen,
        "bucket": stale.get("bucket") if survivors else s.s3_bucket,
        "pool": stale.get("pool") if survivors else s.work_pool,
        # server-side encryption asked for on every write (MLflow's server and DVC)
        "sse": asked_sse,
        # authentication on every service (`up --no-auth`: off)
        "auth": bool(asked_auth),
        "pids": {n: int(stale.get("pids", {}).get(n) or 0) for n in SERVICES},
        **({"internal": stale["internal"]} if stale.get("internal") else {}),
    }
    if survivors:
        echo(f"running: {', '.join(survivors)} (kept as they are)")
    go = _Starter(s, state, mlflow_db, prefect_db, echo)
    u, creds = go.u, go.creds
    try:
        # 1. the object store, healthy when a signed write, read and delete go through
        s3_check = lambda: s3_roundtrip(u.s3, state["bucket"], creds)  # noqa: E731
        go.ensure("seaweedfs", s3_check, go.seaweedfs)
        if "seaweedfs" in go.started:
            wait_healthy("seaweedfs", lambda: s3_answers(u.s3), state["pids"]["seaweedfs"], 90,
                         go.logs / "seaweedfs.log")
            _ensure_bucket(u.s3, state["bucket"], creds)
            wait_healthy("seaweedfs (a write, read and delete in the bucket)", s3_check,
                         state["pids"]["seaweedfs"], 60, go.logs / "seaweedfs.log")

        # 2. both servers at once: they take tens of seconds each to boot
        prefect_check = lambda: http_ok(u.prefect_api + "/health")  # noqa: E731
        mlflow_check = lambda: http_ok(u.mlflow + "/health")  # noqa: E731
        go.ensure("mlflow", mlflow_check, go.mlflow)
        go.ensure("prefect", prefect_check, go.prefect)
        go.wait("prefect", "prefect server", prefect_check, 180)
        go.wait("mlflow", "mlflow server", mlflow_check, 240)

        # 3. the worker, with everything a flow run needs to reach the stack
        worker_check = lambda: _worker_online(u.prefect_api, state["pool"], s.home, state)  # noqa: E731
        go.ensure("worker", worker_check, go.worker)
        go.wait("worker", "prefect worker", worker_check, 120)

        # 4. the model server: follows @champion of the default model, token required
        serve_check = lambda: http_ok(u.serve + "/healthz")  # noqa: E731
        go.ensure("serve", serve_check, go.serve)
        go.wait("serve", "model server", serve_check, 120)
    except BaseException:
        # what this call started goes; what was running before stays as it was
        for name in reversed(go.started):
            stop_group(int(state["pids"].get(name) or 0))
        write_state(s.home, state)
        raise
    state["up"] = True
    write_state(s.home, state)
    if go.started and go.kept:
        echo(f"started again: {', '.join(go.started)}; kept: {', '.join(go.kept)}")
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


def _worker_online(api: str, pool: str, home: Path, state: dict) -> bool:
    req = urllib.request.Request(
        f"{api}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
        headers={"Content-Type": "application/json", **auth_headers(home, state, "prefect")},
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
        else:  # a leader killed alone leaves its workers (MLflow's uvicorn) serving
            kill_leftovers(pid)
    st["up"] = False
    write_state(s.home, st)
    return stopped


def health(s: Settings) -> dict[str, dict]:
    """Each service: its address, whether its process runs, whether it is healthy
    (SeaweedFS: a signed write, read and delete in the bucket go through)."""
    st = read_state(s.home)
    if not st:
        return {}
    u = urls(st)
    creds = credentials(s.home)
    checks = {
        "seaweedfs": (u.s3, lambda: s3_roundtrip(u.s3, st["bucket"], creds)),
        "mlflow": (u.mlflow, lambda: http_ok(u.mlflow + "/health")),
        "prefect": (u.prefect, lambda: http_ok(u.prefect_api + "/health")),
        "worker": (f"pool {st['pool']}", lambda: _worker_online(u.prefect_api, st["pool"], s.home, st)),
        "serve": (u.serve, lambda: http_ok(u.serve + "/healthz")),
    }
    out = {}
    for name, (where, check) in checks.items():
        alive = pid_alive(int(st.get("pids", {}).get(name) or 0))
        out[name] = {"url": where, "running": alive, "healthy": bool(alive and check())}
    return out
