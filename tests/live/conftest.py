"""A real live stack (`lepton up`) per backend: SQLite files, and PostgreSQL at
127.0.0.1:5432 with fresh databases for this run. Free ports, a temporary home,
stopped with `lepton down` at the end."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from effects.runtime.procs import free_port
from tests.conftest import ROOT, run_cli
from tests.live.receiver import Receiver

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


class Live:
    def __init__(self, base: Path, backend: str, sse: str | None = None, auth: bool = True):
        self.base, self.backend, self.sse, self.auth = base, backend, sse, auth
        self.receiver: Receiver | None = None  # the alert webhook, when the stack has one
        self.deployed: tuple[dict, dict] | None = None  # deploy_and_run_retrain's deployment and run
        self.home = base / "home"
        self.ports = {"prefect": free_port(), "mlflow": free_port(), "s3": free_port(), "serve": free_port()}
        self.db = f"{PG_SERVER}/lepton_t{uuid.uuid4().hex[:10]}" if backend == "postgresql" else None
        self.env = {
            "LEPTON_HOME": str(self.home),
            "LEPTON_PROJECT_DIR": str(ROOT),  # deployments pull the flows from this checkout
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            # Prefect's scheduler looks for deployments to schedule every 60 s; every 5 s
            # here, so the test of the schedules does not wait a minute.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        }

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def serve(self) -> str:
        return f"http://127.0.0.1:{self.ports['serve']}"

    @property
    def serve_token(self) -> str:
        import json

        return json.loads((self.home / "stack" / "credentials.json").read_text())["serve_token"]

    @property
    def s3(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def cli(self, *args: str, timeout: float = 600):
        return run_cli(list(args), self.env, timeout=timeout)

    def up(self, *extra: str, check: bool = True):
        args = [
            "up",
            "--prefect-port",
            str(self.ports["prefect"]),
            "--mlflow-port",
            str(self.ports["mlflow"]),
            "--s3-port",
            str(self.ports["s3"]),
            "--serve-port",
            str(self.ports["serve"]),
        ]
        if self.db:
            args += ["--db", self.db]
        if self.sse and not (self.home / "stack" / "stack.json").exists():
            args += ["--sse", self.sse]  # a restart keeps it without being told again
        if not self.auth:
            args += ["--no-auth"]
        r = self.cli(*args, *extra)
        if check:
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        return r

    def down(self):
        return self.cli("down", timeout=180)

    def credentials(self) -> dict:
        return json.loads((self.home / "stack" / "credentials.json").read_text())

    # -- credentials (authentication is on unless the stack was started with --no-auth)
    def auth_header(self, url: str) -> dict[str, str]:
        """What a stock HTTP client sends to the service behind `url`."""
        import base64

        if not self.auth:
            return {}
        c = self.credentials()
        if url.startswith(self.mlflow):
            secret = f"{c['mlflow_username']}:{c['mlflow_password']}"
        elif url.startswith(self.prefect_api.removesuffix("/api")):
            secret = c["prefect_auth_string"]
        else:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}

    @property
    def client_env(self) -> dict[str, str]:
        """The environment of a stock client (mlflow, prefect) that uses the stack."""
        c = self.credentials()
        env = {"MLFLOW_TRACKING_URI": self.mlflow, "PREFECT_API_URL": self.prefect_api}
        if self.auth:
            env.update(
                {
                    "MLFLOW_TRACKING_USERNAME": c["mlflow_username"],
                    "MLFLOW_TRACKING_PASSWORD": c["mlflow_password"],
                    "PREFECT_API_AUTH_STRING": c["prefect_auth_string"],
                }
            )
        return env

    def browser_headers(self, url: str) -> dict[str, str]:
        """What a browser signed in to the stack's MLflow sends with every request to
        it (the basic-auth answer); the Prefect dashboard keeps its own sign-in."""
        return self.auth_header(url) if url.startswith(self.mlflow) else {}

    def state(self) -> dict:
        return json.loads((self.home / "stack" / "stack.json").read_text())

    def s3_client(self):
        import boto3

        c = self.credentials()
        return boto3.client(
            "s3",
            endpoint_url=self.s3,
            region_name="us-east-1",
            aws_access_key_id=c["aws_access_key_id"],
            aws_secret_access_key=c["aws_secret_access_key"],
        )

    def batch_to_s3(self, out: Path, prefix: str, *drift: str) -> None:
        """A batch made by `lepton simulate-drift <drift> --out <out>`, uploaded
        under s3://lepton/<prefix>/ (what a producer puts in an S3 inbox)."""
        r = self.cli("simulate-drift", *drift, "--out", str(out))
        assert r.returncode == 0, r.stderr[-2000:]
        s3 = self.s3_client()
        for f in out.rglob("*.png"):
            s3.upload_file(str(f), "lepton", f"{prefix}/{f.relative_to(out)}")

    # -- REST helpers (what the dashboards themselves call)
    # Prefect answers 503 for errors it documents as retryable (on SQLite, a
    # "database is locked" while its scheduler writes runs); its own client retries
    # those, so these helpers do as well, a few times with backoff. Anything else
    # fails the test at once.
    RETRYABLE = (429, 502, 503)

    def _request(self, req: urllib.request.Request | str):
        import urllib.error

        if isinstance(req, str):
            req = urllib.request.Request(req)
        for k, v in self.auth_header(req.full_url).items():
            req.add_header(k, v)
        for attempt in range(6):
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                if e.code not in self.RETRYABLE or attempt == 5:
                    raise
                time.sleep(0.5 * 2**attempt)

    def get(self, url: str) -> dict:
        return self._request(url)

    def post(self, url: str, body: dict) -> dict | list:
        return self._request(
            urllib.request.Request(
                url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
            )
        )

    def wait_flow_run(self, flow_run_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.get(f"{self.prefect_api}/flow_runs/{flow_run_id}")
            if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                if fr["state"]["type"] != "COMPLETED":  # say why, in the assertion that follows
                    logs = self.post(
                        f"{self.prefect_api}/logs/filter",
                        {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
                    )
                    fr["state"]["logs"] = "\n".join(entry["message"] for entry in logs)[-6000:]
                return fr
            time.sleep(1)
        raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s")


def _drop_databases(db: str) -> None:
    import psycopg2
    from psycopg2 import sql

    base = db.rsplit("/", 1)[1]
    conn = psycopg2.connect(f"{PG_SERVER}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for suffix in ("mlflow", "prefect", "lepton"):  # lepton: the monitor's shared state
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(f"{base}_{suffix}")))
    conn.close()


def _running_stack(tmp_path_factory, backend: str, sse: str | None = None, receiver: Receiver | None = None):
    stack = Live(tmp_path_factory.mktemp(f"live-{backend}"), backend, sse)
    stack.receiver = receiver
    try:
        stack.up(*(["--alert-webhook", receiver.url] if receiver else []))
        yield stack
    finally:
        stack.down()
        if stack.db:
            _drop_databases(stack.db)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, tmp_path_factory):
    """The stack on each backend (for what must hold on both). The SQLite one asks
    for server-side encryption on every write, the PostgreSQL one does not."""
    yield from _running_stack(tmp_path_factory, request.param, sse="AES256" if request.param == "sqlite" else None)


@pytest.fixture(scope="package")
def receiver():
    """The webhook the package's SQLite stack sends its notifications to."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="package")
def live_sqlite(tmp_path_factory, receiver):
    """The stack on SQLite only, one for the package (authentication, browser,
    drift-loop and alerting tests: backend-independent), with `receiver` as its
    alert webhook (`lepton up --alert-webhook`)."""
    yield from _running_stack(tmp_path_factory, "sqlite", receiver=receiver)


FAST_TRAIN = {"epochs": 4, "width": 16}


def deploy_and_run_retrain(live: Live) -> tuple[dict, dict]:
    """`lepton deploy`, then a retrain started the way the dashboard's Run button does;
    once per stack (the modules that share a stack share its first champion)."""
    if live.deployed is None:
        live.deployed = _deploy_and_run_retrain(live)
    return live.deployed


def _deploy_and_run_retrain(live: Live) -> tuple[dict, dict]:
    r = live.cli("deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    dep = live.get(f"{live.prefect_api}/deployments/name/retrain/lepton")
    # The dashboard's "Run" button posts the form's parameters to this endpoint.
    fr = live.post(f"{live.prefect_api}/deployments/{dep['id']}/create_flow_run", {"parameters": {"train": FAST_TRAIN}})
    done = live.wait_flow_run(fr["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"].get("logs") or done["state"]
    return dep, done
