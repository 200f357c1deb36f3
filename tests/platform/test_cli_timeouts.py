"""Answers in bounded time: the real `lepton` command against a service that does not
answer (a closed port, or a port that accepts and never replies) ends within seconds
with exit code 1 and one `error:` line naming the service, and MLflow's and
Prefect's own clients give up in bounded time (effects/runtime/settings.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from effects.runtime import settings as settings_mod
from tests.conftest import lepton_env_vars, run_cli

pytestmark = pytest.mark.faults

BOUNDED = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "PREFECT_API_REQUEST_TIMEOUT",
    "PREFECT_CLIENT_MAX_RETRIES",
    "LEPTON_SERVICE_TIMEOUT",
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def silent_port():
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture()
def env(tmp_path, monkeypatch) -> dict:
    (tmp_path / "project").mkdir()
    for k in BOUNDED:  # the user's own settings would win over the bounded defaults
        monkeypatch.delenv(k, raising=False)
    return lepton_env_vars(tmp_path)


def answer(args, env) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = run_cli(args, env, timeout=60)
    return r, time.monotonic() - t0


def one_error(r: subprocess.CompletedProcess) -> str:
    """Exactly one `error:` line in all the output (stdout and stderr), no traceback."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, (r.stdout[-2000:], r.stderr[-2000:])
    return errors[0]


def test_status_with_mlflow_on_a_closed_port(env):
    port = closed_port()
    r, took = answer(["status"], {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert took < 10, took  # was about 120 s of silence (MLflow's 7 retries with backoff)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    line = one_error(r)
    assert f"the MLflow tracking server at http://127.0.0.1:{port} does not answer: connection refused" in line
    assert "MLFLOW_TRACKING_URI" in line
    assert "registered model" not in r.stdout  # never a quiet "@champion none"


def test_status_with_mlflow_that_accepts_and_never_answers(env, silent_port):
    r, took = answer(["status", "--json"], {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{silent_port}"})
    assert took < 10, took
    assert r.returncode == 1 and r.stdout == ""
    assert "the MLflow tracking server" in one_error(r) and "no answer within 3 s" in r.stderr


@pytest.mark.parametrize("command", [["deploy"], ["retrain", "--no-progress"], ["promote", "1"]])
def test_a_command_that_needs_prefect_with_prefect_on_a_closed_port(env, command):
    port = closed_port()
    r, took = answer(command, {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    assert took < 10, took
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    line = one_error(r)
    assert f"the Prefect API at http://127.0.0.1:{port}/api does not answer: connection refused" in line
    assert "PREFECT_API_URL" in line


def test_deploy_with_prefect_that_accepts_and_never_answers(env, silent_port):
    r, took = answer(["deploy"], {**env, "PREFECT_API_URL": f"http://127.0.0.1:{silent_port}/api"})
    assert took < 10, took
    assert r.returncode == 1 and "the Prefect API" in one_error(r)


def test_predict_with_s3_on_a_closed_port(env, tmp_path):
    port = closed_port()
    (tmp_path / "batch").mkdir()
    r, took = answer(
        ["predict", str(tmp_path / "batch"), "--out", str(tmp_path / "p.parquet")],
        {**env, "LEPTON_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
    )
    assert took < 10, took
    assert r.returncode == 1 and f"S3 at http://127.0.0.1:{port} does not answer" in one_error(r)


# ---------------------------------------------------------------- the clients' own bounds
@pytest.fixture()
def restore_environ():
    saved = dict(os.environ)
    for k in BOUNDED:
        os.environ.pop(k, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_configure_environment_bounds_mlflow_and_prefect_unless_the_user_set_them(tmp_path, restore_environ):
    s = settings_mod.get_settings()
    home = tmp_path / "home"
    s = settings_mod.Settings(**{**s.__dict__, "home": home})
    settings_mod.configure_environment(s, use_stack=False)
    assert {k: os.environ[k] for k in BOUNDED[:-1]} == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
        "PREFECT_API_REQUEST_TIMEOUT": "60",
        "PREFECT_CLIENT_MAX_RETRIES": "3",
    }
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 3 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 60

    for k in BOUNDED:
        os.environ.pop(k, None)
    os.environ.update(LEPTON_SERVICE_TIMEOUT="300", MLFLOW_HTTP_REQUEST_MAX_RETRIES="7")
    settings_mod.configure_environment(s, use_stack=False, timeout=10)  # `lepton status`: 10 s at most
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # the user's
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == os.environ["PREFECT_API_REQUEST_TIMEOUT"] == "10"

    for k in BOUNDED:
        os.environ.pop(k, None)
    settings_mod.configure_environment(s, use_stack=False, bounded=False)  # `lepton up`: the stack's processes
    assert not set(BOUNDED) & set(os.environ)


@pytest.mark.parametrize("bad", ["0", "-5", "1.5", "soon"])
def test_a_bad_service_timeout_is_one_line(env, bad):
    r = run_cli(["status"], {**env, "LEPTON_SERVICE_TIMEOUT": bad}, timeout=60)
    assert r.returncode == 2 and "LEPTON_SERVICE_TIMEOUT" in one_error(r)


def test_mlflow_s_own_client_gives_up_in_bounded_time(env):
    """Past the first check (a server that goes away mid-command), MLflow's client
    itself gives up within seconds: 4 tries about 0, 2 and 4 s apart."""
    port = closed_port()
    code = textwrap.dedent("""
        import time
        from effects.runtime.settings import configure_environment
        s = configure_environment()
        from effects.tracking import runs
        c = runs.client(s)
        t0 = time.monotonic()
        try:
            c.search_experiments()
        except Exception as e:
            print(type(e).__name__, round(time.monotonic() - t0, 1))
    """)
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    name, took = r.stdout.split()
    assert name == "MlflowException", r.stdout + r.stderr[-2000:]
    assert float(took) < 15, took  # MLflow's defaults: about 2 minutes
