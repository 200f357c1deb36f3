"""`lepton env`: shell exports (and `--json`) of the configured stack's addresses and
credentials, from a stack record written by hand in a temporary LEPTON_HOME; the
local defaults, and a note, with no stack up. `eval` in bash sets every variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from effects.runtime import stack_state
from tests.conftest import lepton_env_vars

LEPTON = [sys.executable, "-c", "from lepton.cli import main; main()"]


def _state(home, auth: bool = True) -> dict:
    """A stack record as `lepton up` leaves it (processes: this test's own PID, alive)."""
    state = {
        "up": True,
        "db_url": None,
        "bucket": "lepton",
        "pool": "lepton",
        "sse": None,
        "auth": auth,
        "ports": {"prefect": 14200, "mlflow": 15000, "s3": 18333, "serve": 18000},
        "pids": {name: os.getpid() for name in stack_state.SERVICES},
    }
    stack_state.stack_dir(home).mkdir(parents=True, exist_ok=True)
    stack_state.write_state(home, state)
    creds = stack_state.credentials(home)
    # a password a shell would split, expand or run, were it not quoted
    creds["mlflow_password"] = 'p a$(touch pwned)\'s`x`"y"'
    stack_state.write_private(stack_state.stack_dir(home) / "credentials.json", creds)
    return state


def _env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in stack_state.USER_ENV and not k.startswith("LEPTON_")}
    env.update(lepton_env_vars(tmp_path))
    for k in ("MLFLOW_TRACKING_URI", "LEPTON_DVC_REMOTE", "LEPTON_ARTIFACT_ROOT"):
        env.pop(k)  # the defaults: what a user has
    env.update(extra)
    (tmp_path / "project").mkdir(exist_ok=True)
    return env


def _lepton(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*LEPTON, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_eval_of_lepton_env_sets_the_stack_s_variables_in_bash(tmp_path):
    home = tmp_path / "home"
    state = _state(home)
    creds = stack_state.credentials(home)
    env = _env(tmp_path)
    names = list(stack_state.USER_ENV)
    script = f'eval "$({" ".join(map(repr, LEPTON))} env)" || exit 9\n' + "".join(
        f'printf "%s=%s\\0" {n} "${n}"\n' for n in names
    )
    r = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = dict(item.split("=", 1) for item in r.stdout.split("\0")[:-1])
    assert got == {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:15000",
        "MLFLOW_TRACKING_USERNAME": creds["mlflow_username"],
        "MLFLOW_TRACKING_PASSWORD": creds["mlflow_password"],
        "PREFECT_API_URL": "http://127.0.0.1:14200/api",
        "PREFECT_API_AUTH_STRING": creds["prefect_auth_string"],
        "LEPTON_SERVE_URL": "http://127.0.0.1:18000",
        "LEPTON_SERVE_TOKEN": creds["serve_token"],
        "LEPTON_S3_ENDPOINT_URL": "http://127.0.0.1:18333",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:18333",
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert not (tmp_path / "pwned").exists()  # the password was quoted, never run
    assert "no stack" not in r.stderr and "error" not in r.stderr
    assert stack_state.user_env(home, state) == got


def test_json_is_the_same_variables_as_one_object(tmp_path):
    home = tmp_path / "home"
    state = _state(home)
    r = _lepton(["env", "--json"], _env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == stack_state.user_env(home, state)
    shell = _lepton(["env"], _env(tmp_path), tmp_path)
    assert len(shell.stdout.splitlines()) == len(json.loads(r.stdout))
    assert all(line.startswith("export ") for line in shell.stdout.splitlines())


def test_without_auth_no_credentials_of_mlflow_or_prefect(tmp_path):
    _state(tmp_path / "home", auth=False)
    out = json.loads(_lepton(["env", "--json"], _env(tmp_path), tmp_path).stdout)
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(out)
    assert out["LEPTON_SERVE_TOKEN"] and out["AWS_SECRET_ACCESS_KEY"]  # S3 keys and the serving token stay


def test_a_shell_that_says_otherwise_and_a_service_down_are_noted_on_stderr(tmp_path):
    home = tmp_path / "home"
    state = _state(home)
    state["pids"]["serve"] = 0  # never started
    stack_state.write_state(home, state)
    r = _lepton(["env"], _env(tmp_path, MLFLOW_TRACKING_URI="http://elsewhere:5000"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:15000" in r.stdout.splitlines()
    assert "the stack's serve is down" in r.stderr
    assert "this shell sets MLFLOW_TRACKING_URI otherwise" in r.stderr
    assert "elsewhere" not in r.stdout


@pytest.mark.parametrize("after_down", [False, True])
def test_with_no_stack_up_the_local_defaults_and_a_note(tmp_path, after_down):
    home = tmp_path / "home"
    if after_down:  # `lepton down` leaves the record with up: false
        stack_state.write_state(home, {**_state(home), "up": False})
    r = _lepton(["env"], _env(tmp_path), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"export MLFLOW_TRACKING_URI=sqlite:///{home / 'mlflow.db'}"]
    assert r.stderr.strip() == "no stack is up (`lepton up` starts one): these are the local defaults"
    as_json = json.loads(_lepton(["env", "--json"], _env(tmp_path), tmp_path).stdout)
    assert as_json == {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    # the user's own servers are what Lepton uses, so they are what it prints
    own = _lepton(
        ["env", "--json"],
        _env(
            tmp_path,
            MLFLOW_TRACKING_URI="http://team-mlflow:5000",
            PREFECT_API_URL="http://team-prefect:4200/api",
            LEPTON_S3_ENDPOINT_URL="http://minio:9000",
        ),
        tmp_path,
    )
    assert "used over the local defaults: MLFLOW_TRACKING_URI, PREFECT_API_URL, LEPTON_S3_ENDPOINT_URL" in own.stderr
    assert json.loads(own.stdout) == {
        "MLFLOW_TRACKING_URI": "http://team-mlflow:5000",
        "PREFECT_API_URL": "http://team-prefect:4200/api",
        "LEPTON_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }
