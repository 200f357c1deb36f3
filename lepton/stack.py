"""`lepton up` / `lepton down`: the live platform on one machine.

Five background processes, each with a log and a PID under `<home>/stack/`:

    seaweedfs   S3-compatible object store (MLflow artifacts, the DVC remote)
    mlflow      MLflow tracking server + registry (--serve-artifacts to S3)
    prefect     Prefect API server + dashboard
    worker      a Prefect worker on a process work pool
    serve       the model server (`lepton serve`, @champion, bearer token)

How each is told healthy is one table, `service_checks`, that `up` (keep or
restart a service, wait for one it started) and `health` (`lepton status`) share.
The record `up` leaves (`<home>/stack/stack.json`) is a `StackState` here.

Backends: SQLite files under `<home>/stack/` by default, or PostgreSQL with
`--db postgresql://user@host:port/NAME` (databases NAME_mlflow and NAME_prefect are
created when missing). S3 credentials are generated once, kept in
`<home>/stack/credentials.json` (mode 0600) and handed to the processes through
their environment, never through a committed file, a param or a tag. SeaweedFS's
own ports take only clients with the stack's certificates (mutual TLS), and a
sentinel object notices a store whose volumes were deleted: `lepton.weed`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from effects.runtime import s3
from effects.runtime.procs import (
    free_port,
    http_ok,
    kill_leftovers,
    pid_alive,
    port_free,
    spawn,
    stop_group,
    wait_healthy,
    wait_port_free,
)
from effects.runtime.settings import Settings, redact_uri
from effects.runtime.stack_state import (
    SERVICES,
    Urls,
    auth_headers,
    credentials,
    read_state,
    stack_dir,
    urls,
    write_private,
    write_state,
)
from effects.runtime.stack_state import client_env as _client_env
from lepton import watchers, weed
from lepton_core.errors import LeptonError
from lepton_core.fileio import atomic_write

DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000, "s3": 8333, "serve": 8000}


@dataclass
class StackState:
    """The stack's record, `<home>/stack/stack.json`. effects.runtime.stack_state reads
    and writes it as a plain dict (what every other command reads); here, where it is
    made, it is typed: `from_record` and `record` are the one crossing."""

    ports: dict[str, int] = field(default_factory=dict)  # the ones clients know: prefect, mlflow, s3, serve
    pids: dict[str, int] = field(default_factory=dict)  # each service's process group leader; 0: none
    up: bool = False  # a `lepton up` succeeded, and no `lepton down` since
    db_url: str | None = None  # postgresql://... of both servers; None: SQLite under <home>/stack
    bucket: str | None = None
    pool: str | None = None  # the Prefect work pool of the worker
    sse: str | None = None  # server-side encryption asked for on every S3 write (MLflow's server and DVC)
    auth: bool | None = None  # authentication on every service; None: a record from before it was kept
    internal: dict[str, int] | None = None  # SeaweedFS's own ports, chosen afresh at every start
    sentinels: dict[str, str] = field(default_factory=dict)  # bucket -> the token of its sentinel (lepton.weed)
    watch: dict[str, dict[str, int]] = field(default_factory=dict)  # {"ports", "pids"} of lepton.watchers' services
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they are

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> StackState:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            ports=dict(d.get("ports") or {}),
            pids=dict(d.get("pids") or {}),
            up=bool(d.get("up")),
            db_url=d.get("db_url"),
            bucket=d.get("bucket"),
            pool=d.get("pool"),
            sse=d.get("sse"),
            auth=d.get("auth"),
            internal=d.get("internal"),
            sentinels=dict(d.get("sentinels") or {}),
            watch={k: dict(v) for k, v in (d.get("watch") or {}).items()},
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def read(cls, home: Path) -> StackState | None:
        d = read_state(home)
        return cls.from_record(d) if d else None

    def record(self) -> dict[str, Any]:
        out = {
            **self.extra,
            "up": self.up,
            "db_url": self.db_url,
            "ports": self.ports,
            "bucket": self.bucket,
            "pool": self.pool,
            "sse": self.sse,
            "pids": self.pids,
        }
        if self.auth is not None:
            out["auth"] = self.auth
        if self.internal:
            out["internal"] = self.internal
        if self.sentinels:
            out["sentinels"] = self.sentinels
        if self.watch:
            out["watch"] = self.watch
        return out

    def write(self, home: Path) -> None:
        write_state(home, self.record())

    def pid(self, name: str) -> int:
        return int(self.pids.get(name) or 0)

    def urls(self) -> Urls:
        return urls(self.record())


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


def _keys(creds: dict) -> dict:
    return {k: creds[k] for k in ("aws_access_key_id", "aws_secret_access_key")}


def s3_roundtrip(endpoint: str, bucket: str, creds: dict, timeout: float = 5.0) -> bool:
    """A signed write, read and delete of a small object in the bucket all go
    through (an S3 port that answers while writes fail is not healthy)."""
    from botocore.exceptions import BotoCoreError, ClientError

    c = s3.client(
        endpoint, attempts=2, connect_timeout=timeout, read_timeout=timeout, creds=_keys(creds), region="us-east-1"
    )
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
        reason = str(e).strip().splitlines()[0]
        raise LeptonError(f"cannot reach PostgreSQL at {redact_uri(db_url)}: {reason}") from None
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
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "LEPTON_HOME": str(s.home),
            "LEPTON_PROJECT_DIR": str(s.project_dir),
            "PREFECT_HOME": str(s.prefect_home),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    return env


SSE_MODES = ("AES256", "aws:kms")


def _choose_sse(asked: str | None, last: str | None, s: Settings) -> str | None:
    """--sse, else LEPTON_S3_SSE, else what the last `up` used; "none" turns it off."""
    value = asked or s.s3_sse or last or None
    if value is None or value.lower() == "none":
        return None
    if value not in SSE_MODES:
        raise LeptonError(f"server-side encryption must be one of {', '.join(SSE_MODES)} or none, not {value!r}")
    return value


# How long `up` waits for a dead service's port to be released before it gives up.
PORT_RELEASE_WAIT = 60.0


def _service_ports(name: str, state: StackState) -> list[int]:
    """The fixed ports of a service (those clients know); SeaweedFS's internal ones
    are chosen afresh at every start."""
    p = state.ports
    return {"seaweedfs": [p["s3"]], "mlflow": [p["mlflow"]], "prefect": [p["prefect"]], "serve": [p["serve"]]}.get(
        name, []
    )


@dataclass(frozen=True)
class ServiceCheck:
    name: str  # one of SERVICES
    where: str  # what `lepton status` shows: the address (the worker: its pool)
    healthy: Callable[[], bool]


def service_checks(home: Path, state: StackState) -> list[ServiceCheck]:
    """How each service is told healthy, in SERVICES order: the one table that `up`
    (keep a running service or restart it; wait for one it started) and `health`
    (`lepton status`) both ask."""
    u, creds = state.urls(), credentials(home)
    return [
        # a signed write, read and delete in the bucket (an S3 port that answers while
        # writes fail is not healthy)
        ServiceCheck("seaweedfs", u.s3, lambda: s3_roundtrip(u.s3, state.bucket or "", creds)),
        ServiceCheck("mlflow", u.mlflow, lambda: http_ok(u.mlflow + "/health")),
        ServiceCheck("prefect", u.prefect, lambda: http_ok(u.prefect_api + "/health")),
        ServiceCheck(
            "worker",
            f"pool {state.pool}",
            lambda: _worker_online(u.prefect_api, state.pool or "", home, state.record()),
        ),
        ServiceCheck("serve", u.serve, lambda: http_ok(u.serve + "/healthz")),
    ]


class _Starter:
    """Starts the services of one `up`, each only when it is not already running."""

    def __init__(self, s: Settings, state: StackState, mlflow_db: str, prefect_db: str, echo: Callable[[str], None]):
        self.s, self.state, self.echo = s, state, echo
        self.mlflow_db, self.prefect_db = mlflow_db, prefect_db
        self.d = stack_dir(s.home)
        self.logs = self.d / "logs"
        self.creds = credentials(s.home)
        self.u = state.urls()
        self.base = _base_env(s)
        self.checks = {c.name: c.healthy for c in service_checks(s.home, state)}
        self.started: list[str] = []  # by this call
        self.kept: list[str] = []  # found running and healthy
        self.serve_workers: int | None = None  # `up --serve-workers`; None: serve.workers of params.yaml

    # -- one service: keep it when alive and healthy, else start it
    def ensure(self, name: str, start: Callable[[], int]) -> None:
        pid = self.state.pid(name)
        if pid_alive(pid):
            if _healthy_within(self.checks[name], pid, 30 if name != "worker" else 60):
                self.kept.append(name)
                return
            self.echo(f"{name} (PID {pid}) is running but not healthy: restarting it")
            stop_group(pid, STOP_GRACE[name])
        else:
            kill_leftovers(pid)  # its workers may still hold the port
            if pid and self.state.up:
                self.echo(f"{name} is down: starting it again")
        for port in _service_ports(name, self.state):
            if not wait_port_free(port, name, PORT_RELEASE_WAIT, self.echo):
                raise LeptonError(
                    f"port {port} ({name}) is already in use; choose another with "
                    f"--{'s3' if name == 'seaweedfs' else name}-port"
                )
        self.state.pids[name] = start()
        self.started.append(name)
        self.state.write(self.s.home)

    def wait(self, name: str, what: str, timeout: float) -> None:
        """Wait for a service this call started to be healthy."""
        if name in self.started:
            wait_healthy(what, self.checks[name], self.state.pid(name), timeout, self.logs / f"{name}.log")

    def wait_seaweedfs(self) -> None:
        """A new store: its S3 port answers, then the bucket is made, then a write, read
        and delete in it go through."""
        if "seaweedfs" not in self.started:
            return
        pid, log = self.state.pid("seaweedfs"), self.logs / "seaweedfs.log"
        wait_healthy("seaweedfs", lambda: s3_answers(self.u.s3), pid, 90, log)
        _ensure_bucket(self.u.s3, self.state.bucket or "", self.creds)
        wait_healthy("seaweedfs (a write, read and delete in the bucket)", self.checks["seaweedfs"], pid, 60, log)

    def check_data(self, accept_loss: bool) -> None:
        """The bucket still holds what was written to it: its sentinel reads back (one
        is written when none was). With `accept_loss`, a store that lost its data gets
        a new sentinel instead of an error."""
        bucket, c = self.state.bucket or "", _store_client(self.u.s3, self.creds)
        if bucket in self.state.sentinels:
            problem = weed.data_problem(c, bucket, self.state.sentinels[bucket])
            if problem is None:
                return
            if not accept_loss:
                raise LeptonError(
                    f"seaweedfs: {problem}: bucket {bucket!r} no longer holds what was written to it "
                    f"(datasets, runs, models); restore {self.d / 'seaweedfs'} from a backup, or "
                    "`lepton up --accept-data-loss` to go on with what is left"
                )
            self.echo(f"seaweedfs: {problem}; going on with what is left (--accept-data-loss)")
        token = weed.new_sentinel()
        weed.write_sentinel(c, bucket, token)
        self.state.sentinels = {**self.state.sentinels, bucket: token}
        self.state.write(self.s.home)

    # -- the five services
    def seaweedfs(self) -> int:
        d, creds = self.d, self.creds
        (d / "seaweedfs").mkdir(exist_ok=True)
        s3_config = d / "s3.json"
        write_private(
            s3_config,
            {
                "identities": [
                    {
                        "name": "lepton",
                        "credentials": [
                            {"accessKey": creds["aws_access_key_id"], "secretKey": creds["aws_secret_access_key"]}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            },
        )
        internal = self._internal_ports()
        weed_env = {
            **self.base,
            "WEED_S3_SSE_KEK_PASSPHRASE": creds["sse_kek_passphrase"],
            "WEED_S3_SSE_KEK": creds["sse_kek"],
        }
        tls = bool(self.state.auth)
        if tls:  # the JWT keys in the environment; certificates and security.toml under <home>/stack
            weed_env.update(_weed_jwt_env(creds))
            weed.write_security_toml(d)
        _wait_gone(self.state.pid("seaweedfs"), 30.0)  # a store just stopped: its sockets close as it dies
        weed.remove_sockets(self.state.internal, wait=15.0)  # what a killed store left in /tmp
        self.state.internal = internal
        (self.logs / "weed").mkdir(parents=True, exist_ok=True)
        self.echo(f"starting seaweedfs (S3 on {self.u.s3}{', mutual TLS inside' if tls else ''}) ...")
        cmd = weed.command(_bin("weed"), d, self.state.ports["s3"], internal, s3_config, tls)
        return _spawn(self.s, "seaweedfs", cmd, weed_env)

    def _internal_ports(self) -> dict[str, int]:
        """SeaweedFS's own ports: free, and with no file at their gRPC socket paths in
        /tmp (weed could not listen there; another user may have put one there)."""
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")
        for _ in range(20):
            internal = {n: free_port(avoid=self.state.ports.values()) for n in names}
            if weed.sockets_free(internal):
                return internal
        raise LeptonError("no free ports for SeaweedFS: files lie at their gRPC socket paths (/tmp/seaweedfs-*.sock)")

    def mlflow(self) -> int:
        creds, u, state = self.creds, self.u, self.state
        env = {
            **self.base,
            "MLFLOW_S3_ENDPOINT_URL": u.s3,
            "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        if state.sse:
            env["MLFLOW_S3_UPLOAD_EXTRA_ARGS"] = json.dumps({"ServerSideEncryption": state.sse})
        auth = []
        if state.auth:
            env.update(
                {
                    "MLFLOW_AUTH_CONFIG_PATH": str(self._mlflow_auth_ini()),
                    "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_flask_secret"],
                }
            )
            auth = ["--app-name", "basic-auth"]
        self.echo(f"starting mlflow ({u.mlflow}) ...")
        return _spawn(
            self.s,
            "mlflow",
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                self.mlflow_db,
                "--artifacts-destination",
                f"s3://{state.bucket}/mlflow",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(state.ports["mlflow"]),
                "--workers",
                "1",
                *auth,
            ],
            env,
        )

    def _mlflow_auth_ini(self) -> Path:
        """MLflow's basic-auth config: its user database beside the stack's others, the
        admin (the stack's MLflow user) created on first start; signed-in users read."""
        creds = self.creds
        ini = self.d / "mlflow-auth.ini"
        db = f"sqlite:///{self.d / 'mlflow-auth.db'}"
        atomic_write(
            ini,
            "\n".join(
                [
                    "[mlflow]",
                    "default_permission = READ",
                    f"database_uri = {db}",
                    f"admin_username = {creds['mlflow_username']}",
                    f"admin_password = {creds['mlflow_password']}",
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
                    "",
                ]
            ),
            mode=0o600,
            fsync=False,
        )
        return ini

    def prefect(self) -> int:
        u, state = self.u, self.state
        env = {
            **self.base,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": self.prefect_db,
            "PREFECT_UI_API_URL": u.prefect_api,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(state.ports["prefect"]),
        }
        if state.auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.creds["prefect_auth_string"]
        self.echo(f"starting prefect ({u.prefect}) ...")
        return _spawn(
            self.s,
            "prefect",
            [
                _bin("prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(state.ports["prefect"]),
            ],
            env,
        )

    def client_env(self) -> dict[str, str]:
        return {**self.base, **client_env(self.s, self.state.record())}

    def worker(self) -> int:
        from lepton.deploy import worker_env  # heartbeats, so a run whose process dies is rerun

        self.echo("starting the worker ...")
        return _spawn(
            self.s,
            "worker",
            [
                _bin("prefect"),
                "worker",
                "start",
                "--pool",
                self.state.pool or "",
                "--type",
                "process",
                "--name",
                f"lepton-{socket.gethostname()}",
            ],
            {**self.client_env(), **worker_env()},
        )

    # -- the watching services (lepton.watchers), each optional
    def watch(self, wait: bool = True) -> None:
        """Prometheus, Alertmanager and Evidently's UI: kept when running and healthy
        (told to reload their configuration, which may have changed), else started;
        one not installed is said so and skipped. `wait=False`: `wait_watchers` later
        (they boot while MLflow and Prefect do)."""
        w = self.state.watch
        pids = dict(w.get("pids") or {})
        # a port kept from the last up, unless someone else took it while ours was down
        kept = {
            n: p
            for n, p in (w.get("ports") or {}).items()
            if n in watchers.WATCHERS and (pid_alive(pids.get(n, 0)) or port_free(p))
        }
        ports = watchers.choose_ports(kept, set(self.state.ports.values()))
        self.state.watch = {"ports": ports, "pids": pids}
        checks = {x.name: x.healthy for x in watchers.watchers(ports)}
        for name in watchers.WATCHERS:
            exe = watchers.binary(name)
            if exe is None:
                self.echo(f"{name}: {watchers.missing_line(name)}")
                stop_group(pids.get(name, 0), 5)  # it was there at the last up: it goes
                pids[name] = 0
                continue
            pids[name] = self._ensure_watcher(name, exe, ports, checks[name], pids.get(name, 0))
            self.state.write(self.s.home)
        if wait:
            self.wait_watchers()

    def wait_watchers(self) -> None:
        """Wait for the watchers this call started to be healthy."""
        w = self.state.watch
        for x in watchers.watchers(w.get("ports") or {}):
            if x.name in self.started:
                wait_healthy(x.name, x.healthy, w["pids"][x.name], 60, self.logs / f"{x.name}.log")

    def _ensure_watcher(self, name: str, exe: str, ports: dict[str, int], healthy, pid: int) -> int:
        cmd, env = self._watcher_command(name, exe, ports)
        if pid_alive(pid):
            if _healthy_within(healthy, pid, 15):
                if name != "evidently":
                    os.kill(pid, signal.SIGHUP)  # both reload their configuration on SIGHUP
                self.kept.append(name)
                return pid
            self.echo(f"{name} (PID {pid}) is running but not healthy: restarting it")
            stop_group(pid, 5)
        else:
            kill_leftovers(pid)
        self.echo(f"starting {name} (http://127.0.0.1:{ports[name]}) ...")
        self.started.append(name)
        return _spawn(self.s, name, cmd, env)

    def _watcher_command(self, name: str, exe: str, ports: dict[str, int]) -> tuple[list[str], dict[str, str]]:
        if name == "prometheus":
            config = watchers.prometheus_config(self.d, {**ports, "serve": self.state.ports["serve"]})
            return watchers.prometheus_command(exe, config, ports[name]), self.base
        if name == "alertmanager":
            config = watchers.alertmanager_config(self.s.home, self.d)
            return watchers.alertmanager_command(exe, config, ports[name]), self.base
        workspace = watchers.evidently_workspace(self.s.home)
        env = {**self.base, "EVIDENTLY_SECRET": self.creds["evidently_secret"]}
        return watchers.evidently_command(exe, workspace, ports[name]), env

    def serve(self) -> int:
        self.echo(f"starting the model server ({self.u.serve}) ...")
        return _spawn(
            self.s,
            "serve",
            [
                _bin("lepton"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.state.ports["serve"]),
                *(["--workers", str(self.serve_workers)] if self.serve_workers else []),
            ],
            self.client_env(),
        )


def _weed_jwt_env(creds: dict) -> dict[str, str]:
    """SeaweedFS's security.toml as environment variables: its volume server takes
    reads and writes only with a JWT from its master, its filer only with one from
    its S3 gateway (which checks the S3 signature first)."""
    return {
        "WEED_JWT_SIGNING_KEY": creds["weed_jwt_key"],
        "WEED_JWT_SIGNING_READ_KEY": creds["weed_jwt_read_key"],
        "WEED_JWT_FILER_SIGNING_KEY": creds["weed_filer_jwt_key"],
        "WEED_JWT_FILER_SIGNING_READ_KEY": creds["weed_filer_jwt_read_key"],
    }


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process `pid` is gone (a stop's SIGKILL takes a moment)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _healthy_within(check: Callable[[], bool], pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not pid_alive(pid):
            return False
        time.sleep(0.5)
    return False


# ---------------------------------------------------------------- up
def _choose_ports(asked: Mapping[str, int | None], stale: StackState) -> dict[str, int]:
    """--PORT options, else the last up's, else the defaults; each service its own."""
    chosen = {k: int(asked.get(k) or stale.ports.get(k) or DEFAULT_PORTS[k]) for k in DEFAULT_PORTS}
    clash = sorted({p for p in chosen.values() if list(chosen.values()).count(p) > 1})
    if clash:
        names = ", ".join(k for k, p in chosen.items() if p == clash[0])
        raise LeptonError(
            f"port {clash[0]} is given to more than one service ({names}); "
            "give each its own with --prefect-port, --mlflow-port, --s3-port and --serve-port"
        )
    return chosen


def _as_running(
    stale: StackState, chosen: dict[str, int], sse: str | None, asked_sse: str | None, auth: bool | None
) -> tuple[str | None, bool]:
    """With services still running, what is asked must be what they run with; returns
    their (sse, auth)."""
    if sse is not None and asked_sse != stale.sse:
        raise LeptonError("the stack is already running with another encryption setting; `lepton down` first")
    if auth is not None and auth != bool(stale.auth):
        raise LeptonError("the stack is already running with another authentication setting; `lepton down` first")
    if chosen != {**DEFAULT_PORTS, **stale.ports}:
        raise LeptonError("the stack is already running on other ports; `lepton down` first")
    return stale.sse, bool(stale.auth)


def _claim_ports(stale: StackState, chosen: dict[str, int], echo: Callable[[str], None]) -> None:
    """Nothing of the last stack runs: end what its servers left, and make sure every
    chosen port is free."""
    for name in SERVICES:  # a crashed stack's servers may have left workers holding its ports
        kill_leftovers(stale.pid(name))
    for name, port in chosen.items():
        # a port of this home's last stack may take a moment to be released; any other is taken
        ours = stale.pids and port == stale.ports.get(name)
        if not (port_free(port) or (ours and wait_port_free(port, name, PORT_RELEASE_WAIT, echo))):
            raise LeptonError(f"port {port} ({name}) is already in use; choose another with --{name}-port")


def _next_state(
    s: Settings,
    stale: StackState,
    survivors: list[str],
    db_url: str | None,
    ports: Mapping[str, int | None],
    echo: Callable[[str], None],
    sse: str | None,
    auth: bool | None,
) -> StackState:
    """What this `up` runs with: checked against what still runs of the last one."""
    asked_sse = _choose_sse(sse, stale.sse, s)
    # a record from before authentication was kept: on, unless its services still run
    last_auth = True if stale.auth is None else stale.auth
    asked_auth = (last_auth if stale.pids else True) if auth is None else auth
    chosen = _choose_ports(ports, stale)
    if survivors:
        asked_sse, asked_auth = _as_running(stale, chosen, sse, asked_sse, auth)
    else:
        _claim_ports(stale, chosen, echo)
    db_url = db_url or stale.db_url or s.db_url
    if survivors and db_url != stale.db_url:
        raise LeptonError("the stack is already running on another database; `lepton down` first")
    return StackState(
        up=stale.up,
        db_url=db_url,
        ports=chosen,
        bucket=stale.bucket if survivors else s.s3_bucket,
        pool=stale.pool if survivors else s.work_pool,
        sse=asked_sse,
        auth=bool(asked_auth),
        pids={n: stale.pid(n) for n in SERVICES},
        internal=stale.internal or None,
        sentinels=stale.sentinels,
        watch=stale.watch,
    )


def _databases(db_url: str | None, d: Path) -> tuple[str, str]:
    """(MLflow's, Prefect's) backend store URLs."""
    if db_url:
        return _pg_databases(db_url)
    return f"sqlite:///{d / 'mlflow.db'}", f"sqlite+aiosqlite:///{d / 'prefect.db'}"


def _bring_up(go: _Starter, accept_loss: bool = False) -> None:
    # 1. the object store, and the data in it
    go.ensure("seaweedfs", go.seaweedfs)
    go.wait_seaweedfs()
    go.check_data(accept_loss)
    # 2. both servers at once: they take tens of seconds each to boot
    go.ensure("mlflow", go.mlflow)
    go.ensure("prefect", go.prefect)
    # 3. the watching services meanwhile, before the worker: its flow runs write to Evidently's UI
    go.watch(wait=False)
    go.wait("prefect", "prefect server", 180)
    go.wait("mlflow", "mlflow server", 240)
    go.wait_watchers()
    # 4. the worker, with everything a flow run needs to reach the stack
    go.ensure("worker", go.worker)
    go.wait("worker", "prefect worker", 120)
    # 5. the model server: follows @champion of the default model, token required
    go.ensure("serve", go.serve)
    go.wait("serve", "model server", 120)


def up(
    s: Settings,
    db_url: str | None,
    ports: dict[str, int | None],
    echo=print,
    sse: str | None = None,
    auth: bool | None = None,
    accept_data_loss: bool = False,
    serve_workers: int | None = None,
) -> dict:
    """Start the stack, or what is missing of it: services that run and answer keep
    their processes; dead ones are started again (after their port is released). A
    store whose data is gone (lepton.weed's sentinel) stops it with an error, unless
    `accept_data_loss`. `serve_workers`: the model server's processes (None: its
    params.yaml's serve.workers). Returns the state (the record `lepton up` leaves in `<home>/stack/stack.json`)."""
    stale = StackState.read(s.home) or StackState()
    survivors = [n for n in SERVICES if pid_alive(stale.pid(n))]
    d = stack_dir(s.home)
    d.mkdir(parents=True, exist_ok=True)
    state = _next_state(s, stale, survivors, db_url, ports, echo, sse, auth)
    mlflow_db, prefect_db = _databases(state.db_url, d)
    if survivors:
        echo(f"running: {', '.join(survivors)} (kept as they are)")
    go = _Starter(s, state, mlflow_db, prefect_db, echo)
    go.serve_workers = serve_workers
    try:
        _bring_up(go, accept_data_loss)
    except BaseException:
        # what this call started goes; what was running before stays as it was
        for name in reversed(go.started):
            stop_group(state.pid(name) or state.watch.get("pids", {}).get(name, 0))
        if "seaweedfs" in go.started:
            _wait_gone(state.pid("seaweedfs"), 30.0)
            weed.remove_sockets(state.internal, wait=15.0)
        state.write(s.home)
        raise
    state.up = True
    state.write(s.home)
    if go.started and go.kept:
        echo(f"started again: {', '.join(go.started)}; kept: {', '.join(go.kept)}")
    return state.record()


def _store_client(endpoint: str, creds: dict):
    """An S3 client for health checks: two tries, short timeouts."""
    return s3.client(endpoint, attempts=2, connect_timeout=5, read_timeout=5, creds=_keys(creds), region="us-east-1")


def data_problem(home: Path, state: StackState) -> str | None:
    """What `lepton status` says of a store that answers but lost its data; None
    when the sentinel (and each data prefix's first object) reads back, or when no
    sentinel was written yet."""
    from botocore.exceptions import BotoCoreError, ClientError

    token = state.sentinels.get(state.bucket or "")
    if not token:
        return None
    try:
        return weed.data_problem(_store_client(state.urls().s3, credentials(home)), state.bucket or "", token)
    except (BotoCoreError, ClientError, OSError):
        return "not healthy (the data check got no answer)"


def _ensure_bucket(endpoint: str, bucket: str, creds: dict) -> None:
    from botocore.exceptions import ClientError

    c = s3.client(endpoint, creds=_keys(creds), region="us-east-1")
    for _ in range(30):
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
        f"{api}/work_pools/{pool}/workers/filter",
        data=b"{}",
        method="POST",
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
    st = StackState.read(s.home)
    if not st:
        return []
    stopped = []
    for name, pid in reversed((st.watch.get("pids") or {}).items()):
        if pid_alive(pid):
            stop_group(pid, 5)
            stopped.append(name)
    for name in reversed(SERVICES):
        pid = st.pid(name)
        if pid_alive(pid):
            stop_group(pid, STOP_GRACE[name])
            stopped.append(name)
        else:  # a leader killed alone leaves its workers (MLflow's uvicorn) serving
            kill_leftovers(pid)
    _wait_gone(st.pid("seaweedfs"), 30.0)  # SIGKILLed a moment ago: its sockets close as it dies
    weed.remove_sockets(st.internal, wait=15.0)
    st.up = False
    st.write(s.home)
    return stopped


def health(s: Settings) -> dict[str, dict]:
    """Each service: its address, whether its process runs, whether it is healthy
    (by `service_checks`, the checks `up` uses); for a store that answers but lost
    its data, healthy is false and `problem` says so (`data_problem`)."""
    st = StackState.read(s.home)
    if not st:
        return {}
    out: dict[str, dict] = {}
    for c in service_checks(s.home, st):
        alive = pid_alive(st.pid(c.name))
        out[c.name] = {"url": c.where, "running": alive, "healthy": bool(alive and c.healthy())}
        problem = data_problem(s.home, st) if c.name == "seaweedfs" and out[c.name]["healthy"] else None
        if problem:  # it answers, but what was written to it is gone
            out[c.name].update(healthy=False, problem=problem)
    return {**out, **_watch_health(st)}


def _watch_health(st: StackState) -> dict[str, dict]:
    """The watching services, marked optional: `lepton status` names one that is down
    without failing (nothing else needs them)."""
    if not st.watch:
        return {}
    pids, out = st.watch.get("pids") or {}, {}
    for w in watchers.watchers(st.watch.get("ports") or {}):
        if not pids.get(w.name) and watchers.binary(w.name) is None:
            out[w.name] = {"url": "", "running": False, "healthy": False, "optional": True}
            out[w.name]["problem"] = watchers.missing_line(w.name)
            continue
        alive = pid_alive(pids.get(w.name, 0))
        out[w.name] = {"url": w.url, "running": alive, "healthy": bool(alive and w.healthy()), "optional": True}
    return out
