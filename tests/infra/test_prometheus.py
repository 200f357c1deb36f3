"""The serving alerts: infra/prometheus/rules.yml checked and unit-tested by Debian's
`promtool` (every rule firing and not firing), and the Prometheus and Alertmanager
configurations `lepton up` writes checked by `promtool` and `amtool`. `make test`
installs the packages (prometheus, prometheus-alertmanager) when they are missing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lepton import watchers

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "infra" / "prometheus" / "rules_test.yml"


def _tool(name: str) -> str:
    exe = shutil.which(name)
    assert exe, f"{name} is not installed: `make test` installs Debian's prometheus and prometheus-alertmanager"
    return exe


def _run(*cmd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def test_the_rules_file_is_valid_and_its_unit_tests_pass():
    r = _run(_tool("promtool"), "check", "rules", RULES)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr
    r = _run(_tool("promtool"), "test", "rules", RULES_TEST)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_rule_has_a_firing_and_a_not_firing_case():
    rules = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert rules == [
        "LeptonServeDown",
        "LeptonServeErrorRatio",
        "LeptonServeLatencyP95",
        "LeptonPredictionLogDropping",
        "LeptonNoModelLoaded",
    ]
    cases: dict[str, set[bool]] = {}
    for t in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in t["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert cases == dict.fromkeys(rules, {True, False})


def test_a_rule_with_a_mistake_is_refused(tmp_path):
    doc = yaml.safe_load(RULES.read_text())
    doc["groups"][0]["rules"][1]["expr"] = "sum(rate(lepton_requests_total[5m]) > "  # cut short
    bad = tmp_path / "rules.yml"
    bad.write_text(yaml.safe_dump(doc))
    r = _run(_tool("promtool"), "check", "rules", bad)
    assert r.returncode != 0 and "parse error" in (r.stdout + r.stderr), r.stdout + r.stderr
    # and a wrong expectation fails promtool's unit tests: they can fail
    wrong = yaml.safe_load(RULES_TEST.read_text())
    wrong["rule_files"] = [str(RULES)]
    wrong["tests"][0]["input_series"][0]["values"] = "1 1 1x12"  # the server never goes down
    (tmp_path / "wrong_test.yml").write_text(yaml.safe_dump(wrong))
    r = _run(_tool("promtool"), "test", "rules", tmp_path / "wrong_test.yml")
    assert r.returncode != 0 and "LeptonServeDown" in r.stderr and "FAILED" in r.stderr, r.stdout + r.stderr


def test_the_prometheus_config_lepton_up_writes_passes_promtool(tmp_path):
    config = watchers.prometheus_config(tmp_path, {"prometheus": 19090, "alertmanager": 19093, "serve": 18000})
    r = _run(_tool("promtool"), "check", "config", config)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = yaml.safe_load(config.read_text())
    assert doc["scrape_configs"][0]["job_name"] == watchers.SERVE_JOB == "lepton-serve"  # what the rules name
    assert doc["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:18000"]
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert (tmp_path / "prometheus" / "rules.yml").read_text() == RULES.read_text()


@pytest.mark.parametrize(
    "url, kind",
    [
        ("http://127.0.0.1:9/hook", "webhook_configs"),
        ("https://hooks.slack.com/services/T000/B000/XXXX", "slack_configs"),
        (None, None),
    ],
)
def test_the_alertmanager_config_lepton_up_writes_passes_amtool(tmp_path, monkeypatch, url, kind):
    monkeypatch.delenv("LEPTON_ALERT_FORMAT", raising=False)
    monkeypatch.delenv("LEPTON_ALERT_WEBHOOK", raising=False)
    from effects.runtime.stack_state import set_alert_webhook

    set_alert_webhook(tmp_path, url)
    config = watchers.alertmanager_config(tmp_path, tmp_path / "stack")
    r = _run(_tool("amtool"), "check-config", config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert oct(config.stat().st_mode & 0o777) == "0o600"  # it holds the webhook URL
    receiver = yaml.safe_load(config.read_text())["receivers"][0]
    if kind is None:
        assert receiver == {"name": "lepton"}  # nowhere to send: alerts stay in its API
    else:
        assert receiver[kind][0]["send_resolved"] is True
        assert url in config.read_text()


def test_the_watchers_commands_keep_to_loopback_and_turn_the_cluster_port_off(tmp_path):
    cmd = watchers.alertmanager_command("am", tmp_path / "alertmanager.yml", 19093)
    assert "--web.listen-address=127.0.0.1:19093" in cmd and "--cluster.listen-address=" in cmd
    cmd = watchers.prometheus_command("prom", tmp_path / "prometheus.yml", 19090)
    assert "--web.listen-address=127.0.0.1:19090" in cmd
    cmd = watchers.evidently_command("evidently", tmp_path / "ws", 18085)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--secret" not in cmd  # the secret: environment only
