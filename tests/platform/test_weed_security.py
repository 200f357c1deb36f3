"""SeaweedFS's security under `lepton up` (lepton.weed), without a stack: the stack's
CA and certificates (made once, private, renewed when expiring), the security.toml
that SeaweedFS reads, its command line, the gRPC sockets it leaves, and the
sentinel check against a real SeaweedFS S3 server."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import stat
import tomllib
from pathlib import Path

import pytest

from lepton import weed


def _cert(path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_are_made_once_private_and_signed_by_the_stacks_ca(tmp_path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certs = weed.ensure_certs(tmp_path)
    assert set(certs) == {"ca", *weed.TLS_NAMES}
    d = weed.tls_dir(tmp_path)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for crt, key in certs.values():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert stat.S_IMODE(crt.stat().st_mode) == 0o600, crt
    ca = _cert(certs["ca"][0])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in weed.TLS_NAMES:
        leaf = _cert(certs[name][0])
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == (name != "client")
    # made once: a second call keeps every file as it is
    before = {p: p.read_bytes() for pair in certs.values() for p in pair}
    weed.ensure_certs(tmp_path)
    assert {p: p.read_bytes() for p in before} == before


def test_lepton_certs_keeps_an_existing_folders_mode_and_a_mismatched_key_is_made_again(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o1777)
    certs = weed.certs_in(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # not the user's to lock
    assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for _, key in certs.values())
    volume = certs["volume"][0].read_bytes()
    certs["client"][1].write_bytes(certs["volume"][1].read_bytes())  # a key that is not client.crt's
    weed.certs_in(shared)
    assert certs["volume"][0].read_bytes() == volume
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(certs["client"][1].read_bytes(), password=None)
    assert key.public_key().public_numbers() == _cert(certs["client"][0]).public_key().public_numbers()
    certs["ca"][1].write_text("not a key")  # an unreadable CA key: a new CA, and new certificates under it
    weed.certs_in(shared)
    for name in weed.TLS_NAMES:
        _cert(certs[name][0]).verify_directly_issued_by(_cert(certs["ca"][0]))


def test_a_missing_or_expiring_certificate_is_made_again(tmp_path, monkeypatch):
    certs = weed.ensure_certs(tmp_path)
    ca_bytes = certs["ca"][0].read_bytes()
    certs["filer"][1].unlink()  # the filer's key is gone
    old_volume = certs["volume"][0].read_bytes()
    weed.ensure_certs(tmp_path)
    assert certs["filer"][1].exists()
    assert certs["ca"][0].read_bytes() == ca_bytes and certs["volume"][0].read_bytes() == old_volume
    # within RENEW_DAYS of the end: leaves (825 days) renewed, the CA (10 years) kept
    monkeypatch.setattr(weed, "RENEW_DAYS", weed.LEAF_DAYS + 1)
    weed.ensure_certs(tmp_path)
    assert certs["ca"][0].read_bytes() == ca_bytes and certs["volume"][0].read_bytes() != old_volume
    # a new CA: every certificate is made again under it
    monkeypatch.setattr(weed, "RENEW_DAYS", 30)
    certs["ca"][0].unlink()
    weed.ensure_certs(tmp_path)
    ca = _cert(certs["ca"][0])
    assert certs["ca"][0].read_bytes() != ca_bytes
    for name in weed.TLS_NAMES:
        _cert(certs[name][0]).verify_directly_issued_by(ca)
        left = _cert(certs[name][0]).not_valid_after_utc - dt.datetime.now(dt.UTC)
        assert left > dt.timedelta(days=weed.LEAF_DAYS - 1)


def test_security_toml_names_a_certificate_for_every_grpc_port_and_the_master_and_filer(tmp_path):
    d = weed.write_security_toml(tmp_path)
    f = d / "security.toml"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    conf = tomllib.loads(f.read_text())
    ca = weed.cert_paths(tmp_path, "ca")[0]
    assert conf["grpc"]["ca"] == str(ca)
    for name in ("master", "volume", "filer", "s3"):  # every gRPC server
        crt, key = weed.cert_paths(tmp_path, name)
        assert conf["grpc"][name] == {"cert": str(crt), "key": str(key)}
    for name in ("master", "filer"):  # their HTTP ports: client certificates required
        crt, key = weed.cert_paths(tmp_path, name)
        assert conf["https"][name] == {"cert": str(crt), "key": str(key), "ca": str(ca)}
    # the volume server's HTTP port stays plain (its JWT guards it): SeaweedFS's S3 gateway
    # reads encrypted chunks from it over plain HTTP, whatever [https.client] says
    assert set(conf["https"]) == {"master", "filer"}
    crt, key = weed.cert_paths(tmp_path, "client")
    assert conf["grpc"]["client"] == {"cert": str(crt), "key": str(key)}
    assert "jwt" not in conf  # the JWT keys travel in the environment, not in a file
    for path in [conf["grpc"]["ca"], *(v for s in conf["https"].values() for v in s.values())]:
        assert Path(path).exists(), path


def test_the_command_reads_the_config_only_with_tls_and_carries_no_secret(tmp_path):
    internal = {k: 20000 + i for i, k in enumerate(weed._GRPC_SOCKETS.values())} | {
        "master": 21000,
        "volume": 21001,
        "filer": 21002,
    }
    on = weed.command("weed", tmp_path, 8333, internal, tmp_path / "s3.json", tls=True)
    off = weed.command("weed", tmp_path, 8333, internal, tmp_path / "s3.json", tls=False)
    assert on[1] == f"-config_dir={weed.config_dir(tmp_path)}" and on[3] == "server"  # global flags
    assert on[2] == off[1] == f"-logdir={tmp_path / 'logs' / 'weed'}"  # glog's files in the stack, not /tmp
    assert off[2] == "server" and not any("config_dir" in a for a in off)
    assert on[:1] + on[2:] == off
    assert "-ip.bind=127.0.0.1" in on
    assert not any(".key" in a or "jwt" in a.lower() for a in on)


def test_the_grpc_sockets_a_stopped_store_left_are_removed_and_nothing_else(tmp_path):
    internal = {"master_grpc": 1, "volume_grpc": 2, "filer_grpc": 3, "s3_grpc": 4}
    free = []
    for port in range(61000, 62000):  # numbers no SeaweedFS of this machine uses right now
        if not any(Path(f"/tmp/seaweedfs-{n}-grpc-{port}.sock").exists() for n in weed._GRPC_SOCKETS):
            free.append(port)
        if len(free) == 4:
            break
    internal = dict(zip(internal, free, strict=True))
    paths = weed.grpc_sockets(internal)
    assert [p.name for p in paths] == [
        f"seaweedfs-master-grpc-{free[0]}.sock",
        f"seaweedfs-volume-grpc-{free[1]}.sock",
        f"seaweedfs-filer-grpc-{free[2]}.sock",
        f"seaweedfs-s3-grpc-{free[3]}.sock",
    ]
    socks = []
    try:
        for p in paths[:3]:
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(p))
            socks.append(s)
        socks[2].listen()  # a live store's socket (another stack may have these ports now)
        paths[3].write_text("not a socket")  # a file of that name that is not ours to remove
        assert not weed.sockets_free(internal)
        weed.remove_sockets(internal)
        assert not any(p.exists() for p in paths[:2])
        assert paths[2].is_socket() and paths[3].read_text() == "not a socket"
        socks[2].close()
        paths[3].unlink()
        assert weed.sockets_free(internal) and not any(p.exists() for p in paths)  # now stale: removed
    finally:
        for s in socks:
            s.close()
        for p in paths:
            p.unlink(missing_ok=True)
    weed.remove_sockets(None)  # a state without internal ports: nothing to do


def test_the_certificates_make_a_working_mutual_tls_pair(tmp_path):
    """A TLS server with the filer's certificate that requires a client certificate
    from the stack's CA: the client certificate is accepted, no certificate is not."""
    import threading

    certs = weed.ensure_certs(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certs["filer"])
    ctx.load_verify_locations(certs["ca"][0])
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    results: list[str] = []

    def serve():
        for _ in range(2):
            conn, _ = srv.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    results.append(tls.getpeercert()["subject"][-1][0][1])
            except ssl.SSLError as e:
                results.append(f"refused: {e.reason}")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        client = ssl.create_default_context(cafile=certs["ca"][0])
        client.load_cert_chain(*certs["client"])
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as c,
        ):
            c.sendall(b"x")
        stranger = ssl.create_default_context(cafile=certs["ca"][0])  # trusts the server, has no certificate
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                stranger.wrap_socket(raw, server_hostname="127.0.0.1") as c,
            ):
                c.sendall(b"x")
                c.recv(1)
        t.join(10)
    finally:
        srv.close()
    assert results[0] == "lepton-client"
    assert results[1].startswith("refused"), results


# ---------------------------------------------------------------- the sentinel, on a real store
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.s3util import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.kill()


def test_the_sentinel_reads_back_until_it_is_gone(store):
    c = store.client()
    token = weed.new_sentinel()
    weed.write_sentinel(c, "lepton", token)
    assert weed.data_problem(c, "lepton", token) is None
    assert weed.data_problem(c, "lepton", weed.new_sentinel()) == weed.DATA_MISSING  # another store's
    c.put_object(Bucket="lepton", Key="dvc/files/md5/ab/cdef", Body=b"dataset")
    c.put_object(Bucket="lepton", Key="mlflow/1/run/artifacts/model.pt", Body=b"weights")
    assert weed.data_problem(c, "lepton", token) is None
    c.delete_object(Bucket="lepton", Key=weed.SENTINEL_KEY)
    assert weed.data_problem(c, "lepton", token) == weed.DATA_MISSING
    for body in (b"not json", b"[]", b"null", b'"x"', b'{"sentinel": 5}', b"{}"):
        c.put_object(Bucket="lepton", Key=weed.SENTINEL_KEY, Body=body)
        assert weed.data_problem(c, "lepton", token) == weed.DATA_MISSING, body
    weed.write_sentinel(c, "lepton", token)
    assert weed.data_problem(c, "lepton", token) is None
    assert os.environ.get("AWS_ACCESS_KEY_ID") != store.key  # the check used the client it was given
