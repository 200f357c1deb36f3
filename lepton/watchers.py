"""The stack's watching half: Prometheus (scrapes the model server, evaluates
`infra/prometheus/rules.yml`), Alertmanager (sends what fires to the alert webhook)
and Evidently's UI (the monitor's snapshots over time).

Prometheus and Alertmanager come from Debian's packages (`prometheus`,
`prometheus-alertmanager`); `lepton up` starts them when their binaries are on PATH,
and the stack works without them, saying so. Evidently's UI ships with the Python
packages, so it always runs. Each listens on 127.0.0.1 only (Evidently's reads and
Prometheus's whole API are open), keeps its data under `<home>/stack/`, and has a
port of its own chosen once (the default when free, else any free one) and kept in
the stack's record. Alertmanager's cluster port is off (a single node).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from effects.runtime.procs import free_port, port_free
from effects.runtime.stack_state import alert_format, alert_webhook
from lepton_core.fileio import atomic_write

WATCHERS = ("prometheus", "alertmanager", "evidently")
DEFAULT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "evidently": 8085}
PACKAGES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}
SERVE_JOB = "lepton-serve"  # the scrape job of the model server; the rules name it
SCRAPE_SECONDS = 5  # one local target: cheap, and an outage shows within seconds
RULES = Path(__file__).resolve().parents[1] / "infra" / "prometheus" / "rules.yml"
# Debian's Alertmanager reads its notification templates from the package's folder
AM_TEMPLATE = Path("/usr/share/prometheus/alertmanager/default.tmpl")


def binary(name: str) -> str | None:
    """The watcher's executable, or None where its package is not installed."""
    if name == "evidently":  # installed with Lepton, beside this Python
        exe = Path(sys.executable).parent / "evidently"
        return str(exe) if exe.exists() else shutil.which("evidently")
    return shutil.which(BINARIES[name])


def evidently_workspace(home: Path) -> Path:
    """The Evidently workspace folder `evidently ui` serves (the monitor writes to it
    through the UI's API while the stack runs, directly without a stack)."""
    return home / "monitor" / "evidently"


def missing_line(name: str) -> str:
    package = f"Debian package {PACKAGES[name]}" if name in PACKAGES else "the evidently Python package"
    return f"not installed ({package}; the stack works without it)"


def choose_ports(kept: Mapping[str, int], taken: set[int]) -> dict[str, int]:
    """Each watcher's port: the one kept from the last `up`, else $LEPTON_<NAME>_PORT,
    else the default when free, else any free port."""
    out: dict[str, int] = {}
    for name, default in DEFAULT_PORTS.items():
        env = os.environ.get(f"LEPTON_{name.upper()}_PORT", "")
        port = int(kept.get(name) or (env if env.isdigit() else 0) or 0)
        if not port:
            port = default if default not in taken and port_free(default) else free_port(avoid=taken)
        taken.add(port)
        out[name] = port
    return out


# ---------------------------------------------------------------- configuration
def prometheus_config(home_stack: Path, ports: Mapping[str, int]) -> Path:
    """prometheus.yml under <stack>/prometheus, with a copy of the rules beside it."""
    d = home_stack / "prometheus"
    (d / "data").mkdir(parents=True, exist_ok=True)
    atomic_write(d / "rules.yml", RULES.read_text(), fsync=False)
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(d / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ports['alertmanager']}"]}]}]},
        "scrape_configs": [
            {
                "job_name": SERVE_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{ports['serve']}"]}],
            }
        ],
    }
    atomic_write(d / "prometheus.yml", yaml.safe_dump(config, sort_keys=False), fsync=False)
    return d / "prometheus.yml"


def alertmanager_receiver(url: str | None) -> dict:
    """The one receiver: the alert webhook (Slack's format for a Slack URL, else
    Alertmanager's own JSON), resolved alerts included; none without a webhook."""
    if not url:
        return {"name": "lepton"}
    if alert_format(url) == "slack":
        text = "{{ range .Alerts }}[{{ .Status | toUpper }}] {{ .Labels.alertname }}: "
        text += "{{ .Annotations.summary }}\n{{ end }}"
        return {"name": "lepton", "slack_configs": [{"api_url": url, "send_resolved": True, "text": text}]}
    return {"name": "lepton", "webhook_configs": [{"url": url, "send_resolved": True}]}


def alertmanager_config(home: Path, home_stack: Path) -> Path:
    """alertmanager.yml (0600: it holds the webhook URL) under <stack>/alertmanager."""
    d = home_stack / "alertmanager"
    (d / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "route": {
            "receiver": "lepton",
            "group_by": ["alertname"],
            "group_wait": "5s",
            "group_interval": "10s",
            "repeat_interval": "4h",
        },
        "receivers": [alertmanager_receiver(alert_webhook(home))],
        **({"templates": [str(AM_TEMPLATE)]} if AM_TEMPLATE.exists() else {}),
    }
    atomic_write(d / "alertmanager.yml", yaml.safe_dump(config, sort_keys=False), mode=0o600, fsync=False)
    return d / "alertmanager.yml"


# ---------------------------------------------------------------- commands
def prometheus_command(exe: str, config: Path, port: int) -> list[str]:
    return [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={config.parent / 'data'}",
        "--storage.tsdb.retention.time=15d",
        f"--web.listen-address=127.0.0.1:{port}",
    ]


def alertmanager_command(exe: str, config: Path, port: int) -> list[str]:
    return [
        exe,
        f"--config.file={config}",
        f"--storage.path={config.parent / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # a single node: no gossip port on 0.0.0.0:9094
    ]


def evidently_command(exe: str, workspace: Path, port: int) -> list[str]:
    # the write secret goes through the environment (EVIDENTLY_SECRET), never argv
    return [exe, "ui", "--host", "127.0.0.1", "--port", str(port), "--workspace", str(workspace)]


# ---------------------------------------------------------------- health
def _get_json(url: str, timeout: float = 3.0) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def prometheus_healthy(url: str) -> bool:
    """It answers a query (its storage and query engine work), not just a port."""
    doc = _get_json(f"{url}/api/v1/query?query=vector(1)")
    return isinstance(doc, dict) and doc.get("status") == "success"


def alertmanager_healthy(url: str) -> bool:
    """It answers its status with its loaded configuration."""
    doc = _get_json(f"{url}/api/v2/status")
    return isinstance(doc, dict) and bool(doc.get("config", {}).get("original"))


def evidently_healthy(url: str) -> bool:
    """It lists its workspace's projects (reads its storage)."""
    return isinstance(_get_json(f"{url}/api/projects"), list)


@dataclass(frozen=True)
class Watcher:
    name: str
    url: str
    healthy: Callable[[], bool]


def watchers(ports: Mapping[str, int]) -> list[Watcher]:
    u = {n: f"http://127.0.0.1:{ports[n]}" for n in WATCHERS if ports.get(n)}
    checks: dict[str, Callable[[str], bool]] = {
        "prometheus": prometheus_healthy,
        "alertmanager": alertmanager_healthy,
        "evidently": evidently_healthy,
    }
    return [Watcher(n, u[n], functools.partial(checks[n], u[n])) for n in WATCHERS if n in u]
