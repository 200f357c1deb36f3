"""SeaweedFS under `lepton up`: its command line, its security settings and the
sentinel that tells a store that lost its data from a healthy one.

Authentication (the default) closes every SeaweedFS port:
- S3 takes only requests signed with the stack's keys (`s3.json`);
- the gRPC ports of all four components and the master's and filer's HTTP ports take
  only clients with a certificate signed by the stack's own CA (mutual TLS, in
  SeaweedFS's `security.toml`: `[grpc.*]` and `[https.*]`);
- the volume server's HTTP port and (behind its certificate) the filer's want a JWT
  signed with the stack's keys for every read, write and delete (handed through the
  environment, `WEED_JWT_*`); `write_security_toml` says why the volume server's HTTP
  port cannot take TLS.

The CA and the certificates are made once, under `<home>/stack/tls/` (keys 0600), and
made again only when one is missing or has less than 30 days left.

The sentinel: `up` writes a small object to the bucket once and records its token in
the stack's state (one per bucket); `up` and `lepton status` read it back. A store
whose volumes were deleted still answers a write, read and delete of a new object (it
makes fresh volumes for it); only reading what was written before tells that the data
is gone. It notices the loss of the volume that holds the sentinel (all of them, as
`/col/delete` does), not of another single volume.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
from pathlib import Path

from lepton_core.fileio import atomic_write

# The certificates: one per component, and "client" for clients that are not
# SeaweedFS's servers (its own outgoing connections, and the stack's tests).
TLS_NAMES = ("master", "volume", "filer", "s3", "client")
CA_DAYS, LEAF_DAYS, RENEW_DAYS = 3650, 825, 30

# The HTTP ports that take only clients with the stack's certificate (see
# write_security_toml for the volume server's).
HTTPS_SERVERS = ("master", "filer")

SENTINEL_KEY = "_lepton/sentinel.json"
# What the sentinel check lists besides reading the sentinel: the DVC remote and
# MLflow's artifacts.
DATA_PREFIXES = ("dvc/", "mlflow/")
DATA_MISSING = "data missing (sentinel gone)"
# S3 answers that say "try again later", not "it is gone"
BUSY = ("SlowDown", "ServiceUnavailable", "503", "RequestTimeout", "Throttling")


# ---------------------------------------------------------------- certificates
def tls_dir(stack_dir: Path) -> Path:
    return stack_dir / "tls"


def cert_paths(stack_dir: Path, name: str) -> tuple[Path, Path]:
    d = tls_dir(stack_dir)
    return d / f"{name}.crt", d / f"{name}.key"


def _usable(crt: Path, key: Path, ca=None) -> bool:
    """The pair exists and reads, the key is the certificate's, it has RENEW_DAYS left,
    and (given a CA) that CA signed it."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    if not (crt.exists() and key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError):
        return False
    if private.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        return False  # a key that is not this certificate's
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    if left < dt.timedelta(days=RENEW_DAYS):
        return False
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
    return True


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lepton stack"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write_pair(crt: Path, key: Path, cert, private_key) -> None:
    from cryptography.hazmat.primitives import serialization

    atomic_write(
        key,
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        mode=0o600,
        fsync=False,
    )
    atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM), mode=0o600, fsync=False)


def _builder(subject, issuer, public_key, days: int):
    from cryptography import x509

    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _make_ca(crt: Path, key: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    name = _name("lepton-stack-ca")
    cert = (
        _builder(name, name, k.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(k, hashes.SHA256())
    )
    _write_pair(crt, key, cert, k)
    return cert, k


def _make_leaf(crt: Path, key: Path, cn: str, ca_cert, ca_key) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    k = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if cn != "client" else [])
    cert = (
        _builder(_name(f"lepton-{cn}"), ca_cert.subject, k.public_key(), LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(crt, key, cert, k)


def ensure_certs(stack_dir: Path) -> dict[str, tuple[Path, Path]]:
    """The stack's CA and a certificate per TLS_NAMES under `tls_dir(stack_dir)` (0700)."""
    d = tls_dir(stack_dir)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    d.chmod(0o700)
    return certs_in(d)


def certs_in(d: Path) -> dict[str, tuple[Path, Path]]:
    """A CA and a certificate per TLS_NAMES in folder `d` (NAME.crt, NAME.key; the keys
    0600), made when missing or expiring (a new CA means new certificates for all). A
    folder made here is 0700; an existing one keeps its mode. Returns name -> (cert,
    key), "ca" included. `lepton certs DIR` (for infra/) calls it too."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_crt, ca_key_path = d / "ca.crt", d / "ca.key"
    if _usable(ca_crt, ca_key_path):
        ca_cert = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    else:
        ca_cert, ca_key = _make_ca(ca_crt, ca_key_path)
    out = {"ca": (ca_crt, ca_key_path)}
    for name in TLS_NAMES:
        crt, key = d / f"{name}.crt", d / f"{name}.key"
        if not _usable(crt, key, ca_cert):
            _make_leaf(crt, key, name, ca_cert, ca_key)
        out[name] = (crt, key)
    return out


def config_dir(stack_dir: Path) -> Path:
    """Where `weed -config_dir` finds the stack's security.toml."""
    return stack_dir / "seaweedfs-config"


def write_security_toml(stack_dir: Path) -> Path:
    """SeaweedFS's security.toml: mutual TLS on every gRPC port and on the master's and
    the filer's HTTP ports (each server presents its certificate and requires one signed
    by the stack's CA; its own outgoing gRPC connections present the client certificate).

    The volume server's HTTP port stays plain HTTP, behind its JWT: SeaweedFS's S3
    gateway reads server-side-encrypted chunks from it with a plain HTTP client of its
    own (not the `[https.client]` one), so with TLS there every encrypted object would be
    unreadable. Without `[https.client]` nothing of SeaweedFS calls the master's or the
    filer's HTTP port (they talk gRPC), so those two can require certificates.
    The JWT keys are not in this file (they travel in the environment). Returns the folder."""
    certs = ensure_certs(stack_dir)
    q = lambda p: json.dumps(str(p))  # noqa: E731 - a TOML basic string
    ca = q(certs["ca"][0])
    lines = [
        "# Written by `lepton up` (authentication on): mutual TLS on SeaweedFS's gRPC ports",
        "# and on its master's and filer's HTTP ports (lepton/weed.py says why not the volume's).",
        "[grpc]",
        f"ca = {ca}",
    ]
    for name in ("master", "volume", "filer", "s3"):
        crt, key = certs[name]
        lines += [f"[grpc.{name}]", f"cert = {q(crt)}", f"key = {q(key)}"]
    crt, key = certs["client"]
    lines += ["[grpc.client]", f"cert = {q(crt)}", f"key = {q(key)}"]
    for name in HTTPS_SERVERS:
        crt, key = certs[name]
        lines += [f"[https.{name}]", f"cert = {q(crt)}", f"key = {q(key)}", f"ca = {ca}"]
    d = config_dir(stack_dir)
    d.mkdir(mode=0o700, exist_ok=True)
    atomic_write(d / "security.toml", "\n".join(lines) + "\n", mode=0o600, fsync=False)
    return d


# ---------------------------------------------------------------- the command
# SeaweedFS's volumes: small, and a fixed number of slots. With -volume.max=0 it
# allowed free disk / 30 GB volumes (2 on a disk with 75 GB free), the filer's own
# collection could take them all, and then every write to the bucket failed. Volumes
# of 128 MB (files grow as written: nothing is preallocated) and 2000 slots let a
# handful of collections grow on a disk with a few GB free, up to 250 GB in all.
WEED_VOLUME_SIZE_MB = 128
WEED_VOLUME_MAX = 2000


def command(weed: str, d: Path, s3_port: int, internal: dict[str, int], s3_config: Path, tls: bool) -> list[str]:
    """`weed server` with the master, a volume server, the filer and the S3 gateway,
    all on 127.0.0.1; with `tls`, reading the security.toml of `write_security_toml`."""
    return [
        weed,
        *([f"-config_dir={config_dir(d)}"] if tls else []),
        f"-logdir={d / 'logs' / 'weed'}",  # glog's files (else in /tmp, never removed)
        "server",
        f"-dir={d / 'seaweedfs'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={internal['master']}",
        f"-master.port.grpc={internal['master_grpc']}",
        f"-volume.port={internal['volume']}",
        f"-volume.port.grpc={internal['volume_grpc']}",
        "-filer",
        f"-filer.port={internal['filer']}",
        f"-filer.port.grpc={internal['filer_grpc']}",
        f"-filer.localSocket={d / 'seaweedfs' / 'filer.sock'}",
        "-s3",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={internal['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
        f"-s3.localSocket={d / 'seaweedfs' / 's3.sock'}",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={WEED_VOLUME_SIZE_MB}",
        f"-volume.max={WEED_VOLUME_MAX}",
    ]


# ---------------------------------------------------------------- the sentinel
def new_sentinel() -> str:
    return secrets.token_hex(16)


def write_sentinel(c, bucket: str, token: str) -> None:
    """`c`: a boto3 S3 client with the stack's keys."""
    body = json.dumps({"sentinel": token, "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
    c.put_object(Bucket=bucket, Key=SENTINEL_KEY, Body=body.encode())


def data_problem(c, bucket: str, token: str) -> str | None:
    """None when the sentinel reads back with its token and each of DATA_PREFIXES
    lists; else what is wrong, in a few words. Errors of the store itself (it does
    not answer) are raised, not returned."""
    from botocore.exceptions import ClientError

    try:
        doc = json.loads(c.get_object(Bucket=bucket, Key=SENTINEL_KEY)["Body"].read())
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in BUSY:
            raise  # no verdict: the store is busy, not empty
        return DATA_MISSING  # gone (404), or its bytes are (the 500 of a missing chunk)
    except ValueError:
        return DATA_MISSING
    if not isinstance(doc, dict) or doc.get("sentinel") != token:
        return DATA_MISSING
    for prefix in DATA_PREFIXES:
        try:
            c.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        except ClientError as e:
            return f"data missing (cannot list {prefix}: {e.response.get('Error', {}).get('Code')})"
    return None


# ---------------------------------------------------------------- what it leaves
# `weed server` also serves each gRPC port on a Unix socket at a fixed place in /tmp
# (the same gRPC server, so the same TLS); they outlive a stopped store.
_GRPC_SOCKETS = {"master": "master_grpc", "volume": "volume_grpc", "filer": "filer_grpc", "s3": "s3_grpc"}


def grpc_sockets(internal: dict[str, int] | None) -> list[Path]:
    """The Unix sockets of a store with these internal ports."""
    internal = internal or {}
    return [Path(f"/tmp/seaweedfs-{n}-grpc-{internal[k]}.sock") for n, k in _GRPC_SOCKETS.items() if k in internal]


def _listening(path: Path) -> bool:
    """Something accepts connections on the Unix socket `path` (a live store's)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
            return True
        except OSError:
            return False


def remove_sockets(internal: dict[str, int] | None, wait: float = 0.0) -> list[Path]:
    """Remove the gRPC sockets a stopped store left: only sockets, only our own, and
    only those nothing listens on (another stack may have the same ports by now).
    `wait`: seconds to keep trying while one still listens (a store killed a moment
    ago on a busy machine can take that long to let go). Returns what is left."""
    import os
    import stat
    import time

    deadline = time.monotonic() + wait
    while True:
        left = []
        for p in grpc_sockets(internal):
            try:
                st = p.lstat()
            except OSError:
                continue
            if not (stat.S_ISSOCK(st.st_mode) and st.st_uid == os.getuid()):
                continue
            if _listening(p):
                left.append(p)
            else:
                p.unlink(missing_ok=True)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.25)


def sockets_free(internal: dict[str, int]) -> bool:
    """No file lies at any of the gRPC socket paths of these ports (after our own stale
    ones are removed): `weed server` could not listen there, and another user may have
    put a file there on purpose."""
    remove_sockets(internal)
    return not any(p.exists() or p.is_symlink() for p in grpc_sockets(internal))
