"""The stack's records without starting it: a configured stack with a service down
is an error naming it (never local state), which registry a command used, the
credentials each client gets, and an S3 health check that needs a real write."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading

import pytest

from effects.runtime import stack_state
from effects.runtime.procs import free_port
from tests.conftest import lepton_env_vars, run_cli


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _configured_stack(home, auth: bool = True) -> dict:
    """A stack record as `lepton up` leaves it, whose processes are all gone."""
    state = {
        "up": True,
        "db_url": None,
        "bucket": "lepton",
        "pool": "lepton",
        "sse": None,
        "auth": auth,
        "ports": {k: free_port() for k in ("prefect", "mlflow", "s3", "serve")},
        "pids": {name: _dead_pid() for name in stack_state.SERVICES},
    }
    stack_state.stack_dir(home).mkdir(parents=True, exist_ok=True)
    stack_state.write_state(home, state)
    stack_state.credentials(home)
    return state


@pytest.mark.parametrize("command", [["retrain", "--no-progress"], ["status"], ["promote", "1"]])
def test_a_dead_service_of_a_configured_stack_is_an_error_not_local_state(tmp_path, command):
    env = lepton_env_vars(tmp_path)
    for k in ("MLFLOW_TRACKING_URI", "LEPTON_DVC_REMOTE", "LEPTON_ARTIFACT_ROOT"):
        env.pop(k)  # the defaults: what a user has
    (tmp_path / "project").mkdir()
    _configured_stack(tmp_path / "home")
    r = run_cli(command, env, timeout=120)
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: the stack's seaweedfs is down") and "run `lepton up`" in lines[0]
    assert not (tmp_path / "home" / "mlflow.db").exists()  # no local registry was used
    assert "local sqlite" not in r.stdout


def test_without_a_configured_stack_local_state_is_used_and_named(tmp_path):
    env = lepton_env_vars(tmp_path)
    env.pop("MLFLOW_TRACKING_URI")
    (tmp_path / "project").mkdir()
    state = _configured_stack(tmp_path / "home")
    stack_state.write_state(tmp_path / "home", {**state, "up": False})  # as after `lepton down`
    r = run_cli(["status"], env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"registry          local sqlite {tmp_path / 'home' / 'mlflow.db'}" in r.stdout


def test_clients_get_the_credentials_of_each_service(tmp_path):
    state = _configured_stack(tmp_path)
    creds = stack_state.credentials(tmp_path)
    env = stack_state.client_env(tmp_path, state)
    assert env["MLFLOW_TRACKING_USERNAME"] == creds["mlflow_username"]
    assert env["MLFLOW_TRACKING_PASSWORD"] == creds["mlflow_password"]
    assert env["PREFECT_API_AUTH_STRING"] == creds["prefect_auth_string"]
    assert env["AWS_SECRET_ACCESS_KEY"] == creds["aws_secret_access_key"]
    assert env["LEPTON_SERVE_TOKEN"] == creds["serve_token"]
    assert stack_state.credentials(tmp_path) == creds  # generated once
    assert (stack_state.stack_dir(tmp_path) / "credentials.json").stat().st_mode & 0o777 == 0o600
    open_env = stack_state.client_env(tmp_path, {**state, "auth": False})  # `lepton up --no-auth`
    assert not {"MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(open_env)


def test_older_credentials_files_get_the_new_secrets(tmp_path):
    p = stack_state.stack_dir(tmp_path) / "credentials.json"
    p.parent.mkdir(parents=True)
    stack_state.write_private(
        p, {"aws_access_key_id": "LEPTONOLD", "aws_secret_access_key": "x" * 40, "sse_kek_passphrase": "p" * 32}
    )
    creds = stack_state.credentials(tmp_path)
    assert creds["aws_access_key_id"] == "LEPTONOLD"
    assert len(creds["mlflow_password"]) >= 24 and creds["prefect_auth_string"].startswith("lepton:")
    assert json.loads(p.read_text()) == creds


class _AnswersButRefusesWrites(http.server.BaseHTTPRequestHandler):
    """An S3 port that answers every request, and fails every write (as SeaweedFS did
    with no writable volume left: `PutObject ... InternalError`)."""

    def _answer(self, code: int) -> None:
        body = b"<Error><Code>InternalError</Code></Error>"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self._answer(403)

    def do_PUT(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(500)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


def test_the_s3_health_check_needs_a_write_read_and_delete(tmp_path):
    from lepton.stack import s3_answers, s3_roundtrip

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswersButRefusesWrites)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        creds = {"aws_access_key_id": "LEPTONX", "aws_secret_access_key": "y" * 40}
        assert s3_answers(url)  # what the old check looked at
        assert not s3_roundtrip(url, "lepton", creds)
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
