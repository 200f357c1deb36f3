"""Closed to strangers: under `lepton up` (authentication on by default) every service
refuses a request without credentials, and the stock clients work with the ones
in `<home>/stack/credentials.json` (0600), handed to Lepton's own processes through
`effects.runtime.stack_state.client_env`."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _status(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict | None = None,
    context: ssl.SSLContext | None = None,
) -> int:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=15, context=context) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _tls(live, with_cert: bool = True) -> ssl.SSLContext:
    """A client that trusts the stack's CA and (`with_cert`) shows the stack's client
    certificate: what SeaweedFS's own ports ask for under `lepton up`."""
    d = live.home / "stack" / "tls"
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))
    return ctx


def _refused_without_certificate(url: str, live) -> str:
    """What a TLS client without a certificate gets: the handshake fails."""
    try:
        urllib.request.urlopen(url, timeout=15, context=_tls(live, with_cert=False)).close()
    except urllib.error.URLError as e:
        assert isinstance(e.reason, ssl.SSLError) or "certificate" in str(e.reason).lower(), e
        return str(e.reason)
    except (ssl.SSLError, ConnectionError) as e:
        return str(e)
    raise AssertionError(f"{url} answered a client without a certificate")


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
    """Behind the certificate, SeaweedFS's own HTTP ports still take only requests
    signed with the stack's JWT keys: a client with the stack's certificate but no
    JWT reads, lists, writes and deletes nothing behind S3's back."""
    s3 = live.s3_client()
    s3.put_object(Bucket="lepton", Key="filer-probe", Body=b"secret bytes")
    filer = f"https://127.0.0.1:{live.state()['internal']['filer']}"
    tls = _tls(live)
    try:
        assert _status(f"{filer}/buckets/lepton/filer-probe", context=tls) == 401
        assert _status(f"{filer}/buckets/lepton/", context=tls) == 401
        assert _status(f"{filer}/buckets/lepton/stranger.txt", "PUT", b"x", context=tls) == 401
        assert _status(f"{filer}/buckets/lepton/stranger.txt", "POST", b"x", context=tls) == 401
        assert _status(f"{filer}/buckets/lepton/filer-probe", "DELETE", context=tls) == 401
        assert s3.get_object(Bucket="lepton", Key="filer-probe")["Body"].read() == b"secret bytes"
        # the volume server: a file id from the master is not enough to write or read
        master = f"https://127.0.0.1:{live.state()['internal']['master']}"
        with urllib.request.urlopen(f"{master}/dir/assign", timeout=10, context=tls) as r:
            a = json.loads(r.read())
        assert "auth" not in a
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nx\r\n--b--\r\n'
        multipart = {"Content-Type": "multipart/form-data; boundary=b"}
        assert _status(f"http://{a['url']}/{a['fid']}", "POST", body, multipart) == 401
        assert _status(f"http://{a['url']}/{a['fid']}") == 401
        assert _status(f"http://{a['url']}/{a['fid']}", "DELETE") == 401
    finally:
        s3.delete_object(Bucket="lepton", Key="filer-probe")


def test_seaweedfs_http_ports_refuse_a_client_without_the_stacks_certificate(live):
    """The master's and the filer's HTTP ports: plain HTTP gets a 400 (they speak only
    TLS), and TLS without a certificate signed by the stack's CA is refused in the
    handshake; so a stranger's `/col/delete` deletes nothing and `/dir/assign` hands
    out no file id. The stack's own certificate gets answers. (The volume server's HTTP
    port takes no TLS, see lepton/weed.py: its reads, writes and deletes want the JWT,
    test above; it answers /status and /healthz.)"""
    i = live.state()["internal"]
    s3 = live.s3_client()
    s3.put_object(Bucket="lepton", Key="kept-probe", Body=b"still here")
    master, volume, filer = (f"127.0.0.1:{i[k]}" for k in ("master", "volume", "filer"))
    try:
        for url in (
            f"{master}/col/delete?collection=lepton",
            f"{master}/dir/assign",
            f"{master}/vol/grow?collection=lepton&count=1",
            f"{master}/dir/status",
            f"{filer}/buckets/lepton/",
            f"{filer}/",
        ):
            assert _status(f"http://{url}") == 400, url  # "Client sent an HTTP request to an HTTPS server"
            _refused_without_certificate(f"https://{url}", live)
        # the same ports with the stack's certificate: they answer (the JWT is checked after)
        with urllib.request.urlopen(f"https://{master}/dir/status", timeout=15, context=_tls(live)) as r:
            assert "Topology" in json.loads(r.read())
        assert _status(f"https://{filer}/buckets/lepton/kept-probe", context=_tls(live)) == 401  # then its JWT
        assert _status(f"http://{volume}/status") == 200  # the volume server: plain HTTP, JWT on data
        # nothing was deleted: the object reads back, the sentinel check passes
        assert s3.get_object(Bucket="lepton", Key="kept-probe")["Body"].read() == b"still here"
        r = live.cli("status", timeout=120)
        assert r.returncode == 0 and "seaweedfs         healthy" in r.stdout, r.stdout + r.stderr[-2000:]
    finally:
        s3.delete_object(Bucket="lepton", Key="kept-probe")


# One harmless method of each of SeaweedFS's gRPC services (an empty request is a
# valid protobuf message); the S3 gateway's is unknown to it, so its answer is
# UNIMPLEMENTED, which still proves the connection was accepted.
GRPC_PROBES = {
    "master_grpc": "/master_pb.Seaweed/GetMasterConfiguration",
    "volume_grpc": "/volume_server_pb.VolumeServer/VolumeServerStatus",
    "filer_grpc": "/filer_pb.SeaweedFiler/GetFilerConfiguration",
    "s3_grpc": "/s3_pb.SeaweedS3/NoSuchMethod",
}


def _grpc_call(channel, method: str) -> str:
    import grpc

    with channel:
        try:
            channel.unary_unary(method)(b"", timeout=10)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name


def test_seaweedfs_grpc_ports_refuse_plain_text_and_tls_without_a_certificate(live):
    """Each gRPC port (and the Unix socket `weed server` serves it on in /tmp), with
    the stock gRPC client: a plain-text channel and a TLS channel without a client
    certificate both fail to connect; the stack's certificate gets an answer."""
    import grpc

    from lepton import weed

    i = live.state()["internal"]
    d = live.home / "stack" / "tls"
    ca, crt, key = ((d / n).read_bytes() for n in ("ca.crt", "client.crt", "client.key"))
    for port_name, method in GRPC_PROBES.items():
        target = f"127.0.0.1:{i[port_name]}"
        assert _grpc_call(grpc.insecure_channel(target), method) == "UNAVAILABLE", port_name
        no_cert = grpc.ssl_channel_credentials(root_certificates=ca)
        assert _grpc_call(grpc.secure_channel(target, no_cert), method) == "UNAVAILABLE", port_name
        ours = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=crt)
        answer = _grpc_call(grpc.secure_channel(target, ours), method)
        assert answer == ("UNIMPLEMENTED" if port_name == "s3_grpc" else "OK"), (port_name, answer)
    sockets = weed.grpc_sockets(i)
    assert len(sockets) == 4 and all(p.is_socket() for p in sockets), sockets
    for sock, method in zip(sockets, GRPC_PROBES.values(), strict=True):
        assert _grpc_call(grpc.insecure_channel(f"unix:{sock}"), method) == "UNAVAILABLE", sock


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
