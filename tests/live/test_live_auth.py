"""Closed to strangers: under `lepton up` (authentication on by default) every service
refuses a request without credentials, and the stock clients work with the ones
in `<home>/stack/credentials.json` (0600), handed to Lepton's own processes through
`effects.runtime.stack_state.client_env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _status(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.fixture(scope="module")
def live(live_sqlite):
    return live_sqlite


def test_secrets_are_kept_private_and_generated_once(live):
    p = live.home / "stack" / "credentials.json"
    assert p.stat().st_mode & 0o777 == 0o600
    c = json.loads(p.read_text())
    for key in (
        "aws_secret_access_key",
        "mlflow_password",
        "prefect_auth_string",
        "serve_token",
        "weed_jwt_key",
        "weed_filer_jwt_key",
    ):
        assert len(c[key]) >= 24, key
    assert live.state()["auth"] is True
    # no secret on a process's command line (anyone may read /proc/*/cmdline)
    for name, pid in live.state()["pids"].items():
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        for key in ("aws_secret_access_key", "mlflow_password", "prefect_auth_string", "serve_token", "weed_jwt_key"):
            assert c[key] not in cmd and c[key].split(":")[-1] not in cmd, (name, key)


def test_s3_refuses_unsigned_requests_and_works_signed(live):
    assert _status(f"{live.s3}/lepton/") == 403
    assert _status(f"{live.s3}/lepton/stranger.txt", "PUT", b"x") == 403
    s3 = live.s3_client()
    s3.put_object(Bucket="lepton", Key="auth-probe", Body=b"signed")
    assert s3.get_object(Bucket="lepton", Key="auth-probe")["Body"].read() == b"signed"
    s3.delete_object(Bucket="lepton", Key="auth-probe")


def test_the_filer_and_volume_servers_refuse_requests_without_a_jwt(live):
    """SeaweedFS's own HTTP ports (bound to 127.0.0.1, so reachable by every local
    user) take only requests signed with the stack's JWT keys: no reading, listing,
    writing or deleting the bucket behind S3's back."""
    s3 = live.s3_client()
    s3.put_object(Bucket="lepton", Key="filer-probe", Body=b"secret bytes")
    filer = f"http://127.0.0.1:{live.state()['internal']['filer']}"
    try:
        assert _status(f"{filer}/buckets/lepton/filer-probe") == 401
        assert _status(f"{filer}/buckets/lepton/") == 401
        assert _status(f"{filer}/buckets/lepton/stranger.txt", "PUT", b"x") == 401
        assert _status(f"{filer}/buckets/lepton/stranger.txt", "POST", b"x") == 401
        assert _status(f"{filer}/buckets/lepton/filer-probe", "DELETE") == 401
        assert s3.get_object(Bucket="lepton", Key="filer-probe")["Body"].read() == b"secret bytes"
        # the volume server: a file id from the master is not enough to write or read
        master = f"http://127.0.0.1:{live.state()['internal']['master']}"
        with urllib.request.urlopen(f"{master}/dir/assign", timeout=10) as r:
            a = json.loads(r.read())
        assert "auth" not in a
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--b--\r\n'
        assert (
            _status(f"http://{a['url']}/{a['fid']}", "POST", body, {"Content-Type": "multipart/form-data; boundary=b"})
            == 401
        )
        assert _status(f"http://{a['url']}/{a['fid']}") == 401
    finally:
        s3.delete_object(Bucket="lepton", Key="filer-probe")


def test_mlflow_refuses_without_credentials_and_works_with_them(live, monkeypatch):
    assert _status(f"{live.mlflow}/health") == 200  # probes need no credentials
    assert _status(f"{live.mlflow}/api/2.0/mlflow/experiments/search?max_results=5") == 401
    assert (
        _status(
            f"{live.mlflow}/api/2.0/mlflow/experiments/create",
            "POST",
            b'{"name": "stranger"}',
            {"Content-Type": "application/json"},
        )
        == 401
    )
    assert _status(f"{live.mlflow}/api/2.0/mlflow-artifacts/artifacts/x", "PUT", b"x") == 401
    assert _status(f"{live.mlflow}/") == 401  # the UI asks the browser to sign in
    wrong = {"Authorization": "Basic " + __import__("base64").b64encode(b"lepton:wrong").decode()}
    assert _status(f"{live.mlflow}/api/2.0/mlflow/experiments/search?max_results=5", headers=wrong) == 401

    from mlflow import MlflowClient

    for k, v in live.client_env.items():
        monkeypatch.setenv(k, v)
    c = MlflowClient(tracking_uri=live.mlflow)
    exp = c.create_experiment("auth-probe")
    assert c.get_experiment(exp).name == "auth-probe"
    c.delete_experiment(exp)


def test_prefect_refuses_without_the_auth_string_and_the_cli_works_with_it(live):
    api = live.prefect_api
    assert _status(f"{api}/health") == 200
    assert (
        _status(
            f"{api}/variables/", "POST", b'{"name": "stranger", "value": "x"}', {"Content-Type": "application/json"}
        )
        == 401
    )
    assert _status(f"{api}/flow_runs/filter", "POST", b"{}", {"Content-Type": "application/json"}) == 401
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, **live.env, **live.client_env}
    r = subprocess.run(
        [prefect, "variable", "set", "auth_probe", "42", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = subprocess.run([prefect, "variable", "get", "auth_probe"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "42" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    env.pop("PREFECT_API_AUTH_STRING")
    r = subprocess.run([prefect, "variable", "get", "auth_probe"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    subprocess.run(
        [prefect, "variable", "unset", "auth_probe", "--yes"],
        env={**env, **live.client_env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_model_server_refuses_without_its_token(live):
    assert _status(f"{live.serve}/healthz") == 200
    assert _status(f"{live.serve}/v1/model") == 401
    assert _status(f"{live.serve}/v1/model", headers={"Authorization": "Bearer wrong"}) == 401
    assert _status(f"{live.serve}/v1/model", headers={"Authorization": f"Bearer {live.serve_token}"}) != 401


def test_lepton_commands_use_the_credentials(live):
    """`lepton status` (Lepton's own client) reaches every service through the
    credentials `client_env` hands it, and says which registry it used."""
    r = live.cli("status", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"registry          {live.mlflow} (lepton up)" in r.stdout
    assert "healthy" in r.stdout and "down" not in r.stdout
