"""`lepton up` / `lepton status` without starting a stack: the typed record and its
file, the one table of service checks that both ask, and `up`'s decisions (keep,
restart, refuse) on stand-in processes (`sleep`, in sessions of their own) and a
stand-in HTTP server on 127.0.0.1. The real stack is tests/live and tests/faults."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
from dataclasses import replace

import pytest

from effects.runtime import stack_state
from effects.runtime.procs import free_port
from lepton import stack
from lepton.stack import SERVICES, ServiceCheck, StackState
from lepton_core.errors import LeptonError

RECORD = {
    "up": True,
    "db_url": None,
    "bucket": "lepton",
    "pool": "lepton-pool",
    "sse": "AES256",
    "auth": True,
    "ports": {"prefect": 14200, "mlflow": 15000, "s3": 18333, "serve": 18000},
    "pids": {"seaweedfs": 11, "mlflow": 12, "prefect": 13, "worker": 14, "serve": 15},
    "internal": {"master": 19333},
}


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from effects.runtime.settings import get_settings

    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    for k in ("LEPTON_S3_SSE", "LEPTON_DB_URL", "LEPTON_S3_BUCKET", "LEPTON_WORK_POOL"):
        monkeypatch.delenv(k, raising=False)
    s = get_settings()
    stack_state.stack_dir(s.home).mkdir(parents=True)
    return s


@pytest.fixture
def sleeper():
    """Processes that stand in for the stack's services: alive, each the leader of its
    own process group (so a stop of one, were it to come, ends only it)."""
    procs: list[subprocess.Popen] = []

    def start() -> int:
        procs.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        return procs[-1].pid

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _ports() -> dict[str, int]:
    return {k: free_port() for k in ("prefect", "mlflow", "s3", "serve")}


def test_the_record_reads_and_writes_as_it_always_was(settings):
    st = StackState.from_record(RECORD)
    assert st.auth is True and st.pid("worker") == 14 and st.pid("nothing") == 0
    assert st.record() == RECORD
    st.write(settings.home)
    assert json.loads(stack_state.state_path(settings.home).read_text()) == RECORD
    assert StackState.read(settings.home) == st
    # a record from an older version: no auth (judged per case by `up`), a key kept as it is
    old = {k: v for k, v in RECORD.items() if k not in ("auth", "internal")} | {"legacy": [1]}
    st = StackState.from_record(old)
    assert st.auth is None and st.internal is None and st.record() == old
    assert StackState.read(settings.home / "nowhere") is None


class _Stand(http.server.BaseHTTPRequestHandler):
    """MLflow's, Prefect's and the model server's health answers, an online worker, and
    an S3 that answers but refuses every write."""

    seen_auth: list[str] = []

    def _answer(self, code: int, body: object = None) -> None:
        data = json.dumps(body if body is not None else {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._answer(200 if self.path in ("/health", "/api/health", "/healthz") else 403)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/work_pools/lepton-pool/workers/filter":
            _Stand.seen_auth.append(self.headers.get("Authorization", ""))
            self._answer(200, [{"status": "ONLINE"}])
        else:
            self._answer(404)

    def do_PUT(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(500)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stand)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    _Stand.seen_auth = []
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_status_reports_each_service_by_the_table(settings, sleeper, stand_server):
    port = stand_server
    pids = {name: sleeper() for name in SERVICES}
    pids["mlflow"] = _dead_pid()
    StackState.from_record(
        {**RECORD, "ports": dict.fromkeys(("prefect", "mlflow", "s3", "serve"), port), "pids": pids}
    ).write(settings.home)
    url = f"http://127.0.0.1:{port}"
    assert stack.health(settings) == {
        # S3 answers, but a write does not go through: not healthy
        "seaweedfs": {"url": url, "running": True, "healthy": False},
        "mlflow": {"url": url, "running": False, "healthy": False},  # its process is gone
        "prefect": {"url": url, "running": True, "healthy": True},
        "worker": {"url": "pool lepton-pool", "running": True, "healthy": True},
        "serve": {"url": url, "running": True, "healthy": True},
    }
    assert _Stand.seen_auth and _Stand.seen_auth[0].startswith("Basic ")  # the worker check authenticates
    assert stack.health(replace(settings, home=settings.home / "none")) == {}


def test_the_table_names_every_service_in_order(settings):
    st = StackState.from_record(RECORD)
    checks = stack.service_checks(settings.home, st)
    assert [c.name for c in checks] == list(SERVICES)
    assert [c.where for c in checks] == [
        "http://127.0.0.1:18333",
        "http://127.0.0.1:15000",
        "http://127.0.0.1:14200",
        "pool lepton-pool",
        "http://127.0.0.1:18000",
    ]


class _Table:
    """Stands in for `service_checks` (every service healthy) and counts its questions."""

    def __init__(self):
        self.asked: list[str] = []

    def __call__(self, home, state):
        def check(name):
            return lambda: self.asked.append(name) or True

        return [ServiceCheck(name, f"where {name}", check(name)) for name in SERVICES]


def _no_start(monkeypatch, **allowed) -> None:
    """No real server starts in these tests: each start is refused unless stood in for
    (and no store is there to hold a sentinel: its check is stood in for too)."""
    monkeypatch.setattr(stack._Starter, "check_data", lambda self, accept_loss: None)
    # the watchers: tests/platform/test_watchers.py
    monkeypatch.setattr(stack._Starter, "watch", lambda self, wait=True: None)
    for name in SERVICES:
        fn = allowed.get(name) or (lambda self, name=name: pytest.fail(f"{name} was started"))
        monkeypatch.setattr(stack._Starter, name, fn)


def test_up_and_status_ask_the_same_checks_and_up_keeps_what_is_healthy(settings, sleeper, monkeypatch):
    table = _Table()
    monkeypatch.setattr(stack, "service_checks", table)
    _no_start(monkeypatch)
    pids = {name: sleeper() for name in SERVICES}
    ports = _ports()
    StackState.from_record({**RECORD, "sse": None, "ports": ports, "pids": pids}).write(settings.home)
    said: list[str] = []
    state = stack.up(settings, None, {}, echo=said.append)
    assert said == ["running: seaweedfs, mlflow, prefect, worker, serve (kept as they are)"]
    assert table.asked == list(SERVICES)
    assert state == {**RECORD, "sse": None, "ports": ports, "pids": pids, "up": True}  # as `lepton up` prints it
    assert json.loads(stack_state.state_path(settings.home).read_text()) == state
    table.asked.clear()
    assert all(h["healthy"] and h["running"] for h in stack.health(settings).values())
    assert table.asked == list(SERVICES)  # `lepton status`: the same table


def test_up_restarts_only_the_dead_service_and_waits_for_it(settings, sleeper, monkeypatch):
    table = _Table()
    monkeypatch.setattr(stack, "service_checks", table)
    new: list[int] = []

    def serve(self):
        self.echo(f"starting the model server ({self.u.serve}) ...")
        new.append(sleeper())
        return new[-1]

    _no_start(monkeypatch, serve=serve)
    pids = {name: sleeper() for name in SERVICES}
    pids["serve"] = _dead_pid()
    ports = _ports()
    StackState.from_record({**RECORD, "ports": ports, "pids": pids}).write(settings.home)
    said: list[str] = []
    state = stack.up(settings, None, {}, echo=said.append)
    assert said == [
        "running: seaweedfs, mlflow, prefect, worker (kept as they are)",
        "serve is down: starting it again",
        f"starting the model server (http://127.0.0.1:{ports['serve']}) ...",
        "started again: serve; kept: seaweedfs, mlflow, prefect, worker",
    ]
    assert table.asked == ["seaweedfs", "mlflow", "prefect", "worker", "serve"]  # the last: the wait after the start
    assert state["pids"] == {**pids, "serve": new[0]} and state["up"] is True


def test_up_refuses_what_it_cannot_do_before_starting_anything(settings, sleeper, monkeypatch):
    _no_start(monkeypatch)

    def refused(ports=None, **kw) -> str:
        with pytest.raises(LeptonError) as e:
            stack.up(settings, kw.pop("db_url", None), ports or {}, echo=lambda m: None, **kw)
        return str(e.value)

    assert refused({"prefect": 5000, "mlflow": 5000}) == (
        "port 5000 is given to more than one service (prefect, mlflow); give each its own with "
        "--prefect-port, --mlflow-port, --s3-port and --serve-port"
    )
    assert refused(_ports(), sse="rot13") == (
        "server-side encryption must be one of AES256, aws:kms or none, not 'rot13'"
    )
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert refused({**_ports(), "mlflow": taken}) == (
            f"port {taken} (mlflow) is already in use; choose another with --mlflow-port"
        )

    # a service of the last stack still runs: what is asked must be what it runs with
    ports = _ports()
    StackState.from_record(
        {
            **RECORD,
            "sse": None,
            "auth": False,
            "ports": ports,
            "pids": {**dict.fromkeys(SERVICES, 0), "mlflow": sleeper()},
        }
    ).write(settings.home)
    assert refused(ports, sse="AES256") == (
        "the stack is already running with another encryption setting; `lepton down` first"
    )
    assert refused(ports, auth=True) == (
        "the stack is already running with another authentication setting; `lepton down` first"
    )
    assert (
        refused({**ports, "serve": free_port()}) == "the stack is already running on other ports; `lepton down` first"
    )
    assert refused(ports, db_url="postgresql://u@127.0.0.1:5432/other") == (
        "the stack is already running on another database; `lepton down` first"
    )


def test_down_stops_by_pid_and_keeps_the_record(settings, sleeper):
    pids = {name: sleeper() for name in SERVICES}
    pids["worker"] = _dead_pid()
    StackState.from_record({**RECORD, "pids": pids, "legacy": 1}).write(settings.home)
    assert stack.down(settings) == ["serve", "prefect", "mlflow", "seaweedfs"]
    assert json.loads(stack_state.state_path(settings.home).read_text()) == {
        **RECORD,
        "pids": pids,
        "legacy": 1,
        "up": False,
    }
    assert stack.down(replace(settings, home=settings.home / "none")) == []


def test_a_store_that_lost_its_data_stops_up_and_fails_status(settings, sleeper, monkeypatch):
    """The sentinel's verdict (lepton.weed.data_problem, stood in for here; the real
    store is tests/faults -k lost_data): `status` marks SeaweedFS unhealthy with the
    problem, `up` stops with it and starts nothing, `--accept-data-loss` writes a new
    sentinel; a first `up` writes one; the token is kept in the record."""
    from lepton import weed

    table = _Table()
    monkeypatch.setattr(stack, "service_checks", table)
    for name in SERVICES:
        monkeypatch.setattr(stack._Starter, name, lambda self, name=name: pytest.fail(f"{name} was started"))
    # the watchers: tests/platform/test_watchers.py
    monkeypatch.setattr(stack._Starter, "watch", lambda self, wait=True: None)
    verdict: list[str | None] = [weed.DATA_MISSING]
    written: list[str] = []
    monkeypatch.setattr(weed, "data_problem", lambda c, bucket, token: verdict[0])
    monkeypatch.setattr(weed, "write_sentinel", lambda c, bucket, token: written.append(token))
    pids = {name: sleeper() for name in SERVICES}
    record = {**RECORD, "ports": _ports(), "pids": pids, "sentinels": {"lepton": "t0", "other": "t9"}}
    StackState.from_record(record).write(settings.home)
    h = stack.health(settings)
    assert h["seaweedfs"]["healthy"] is False and h["seaweedfs"]["problem"] == "data missing (sentinel gone)"
    assert all(h[n]["healthy"] for n in SERVICES if n != "seaweedfs")
    with pytest.raises(LeptonError, match=r"^seaweedfs: data missing \(sentinel gone\): .*--accept-data-loss"):
        stack.up(settings, None, {}, echo=lambda m: None)
    assert written == [] and StackState.read(settings.home).sentinels == {"lepton": "t0", "other": "t9"}
    said: list[str] = []
    stack.up(settings, None, {}, echo=said.append, accept_data_loss=True)
    assert "seaweedfs: data missing (sentinel gone); going on with what is left (--accept-data-loss)" in said
    assert len(written) == 1 and StackState.read(settings.home).sentinels == {"lepton": written[0], "other": "t9"}
    assert written[0] != "t0"
    verdict[0] = None
    assert stack.health(settings)["seaweedfs"] == {"url": "where seaweedfs", "running": True, "healthy": True}
    # a record without a sentinel for its bucket (a first `up`, another bucket, or one from
    # before they were kept): one is written for it, the other buckets' are kept
    StackState.from_record({**RECORD, "ports": _ports(), "pids": pids, "sentinels": {"other": "t9"}}).write(
        settings.home
    )
    stack.up(settings, None, {}, echo=lambda m: None)
    assert len(written) == 2 and StackState.read(settings.home).sentinels == {"other": "t9", "lepton": written[1]}
