"""The watchers of infra/ (Prometheus, Alertmanager, Evidently's UI) against what
`lepton up` runs (lepton/watchers.py): the same scrape job, rules, route and receiver,
checked by Debian's `promtool` and `amtool`; Alertmanager's start script run here for
each kind of webhook; and none of them reachable beyond 127.0.0.1 (compose) or the
cluster (Kubernetes). Static: no Docker engine and no cluster run here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lepton import watchers

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
RULES = INFRA / "prometheus" / "rules.yml"
COMPOSE_PROMETHEUS = INFRA / "prometheus" / "prometheus.compose.yml"
AM_CONFIG = "/alertmanager/alertmanager.yml"  # where the script writes it, in the data volume
# compose service -> the watcher of `lepton up` it is
COMPOSE_WATCHERS = {"prometheus": "prometheus", "alertmanager": "alertmanager", "evidently-ui": "evidently"}


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _k8s(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name)
    return found[0]


def _container(docs: list[dict], name: str) -> dict:
    (c,) = _one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
    return c


def _tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} is not installed: `make test` installs Debian's prometheus and prometheus-alertmanager"
    return exe


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


# ---------------------------------------------------------------- Prometheus


def _promtool_check(config_text: str, container_rules: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`promtool check config` on a copy whose rules path is the repository's file."""
    assert container_rules in config_text
    copy = tmp_path / "prometheus.yml"
    copy.write_text(config_text.replace(container_rules, str(RULES)))
    return subprocess.run([_tool("promtool"), "check", "config", str(copy)], capture_output=True, text=True, timeout=60)


def _without_targets(config: dict) -> dict:
    """A configuration with its addresses (scrape targets, Alertmanager, rules path) taken out."""
    out = {**config, "rule_files": ["<rules>"]}
    out["alerting"] = {"alertmanagers": [{"static_configs": "<alertmanager>"}]}
    out["scrape_configs"] = [
        {k: v for k, v in job.items() if not k.endswith(("static_configs", "sd_configs"))}
        for job in config["scrape_configs"]
    ]
    return out


def _live_config(tmp_path: Path) -> dict:
    path = watchers.prometheus_config(tmp_path, {"prometheus": 19090, "alertmanager": 19093, "serve": 18000})
    return yaml.safe_load(path.read_text())


def test_compose_prometheus_scrapes_the_model_server_as_lepton_up_does(tmp_path):
    svc = _compose()["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", svc["image"])  # a 2.x release, pinned
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    config_path = _flag(svc["command"], "config.file")
    assert (INFRA / mounts[config_path]).resolve() == COMPOSE_PROMETHEUS
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    (rules_path,) = config["rule_files"]
    assert (INFRA / mounts[rules_path]).resolve() == RULES  # the repository's rules, as they are
    assert all(v.endswith(":ro") for v in svc["volumes"] if v.startswith("./"))
    assert _flag(svc["command"], "storage.tsdb.path") in mounts  # its data in a volume
    r = _promtool_check(COMPOSE_PROMETHEUS.read_text(), rules_path, tmp_path)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr
    assert _without_targets(config) == _without_targets(_live_config(tmp_path))
    (job,) = config["scrape_configs"]
    assert job["job_name"] == watchers.SERVE_JOB
    assert job["static_configs"] == [{"targets": ["model-server:8000"]}]
    assert "8000" in _compose()["services"]["model-server"]["command"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["alertmanager:9093"]}]


def test_promtool_refuses_a_broken_compose_config(tmp_path):
    text = COMPOSE_PROMETHEUS.read_text().replace("scrape_interval: 5s", "scrape_interval: often")
    r = _promtool_check(text, "/etc/prometheus/rules/rules.yml", tmp_path)
    assert r.returncode != 0, r.stdout


def test_the_rules_config_map_is_the_rules_file():
    cm = _one(_k8s("prometheus-rules.yaml"), "ConfigMap", "lepton-prometheus-rules")
    assert cm["data"] == {"rules.yml": RULES.read_text()}, (
        "infra/k8s/prometheus-rules.yaml differs from infra/prometheus/rules.yml: write it again "
        "with the command in its header"
    )


def test_k8s_prometheus_scrapes_every_model_server_pod(tmp_path):
    docs = _k8s("prometheus.yaml")
    c = _container(docs, "prometheus")
    assert c["image"] == _compose()["services"]["prometheus"]["image"]
    same = [a for a in _compose()["services"]["prometheus"]["command"] if not a.startswith("--config.file=")]
    assert [a for a in c["args"] if not a.startswith("--config.file=")] == same  # the config: a ConfigMap folder
    pod = _one(docs, "Deployment", "prometheus")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    sources = {v["name"]: v.get("configMap", {}).get("name") for v in pod["volumes"]}
    config_path = Path(_flag(c["args"], "config.file"))
    assert sources[mounts[str(config_path.parent)]] == "lepton-prometheus"
    text = _one(docs, "ConfigMap", "lepton-prometheus")["data"][config_path.name]
    config = yaml.safe_load(text)
    (rules_path,) = config["rule_files"]
    assert sources[mounts[str(Path(rules_path).parent)]] == "lepton-prometheus-rules"
    assert Path(rules_path).name in _one(_k8s("prometheus-rules.yaml"), "ConfigMap")["data"]
    r = _promtool_check(text, rules_path, tmp_path)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr
    assert _without_targets(config) == _without_targets(_live_config(tmp_path))
    # every model-server pod, found by DNS through a headless Service: no API access, no Operator
    (job,) = config["scrape_configs"]
    assert job["job_name"] == watchers.SERVE_JOB and set(job) == {"job_name", "dns_sd_configs"}
    (sd,) = job["dns_sd_configs"]
    (name,) = sd["names"]
    headless = _one(docs, "Service", name)["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    server = _one(_k8s("model-server.yaml"), "Deployment")["spec"]["template"]
    assert headless["selector"].items() <= server["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in server["spec"]["containers"][0]["ports"]}
    assert sd["type"] == "A" and sd["port"] == ports["http"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert not [d for d in _all_k8s() if d["apiVersion"].startswith("monitoring.coreos.com")]
    assert pod["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- Alertmanager


def _am_script() -> str:
    """The compose alertmanager service's script as its shell sees it ($$ -> $)."""
    (script,) = _compose()["services"]["alertmanager"]["command"]
    return script.replace("$$", "$")


def _render(script: str, target: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the script up to its `exec` line, writing the configuration to `target`."""
    lines = script.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("exec "))
    body = "\n".join(lines[:start]).replace(AM_CONFIG, str(target))
    return subprocess.run(
        ["sh", "-ec", body], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30
    )


def test_alertmanager_runs_the_same_script_in_compose_and_on_kubernetes():
    svc = _compose()["services"]["alertmanager"]
    assert re.fullmatch(r"prom/alertmanager:v0\.\d+\.\d+", svc["image"])
    assert svc["entrypoint"] == ["/bin/sh", "-ec"]
    c = _container(_k8s("alertmanager.yaml"), "alertmanager")
    assert c["image"] == svc["image"] and c["command"] == svc["entrypoint"]
    assert c["args"] == [_am_script()]
    exec_line = " ".join(ln.strip(" \\") for ln in _am_script().split("\nexec ", 1)[1].splitlines())
    assert exec_line.startswith("/bin/alertmanager ")
    assert '--config.file="$config"' in exec_line and f"config={AM_CONFIG}" in _am_script()
    assert "--cluster.listen-address= " in exec_line + " "  # no gossip port
    assert "--storage.path=/alertmanager" in exec_line
    assert "alertmanager-data:/alertmanager" in svc["volumes"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/alertmanager"}
    # the URL: from infra/.env in compose, from a Secret on Kubernetes, never a value
    assert svc["environment"]["LEPTON_ALERT_WEBHOOK"] == "${LEPTON_ALERT_WEBHOOK:-}"
    (env,) = [e for e in c["env"] if e["name"] == "LEPTON_ALERT_WEBHOOK"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "lepton-alert-webhook", "key": "url", "optional": True}


@pytest.mark.parametrize(
    "url, fmt, kind",
    [
        ("http://127.0.0.1:9/hook", "", "webhook_configs"),
        ("https://hooks.slack.com/services/T000/B000/XXXX", "", "slack_configs"),
        ("https://user@Hooks.Slack.COM:443/services/T000", "", "slack_configs"),
        ("https://slack.com.example.org/hook", "", "webhook_configs"),
        ("http://127.0.0.1:9/chat", "SLACK", "slack_configs"),
        ("https://hooks.slack.com/services/T000", "json", "webhook_configs"),
        ("http://127.0.0.1:9/it's", "", "webhook_configs"),
        ("", "", None),
    ],
)
def test_the_alertmanager_script_writes_what_lepton_up_writes(tmp_path, monkeypatch, url, fmt, kind):
    from effects.runtime.stack_state import set_alert_webhook

    target = tmp_path / "alertmanager.yml"
    r = _render(_am_script(), target, {"LEPTON_ALERT_WEBHOOK": url, "LEPTON_ALERT_FORMAT": fmt})
    assert r.returncode == 0, r.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"  # it holds the webhook URL
    check = subprocess.run([_tool("amtool"), "check-config", str(target)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    ours = yaml.safe_load(target.read_text())
    monkeypatch.delenv("LEPTON_ALERT_WEBHOOK", raising=False)
    monkeypatch.setenv("LEPTON_ALERT_FORMAT", fmt)
    set_alert_webhook(tmp_path / "home", url or None)
    live = yaml.safe_load(watchers.alertmanager_config(tmp_path / "home", tmp_path / "stack").read_text())
    live.pop("templates", None)  # Debian's package keeps its default template apart; the image has it built in
    assert ours == live
    (receiver,) = ours["receivers"]
    assert receiver["name"] == "lepton" and set(receiver) - {"name"} == ({kind} if kind else set())


def test_the_alertmanager_script_refuses_a_url_with_white_space(tmp_path):
    target = tmp_path / "alertmanager.yml"
    r = _render(_am_script(), target, {"LEPTON_ALERT_WEBHOOK": "http://127.0.0.1:9/a b\nroute: x"})
    assert r.returncode == 1 and "white space" in r.stderr and not target.exists()


# ---------------------------------------------------------------- Evidently's UI


def test_compose_evidently_ui_is_lepton_ups_with_the_secret_from_the_environment():
    services = _compose()["services"]
    svc = services["evidently-ui"]
    assert svc["image"] == services["model-server"]["image"]  # the Lepton image has evidently
    cmd = svc["command"]
    live = watchers.evidently_command("evidently", watchers.evidently_workspace(Path("/var/lib/lepton")), 8085)
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # inside the network; published below on loopback only
    assert [a for a in cmd if a != "0.0.0.0"] == [a for a in live if a != "127.0.0.1"]
    assert "--secret" not in cmd  # the secret: environment only, never argv
    assert "lepton-home:/var/lib/lepton" in svc["volumes"]
    assert svc["environment"]["EVIDENTLY_SECRET"].startswith("${LEPTON_EVIDENTLY_SECRET:?")
    assert svc["environment"]["DO_NOT_TRACK"] == "1"
    worker = services["prefect-worker"]["environment"]
    assert worker["LEPTON_EVIDENTLY_URL"] == "http://evidently-ui:8085"
    assert worker["LEPTON_EVIDENTLY_SECRET"] == svc["environment"]["EVIDENTLY_SECRET"]
    assert "/api/projects" in " ".join(svc["healthcheck"]["test"])


def test_k8s_evidently_ui_takes_its_secret_from_a_secret():
    docs = _k8s("evidently-ui.yaml")
    c = _container(docs, "evidently-ui")
    assert c["command"][:2] == ["evidently", "ui"] and "--secret" not in c["command"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert c["command"][c["command"].index("--port") + 1] == str(port) == "8085"
    (env,) = [e for e in c["env"] if e["name"] == "EVIDENTLY_SECRET"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "lepton-evidently", "key": "LEPTON_EVIDENTLY_SECRET"}
    workspace = c["command"][c["command"].index("--workspace") + 1]
    assert workspace in {m["mountPath"] for m in c["volumeMounts"]}
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/api/projects"
    config = _one(_k8s("config.example.yaml"), "ConfigMap", "lepton-config")["data"]
    assert config["LEPTON_EVIDENTLY_URL"] == f"http://evidently-ui:{port}"


# ---------------------------------------------------------------- who can reach them


def _all_k8s() -> list[dict]:
    resources = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    return [d for name in resources for d in _k8s(name)]


def test_compose_publishes_the_watchers_on_loopback_at_lepton_ups_ports():
    services = _compose()["services"]
    for service, name in COMPOSE_WATCHERS.items():
        port = watchers.DEFAULT_PORTS[name]
        var = f"LEPTON_{name.upper()}_PORT"  # what watchers.choose_ports reads
        assert services[service]["ports"] == [f"127.0.0.1:${{{var}:-{port}}}:{port}"], service
        assert "network_mode" not in services[service]


def test_k8s_exposes_the_watchers_inside_the_cluster_only():
    objs = _all_k8s()
    assert not [o for o in objs if o["kind"] == "Ingress"]
    for name in ("prometheus", "alertmanager", "evidently-ui"):
        assert _one(objs, "Service", name)["spec"]["type"] == "ClusterIP"
        pod = _one(objs, "Deployment", name)["spec"]["template"]["spec"]
        assert not pod.get("hostNetwork")
        for c in pod["containers"]:
            assert not [p for p in c["ports"] if "hostPort" in p], name
    assert {o["spec"].get("type", "ClusterIP") for o in objs if o["kind"] == "Service"} == {"ClusterIP"}


def test_no_webhook_url_or_evidently_secret_is_written_down():
    files = [INFRA / "compose.yaml", INFRA / "env.example", COMPOSE_PROMETHEUS, *K8S.glob("*.yaml")]
    for path in files:
        text = path.read_text()
        assert not re.search(r"hooks\.slack\.com/services/\w", text), path
        for value in re.findall(r"(?<![\w{$])LEPTON_ALERT_WEBHOOK[=:] *(\S*)", text):
            assert value in ("", "${LEPTON_ALERT_WEBHOOK:-}"), (path, value)
        for value in re.findall(r"(?<![\w{$])LEPTON_EVIDENTLY_SECRET[=:] *(\S*)", text):
            assert value.startswith(("${LEPTON_EVIDENTLY_SECRET:?", "change-me")), (path, value)
