"""The whole stack on Kubernetes (infra/k8s/) and the Kubernetes work pool.

Offline: every object is validated against the Kubernetes 1.33 API schemas
(kubernetes-validate, strict) in tests/infra/test_k8s.py; here the objects are checked
against each other and against the servers they run: Services select pods that exist,
on ports those pods open; every Secret and ConfigMap they name is one the
README's steps create, with the keys asked for; SeaweedFS mounts its certificates
from a Secret and writes the same security.toml as compose; probes hit endpoints the
servers really serve; the worker's Role allows what prefect-kubernetes calls.

Against a real Prefect server (no cluster): `lepton deploy --pool-type kubernetes`
creates the pool from infra/work-pools/kubernetes.json and registers the training
deployment with job variables from params; the Job the worker would submit is
rendered by prefect-kubernetes's own code (KubernetesWorkerJobConfiguration,
resolve_for_flow_run) and validated against the schemas, with nvidia.com/gpu and
memory from params in it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import urllib.request
import uuid
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from effects.runtime.settings import KNOWN_ENV
from tests.conftest import lepton_env_vars, run_cli
from tests.infra.test_infra import (
    TLS_DIR,
    TLS_FILES,
    certificate_check,
    check_security_toml,
    check_weed_argv,
    seaweedfs_script,
    weed_argv,
    written_security_toml,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
POOL_TEMPLATE = ROOT / "infra" / "work-pools" / "kubernetes.json"
README = ROOT / "infra" / "README.md"
KUBERNETES = "1.33"
WORKLOADS = ("Deployment", "StatefulSet")

# Variables the manifests set that Lepton itself never reads, each with its reason.
K8S_ONLY_ENV = {
    "POSTGRES_USER": "postgres image: owner of the databases",
    "POSTGRES_PASSWORD": "postgres image: that owner's password",
    "POSTGRES_DB": "postgres image: the database it creates (mlflow)",
    "PGDATA": "postgres image: data folder inside the volume (a volume root may hold lost+found)",
    "PGPASSWORD": "libpq: the MLflow server's database password, so no URL holds it",
    "PREFECT_SERVER_DATABASE_DRIVER": "Prefect server: database connection in parts",
    "PREFECT_SERVER_DATABASE_HOST": "Prefect server: database connection in parts",
    "PREFECT_SERVER_DATABASE_PORT": "Prefect server: database connection in parts",
    "PREFECT_SERVER_DATABASE_USER": "Prefect server: database connection in parts",
    "PREFECT_SERVER_DATABASE_NAME": "Prefect server: database connection in parts",
    "PREFECT_SERVER_DATABASE_PASSWORD": "Prefect server: the password part, from a Secret",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME": "worker: Jobs read the auth string from this Secret",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY": "worker: ... under this key",
    "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "worker: watch this namespace only (a Role suffices)",
}


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _all_objects() -> list[dict]:
    return [d for name in _kustomization()["resources"] for d in _docs(K8S / name)]


def _one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objs if o["kind"] in WORKLOADS]


def _containers(objs: list[dict]):
    for name, spec in _pod_specs(objs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield name, c


def _readme_secrets() -> dict[str, set[str]]:
    """name -> keys of every `kubectl create secret generic NAME --from-literal=KEY=...`
    or `--from-file=[KEY=]PATH` (the key: KEY, else the file's name)."""
    out: dict[str, set[str]] = {}
    for name, args in _readme_secret_commands():
        keys = out.setdefault(name, set())
        keys.update(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", args))
        for key, path in re.findall(r"--from-file=(?:([A-Za-z0-9_.-]+)=)?(\S+)", args):
            keys.add(key or PurePosixPath(path).name)
    return out


def _readme_secret_commands() -> list[tuple[str, str]]:
    text = README.read_text().replace("\\\n", " ")
    return re.findall(r"kubectl create secret generic ([a-z0-9-]+)([^\n]*)", text)


def _config_maps(objs: list[dict]) -> dict[str, set[str]]:
    return {o["metadata"]["name"]: set(o.get("data", {})) for o in objs if o["kind"] == "ConfigMap"}


# ---------------------------------------------------------------- the manifests together


def test_the_kustomization_lists_every_manifest_in_one_namespace():
    k = _kustomization()
    assert (k["apiVersion"], k["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    assert k["namespace"] == json.loads(POOL_TEMPLATE.read_text())["variables"]["properties"]["namespace"]["default"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(on_disk)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in _all_objects()}
    for needed in [
        ("StatefulSet", "postgres"),
        ("StatefulSet", "seaweedfs"),
        ("Deployment", "mlflow"),
        ("Deployment", "prefect-server"),
        ("Deployment", "lepton-prefect-worker"),
        ("Deployment", "lepton-model-server"),
        ("Deployment", "prometheus"),
        ("Deployment", "alertmanager"),
        ("Deployment", "evidently-ui"),
        ("ConfigMap", "lepton-prometheus"),
        ("ConfigMap", "lepton-prometheus-rules"),
        ("ServiceAccount", "lepton-prefect-worker"),
        ("Role", "lepton-prefect-worker"),
        ("RoleBinding", "lepton-prefect-worker"),
    ]:
        assert needed in kinds, needed
    assert not [o for o in _all_objects() if o["kind"] == "Secret"], "Secrets are made with kubectl, never in a file"
    for o in _all_objects():
        assert "namespace" not in o["metadata"], "the kustomization sets the namespace"


def _service_problems(objs: list[dict]) -> list[str]:
    problems = []
    pods = [(o, o["spec"]["template"]) for o in objs if o["kind"] in WORKLOADS]
    for o, tpl in pods:
        if not o["spec"]["selector"]["matchLabels"].items() <= tpl["metadata"]["labels"].items():
            problems.append(f"{o['metadata']['name']}: selector does not match its own pods")
        if o["kind"] == "StatefulSet" and ("Service", o["spec"]["serviceName"]) not in {
            (x["kind"], x["metadata"]["name"]) for x in objs
        }:
            problems.append(f"{o['metadata']['name']}: serviceName names no Service")
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        matched = [(o, tpl) for o, tpl in pods if sel.items() <= tpl["metadata"]["labels"].items()]
        if len(matched) != 1:
            problems.append(f"Service {svc['metadata']['name']} selects {len(matched)} workloads")
            continue
        ports = {p.get("name"): p["containerPort"] for c in matched[0][1]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                problems.append(f"Service {svc['metadata']['name']}: no container port {p['targetPort']!r}")
    return problems


def test_services_select_the_pods_that_open_their_ports():
    objs = _all_objects()
    assert _service_problems(objs) == []
    # the names the rest of the stack calls them by (the same as in infra/compose.yaml)
    ports = {o["metadata"]["name"]: o["spec"]["ports"][0]["port"] for o in objs if o["kind"] == "Service"}
    assert ports == {
        "postgres": 5432,
        "seaweedfs": 8333,
        "mlflow": 5000,
        "prefect": 4200,
        "lepton-model-server": 8000,
        "lepton-model-server-pods": 8000,  # headless: every pod, what Prometheus scrapes
        "prometheus": 9090,
        "alertmanager": 9093,
        "evidently-ui": 8085,
    }


def test_the_service_check_catches_a_selector_that_matches_nothing():
    objs = copy.deepcopy(_all_objects())
    svc = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow")
    svc["spec"]["selector"]["app.kubernetes.io/component"] = "mlfow"
    assert _service_problems(objs) == ["Service mlflow selects 0 workloads"]


def _references(objs: list[dict]) -> tuple[set, set, set, set]:
    """(secret, key), secret names (envFrom), (configmap, key), configmap names."""
    secret_keys, secrets, cm_keys, cms = set(), set(), set(), set()
    for _, c in _containers(objs):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                secret_keys.add((ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
            if "configMapKeyRef" in ref:
                cm_keys.add((ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]))
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                secrets.add(src["secretRef"]["name"])
            if "configMapRef" in src:
                cms.add(src["configMapRef"]["name"])
    for _, spec in _pod_specs(objs):
        for v in spec.get("volumes", []):
            if "configMap" in v:
                cms.add(v["configMap"]["name"])
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
    return secret_keys, secrets, cm_keys, cms


def test_every_secret_and_config_map_named_is_made_by_the_readme_or_the_manifests():
    objs = _all_objects()
    made = _readme_secrets()
    secret_keys, secrets, cm_keys, cms = _references(objs)
    assert secret_keys and secrets and cm_keys and cms
    for name, key in secret_keys:
        assert key in made.get(name, set()), f"Secret {name} key {key}: not made in infra/README.md"
    for name in secrets:
        assert name in made, f"Secret {name}: not made in infra/README.md"
    maps = _config_maps(objs)
    for name, key in cm_keys:
        assert key in maps.get(name, set()), (name, key)
    assert cms <= set(maps)
    # the worker hands the auth string's Secret to every Job by name
    worker = _one(objs, "Deployment", "lepton-prefect-worker")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in worker["env"]}
    name = env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]["value"]
    key = env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]["value"]
    assert key in made[name]
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    # and the pool's flow-run pods take their credentials from Secrets the README makes
    props = json.loads(POOL_TEMPLATE.read_text())["variables"]["properties"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= made[props["s3_secret_name"]["default"]]
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= made[props["mlflow_secret_name"]["default"]]
    assert props["config_map_name"]["default"] in maps


def test_no_secret_value_is_written_in_a_manifest():
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|ACCESS_KEY|SIGNING_KEY")
    for _, c in _containers(_all_objects()):
        for e in c.get("env", []):
            if secretish.search(e["name"]) and not e["name"].endswith(("_SECRET_NAME", "_SECRET_KEY")):
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], e["name"]


def test_every_variable_is_known_to_lepton_or_listed_with_a_reason():
    objs = _all_objects()
    used = {e["name"] for _, c in _containers(objs) for e in c.get("env", [])}
    used |= {
        k
        for m in (o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "lepton-config")
        for k in m["data"]
    }
    unknown = used - KNOWN_ENV - set(K8S_ONLY_ENV)
    assert not unknown, f"add to effects.runtime.settings.KNOWN_ENV or K8S_ONLY_ENV: {sorted(unknown)}"
    assert set(K8S_ONLY_ENV) <= used, set(K8S_ONLY_ENV) - used
    assert not set(K8S_ONLY_ENV) & KNOWN_ENV


def test_the_pool_env_defaults_agree_with_the_config_map():
    env = json.loads(POOL_TEMPLATE.read_text())["variables"]["properties"]["env"]["default"]
    config = _config_maps(_all_objects())
    data = _one(_all_objects(), "ConfigMap", "lepton-config")["data"]
    assert config["lepton-config"]
    for k in set(env) & set(data):
        assert env[k] == data[k], k  # explicit env wins over envFrom, so they must not differ


# ---------------------------------------------------------------- each server as compose runs it


def _compose() -> dict:
    return yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())


def _container(objs, kind, name) -> dict:
    return _one(objs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _words(c: dict) -> str:
    return " ".join(c.get("command", []) + c.get("args", []))


def test_postgres_has_the_databases_the_servers_use():
    objs = _all_objects()
    pg = _container(objs, "StatefulSet", "postgres")
    env = {e["name"]: e.get("value") for e in pg["env"]}
    init = _one(objs, "ConfigMap", "lepton-postgres-init")["data"]
    created = {env["POSTGRES_DB"]} | set(re.findall(r"CREATE DATABASE (\w+);", "".join(init.values())))
    prefect = {e["name"]: e.get("value") for e in _container(objs, "Deployment", "prefect-server")["env"]}
    mlflow = _words(_container(objs, "Deployment", "mlflow"))
    used = {prefect["PREFECT_SERVER_DATABASE_NAME"], *re.findall(r"postgresql://lepton@postgres:5432/(\w+)", mlflow)}
    assert used == {"mlflow", "prefect", "mlflow_auth"} and used <= created
    assert prefect["PREFECT_SERVER_DATABASE_USER"] == env["POSTGRES_USER"] == "lepton"
    assert pg["image"] == _compose()["services"]["postgres"]["image"]
    data_mount = next(v["mountPath"] for v in pg["volumeMounts"] if v["name"] == "data")
    assert env["PGDATA"].startswith(data_mount + "/")
    ss = _one(objs, "StatefulSet", "postgres")
    assert [t["metadata"]["name"] for t in ss["spec"]["volumeClaimTemplates"]] == ["data"]


def test_seaweedfs_runs_the_compose_command_and_release():
    objs = _all_objects()
    c = _container(objs, "StatefulSet", "seaweedfs")
    compose = _compose()["services"]["seaweedfs"]
    assert c["image"] == compose["image"]
    ours = _words(c)
    theirs = seaweedfs_script()
    assert weed_argv(ours) == weed_argv(theirs)  # the same words, in the same order
    # internal ports on the pod's 127.0.0.1 (no POD_IP any more), S3 on all addresses
    check_weed_argv(weed_argv(ours))
    assert "POD_IP" not in ours and "POD_IP" not in {e["name"] for e in c["env"]}
    assert "s3.json" in ours and "umask 077" in ours
    compose_health = compose["healthcheck"]["test"][-1]
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert compose_health.endswith(":8333" + probe["httpGet"]["path"])
    policy = _one(objs, "NetworkPolicy", "seaweedfs-s3-only")
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8333}]}]


def test_seaweedfs_mounts_its_certificates_and_writes_the_compose_security_toml(tmp_path):
    objs = _all_objects()
    pod = _one(objs, "StatefulSet", "seaweedfs")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    # owner-read only: weed runs as root (the image has no USER, and the command replaces
    # its entrypoint, which would switch to uid 1000), so no fsGroup is needed
    assert volume["secret"] == {"secretName": "lepton-seaweedfs-tls", "defaultMode": 0o400}
    assert "securityContext" not in pod and "securityContext" not in c
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": TLS_DIR, "readOnly": True}
    # the Secret (the README makes it from `lepton certs`'s folder) holds every file but ca.key
    keys = _readme_secrets()["lepton-seaweedfs-tls"]
    assert keys == TLS_FILES and "ca.key" not in keys
    (args,) = [a for n, a in _readme_secret_commands() if n == "lepton-seaweedfs-tls"]
    paths = re.findall(r"--from-file=(\S+)", args)
    assert len(paths) == len(TLS_FILES) and all(p.startswith("infra/seaweedfs-tls/") for p in paths)
    (script,) = c["args"]
    check_security_toml(script, tmp_path, keys)
    (tmp_path / "k8s").mkdir()
    (tmp_path / "compose").mkdir()
    ours, _ = written_security_toml(script, tmp_path / "k8s")
    theirs, _ = written_security_toml(seaweedfs_script(), tmp_path / "compose")
    assert ours == theirs
    check = certificate_check(script)
    assert set(check.split(" cat ", 1)[1].split(">/dev/null")[0].split()) == TLS_FILES
    assert script.index(check) < script.index("exec weed ")


def test_mlflow_serves_artifacts_from_s3_with_postgres_and_probes_its_health_endpoint():
    from mlflow.server import app as mlflow_app
    from mlflow.server.security_utils import HEALTH_ENDPOINTS

    c = _container(_all_objects(), "Deployment", "mlflow")
    words = _words(c)
    for flag in (
        "--serve-artifacts",
        "--app-name basic-auth",
        "--workers 1",
        "--port 5000",
        "--backend-store-uri postgresql://lepton@postgres:5432/mlflow",
        '--artifacts-destination "s3://$LEPTON_S3_BUCKET/mlflow"',
        "python infra/scripts/ensure_bucket.py",
    ):
        assert flag in words, flag
    assert "mlflow:*" in words and "--allowed-hosts" in words
    routes = {r.rule for r in mlflow_app.url_map.iter_rules()}
    for probe in (c["readinessProbe"], c["livenessProbe"], c["startupProbe"]):
        path = probe["httpGet"]["path"]
        # served, and exempt from the Host check (the kubelet calls it by the pod's IP)
        assert path in routes and path in HEALTH_ENDPOINTS, path


def test_prefect_server_probes_an_endpoint_the_real_server_answers(prefect_server):
    c = _container(_all_objects(), "Deployment", "prefect-server")
    assert c["command"][:3] == ["prefect", "server", "start"]
    root = prefect_server.rstrip("/").removesuffix("/api")
    for probe in (c["readinessProbe"], c["livenessProbe"], c["startupProbe"]):
        with urllib.request.urlopen(root + probe["httpGet"]["path"], timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) is True


def test_the_worker_probes_the_healthcheck_server_prefect_starts():
    from prefect.settings import get_current_settings
    from prefect.workers.server import _build_healthcheck_server

    c = _container(_all_objects(), "Deployment", "lepton-prefect-worker")
    assert "--with-healthcheck" in c["command"] and c["command"][c["command"].index("--type") + 1] == "kubernetes"
    from fastapi.testclient import TestClient

    server = _build_healthcheck_server(lambda: True)  # what --with-healthcheck serves
    probe = c["livenessProbe"]["httpGet"]
    assert TestClient(server.config.app).get(probe["path"]).status_code == 200
    port = {p["name"]: p["containerPort"] for p in c["ports"]}[probe["port"]]
    assert port == get_current_settings().worker.webserver.port


# ---------------------------------------------------------------- the worker's permissions


def _allows(role: dict, group: str, resource: str, verb: str) -> bool:
    return any(
        (group in r["apiGroups"] or "*" in r["apiGroups"])
        and (resource in r["resources"] or "*" in r["resources"])
        and (verb in r["verbs"] or "*" in r["verbs"])
        for r in role["rules"]
    )


_VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch", "replace": "update"}
_RESOURCES = {"job": ("batch", "jobs"), "pod": ("", "pods"), "pod_log": ("", "pods/log"), "secret": ("", "secrets")}


def _worker_api_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every namespaced call in prefect-kubernetes's worker
    and observer, read from their source, plus the watches both keep open."""
    import prefect_kubernetes

    pkg = Path(prefect_kubernetes.__file__).parent
    calls = set()
    for src in ("worker.py", "observer.py"):
        for verb, res in re.findall(
            r"\b(create|read|list|delete|patch|replace)_namespaced_(\w+?)\(", (pkg / src).read_text()
        ):
            calls.add((*_RESOURCES[res], _VERBS[verb]))
    calls |= {("batch", "jobs", "watch"), ("", "pods", "watch"), ("", "events", "create")}
    return calls


def _worker_role(objs) -> dict:
    dep = _one(objs, "Deployment", "lepton-prefect-worker")
    sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = [
        b for b in objs if b["kind"] == "RoleBinding" and {"kind": "ServiceAccount", "name": sa} in b["subjects"]
    ]
    assert len(bindings) == 1 and bindings[0]["roleRef"]["kind"] == "Role"
    _one(objs, "ServiceAccount", sa)
    return _one(objs, "Role", bindings[0]["roleRef"]["name"])


def _missing_permissions(role: dict) -> set:
    # Secrets: only for PREFECT_API_KEY (Prefect Cloud) or store_env_as_secret, both unused here
    needed = {c for c in _worker_api_calls() if c[1] != "secrets"}
    assert ("batch", "jobs", "create") in needed and ("", "pods/log", "get") in needed
    return {c for c in needed if not _allows(role, *c)}


def test_the_worker_role_allows_what_prefect_kubernetes_calls_and_no_more():
    objs = _all_objects()
    role = _worker_role(objs)
    assert _missing_permissions(role) == set()
    assert not _allows(role, "", "secrets", "get") and not _allows(role, "", "secrets", "create")
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    # namespaced watches only: without this the observer lists pods in all namespaces
    env = {e["name"]: e for e in _container(objs, "Deployment", "lepton-prefect-worker")["env"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "metadata.namespace"
    }


def test_the_permission_check_catches_a_role_that_cannot_create_jobs():
    role = copy.deepcopy(_worker_role(_all_objects()))
    for r in role["rules"]:
        if "jobs" in r["resources"]:
            r["verbs"].remove("create")
    assert _missing_permissions(role) == {("batch", "jobs", "create")}


# ---------------------------------------------------------------- the work pool's template


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _at(node, path):
    for p in path:
        node = node[p]
    return node


def test_the_pool_template_keeps_the_shape_of_prefect_kubernetes_default():
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()
    ours = json.loads(POOL_TEMPLATE.read_text())
    assert set(default) == set(ours)
    assert set(default["job_configuration"]) <= set(ours["job_configuration"])
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    for path, value in _leaves(default["job_configuration"]):
        assert _at(ours["job_configuration"], path) == value, path  # every default placeholder, in its place
    c = ours["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"


# ---------------------------------------------------------------- against a Prefect server


@pytest.fixture(scope="module")
def k8s_deployed(prefect_server, tmp_path_factory):
    """`lepton deploy --pool-type kubernetes` on a fresh pool, with GPUs and memory set
    in params; removes what it registered afterwards (the server is the session's)."""
    from prefect.client.orchestration import get_client

    pool = f"lepton-k8s-{uuid.uuid4().hex[:8]}"
    env = {
        **lepton_env_vars(tmp_path_factory.mktemp("k8s")),
        "PREFECT_API_URL": prefect_server,
        "LEPTON_PROJECT_DIR": str(ROOT),
    }  # the flows' code: the checkout, as /opt/lepton in the image
    r = run_cli(
        [
            "deploy",
            "--pool-type",
            "kubernetes",
            "--pool",
            pool,
            "--base-job-template",
            str(POOL_TEMPLATE),
            "--set",
            "deploy.gpus=2",
            "--set",
            "deploy.memory=16Gi",
            "--set",
            "deploy.cpu=4",
        ],
        env,
    )
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    yield pool, env, r.stdout
    with get_client(sync_client=True) as c:
        for d in c.read_deployments():
            if d.work_pool_name == pool:
                c.delete_deployment(d.id)
        for a in c.read_automations_by_name("lepton-retrain-on-drift"):
            c.delete_automation(a.id)
        for fr in c.read_flow_runs():
            if fr.work_pool_name == pool:
                c.delete_flow_run(fr.id)
        c.delete_work_pool(pool)


def _render_job(pool: str, flow_name: str) -> dict:
    """The Job manifest prefect-kubernetes's worker would submit for a new flow run of
    `flow_name`/lepton: its own resolve_for_flow_run, as KubernetesWorker runs it."""
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def go():
        async with get_client() as c:
            work_pool = await c.read_work_pool(pool)
            dep = await c.read_deployment_by_name(f"{flow_name}/lepton")
            run = await c.create_flow_run_from_deployment(dep.id)
            cfg = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                run, client=c, work_pool=work_pool, worker_name="lepton-k8s-worker", deployment=dep
            )
            return cfg.job_manifest

    return asyncio.run(go())


def _as_the_api_server_keeps_it(job: dict) -> dict:
    """Prefect insists on `parallelism: 1` and `completions: 1` inside the pod spec
    (its own job validator checks for them there), where the Job API has no such
    fields: the API server drops unknown fields (with a warning) on create. Drop
    exactly those two, and only when they are 1."""
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    return job


def test_deploy_creates_the_pool_from_the_template(k8s_deployed):
    from prefect.client.orchestration import get_client

    pool, _, out = k8s_deployed
    with get_client(sync_client=True) as c:
        wp = c.read_work_pool(pool)
    assert wp.type == "kubernetes"
    assert wp.base_job_template == json.loads(POOL_TEMPLATE.read_text())
    assert f"work pool {pool} (kubernetes): retrain runs as a Job with 2 GPU(s), 16Gi memory, 4 CPU(s)" in out


def test_the_training_deployment_carries_gpus_memory_and_cpu_from_params(k8s_deployed):
    from prefect.client.orchestration import get_client

    pool, _, _ = k8s_deployed
    with get_client(sync_client=True) as c:
        by_flow = {c.read_flow(d.flow_id).name: d for d in c.read_deployments() if d.work_pool_name == pool}
    assert {"retrain", "promote", "rollback", "monitor"} <= set(by_flow)
    training = {
        "gpu_count": 2,
        "memory_request": "16Gi",
        "memory_limit": "16Gi",
        "cpu_request": "4",
        "image": "lepton:cuda",
    }
    assert by_flow["retrain"].job_variables == training
    if "sweep" in by_flow:  # its trials run in its pod unless it is given a Dask cluster
        assert by_flow["sweep"].job_variables == training
    for other in set(by_flow) - {"retrain", "sweep"}:
        assert not by_flow[other].job_variables, other  # the pool's defaults: no GPU
    pull = json.dumps(by_flow["retrain"].pull_steps)
    assert str(ROOT) in pull  # the code is the project folder's own (/opt/lepton in the image)


def test_the_rendered_training_job_is_valid_and_asks_for_the_gpus_and_memory(k8s_deployed):
    pool, _, _ = k8s_deployed
    job = _render_job(pool, "retrain")
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelism|completions"):
        kubernetes_validate.validate(job, KUBERNETES, strict=True)
    kept = _as_the_api_server_keeps_it(job)
    kubernetes_validate.validate(kept, KUBERNETES, strict=True)

    assert (kept["apiVersion"], kept["kind"]) == ("batch/v1", "Job")
    assert kept["metadata"]["namespace"] == _kustomization()["namespace"]
    pod = kept["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2, "memory": "16Gi"}
    assert c["resources"]["requests"] == {"memory": "16Gi", "cpu": "4"}
    assert c["image"] == "lepton:cuda" and pod["restartPolicy"] == "Never"
    assert c["args"] == ["prefect", "flow-run", "execute"]  # the worker's command, as the template leaves it
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {s["secretRef"]["name"] for s in c["envFrom"] if "secretRef" in s} == {
        "lepton-s3",
        "lepton-mlflow-auth",
        "lepton-evidently",  # the monitor writes its snapshots to the Evidently UI
    }
    assert kept["metadata"]["labels"]["prefect.io/work-pool-name"] == pool


def test_a_job_without_gpus_is_valid_too(k8s_deployed):
    pool, _, _ = k8s_deployed
    kept = _as_the_api_server_keeps_it(_render_job(pool, "rollback"))
    kubernetes_validate.validate(kept, KUBERNETES, strict=True)
    (c,) = kept["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "lepton:cpu" and c["resources"]["limits"] == {"nvidia.com/gpu": 0}


def test_the_validator_refuses_a_broken_rendered_job(k8s_deployed):
    pool, _, _ = k8s_deployed
    kept = _as_the_api_server_keeps_it(_render_job(pool, "retrain"))
    typo = copy.deepcopy(kept)
    c = typo["spec"]["template"]["spec"]["containers"][0]
    c["resource"] = c.pop("resources")  # misspelt: the GPU request would be dropped
    wrong = copy.deepcopy(kept)
    wrong["spec"]["backoffLimit"] = "none"
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_deploy_refuses_a_pool_of_another_type_in_one_line(k8s_deployed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    _, env, _ = k8s_deployed
    name = f"lepton-proc-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name=name, type="process"))
    try:
        r = run_cli(["deploy", "--pool-type", "kubernetes", "--pool", name], env, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and f"work pool {name!r} is a process pool" in errors[0], r.stderr[-2000:]
        with get_client(sync_client=True) as c:
            assert not [d for d in c.read_deployments() if d.work_pool_name == name]
    finally:
        with get_client(sync_client=True) as c:
            c.delete_work_pool(name)


def test_deploy_refuses_a_kubernetes_pool_whose_template_would_drop_the_gpu_request(k8s_deployed):
    """A pool made from prefect-kubernetes's stock template has no `gpu_count`: the
    GPU request would be dropped without a word, so deploy stops and names it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_kubernetes.worker import KubernetesWorker

    _, env, _ = k8s_deployed
    name = f"lepton-stock-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as c:
        c.create_work_pool(
            WorkPoolCreate(
                name=name, type="kubernetes", base_job_template=KubernetesWorker.get_default_base_job_template()
            )
        )
    try:
        r = run_cli(["deploy", "--pool-type", "kubernetes", "--pool", name], env, timeout=120)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode != 0 and len(errors) == 1, r.stderr[-2000:]
        assert f"work pool {name!r} has no job variable gpu_count" in errors[0]
        assert f"prefect work-pool update {name} --base-job-template" in errors[0]
        with get_client(sync_client=True) as c:
            assert not [d for d in c.read_deployments() if d.work_pool_name == name]
    finally:
        with get_client(sync_client=True) as c:
            c.delete_work_pool(name)
