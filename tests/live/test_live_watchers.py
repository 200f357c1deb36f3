"""The watching services on the live stack (`lepton up`): Prometheus scraping the
model server, Alertmanager sending to the stack's alert webhook, Evidently's UI; each
on loopback, named by `lepton status`, restarted by `lepton up`; and the whole chain:
model server stopped -> Prometheus -> Alertmanager -> "server down" at the webhook,
started again -> "resolved"."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import psutil
import pytest

from effects.runtime.procs import pid_alive

pytestmark = pytest.mark.slow

WATCHERS = ("prometheus", "alertmanager", "evidently")


@pytest.fixture(scope="module")
def live(live_sqlite):
    return live_sqlite


def _get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _watch(live) -> dict:
    return live.state()["watch"]


def _one_of_each(live) -> None:
    """Each watcher of this home runs once, as its recorded PID (a restart of the stack
    must not leave the old ones running beside the new)."""
    home = str(live.home)
    found: dict[str, list[int]] = {n: [] for n in WATCHERS}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if home not in cmd:
            continue
        for name, marker in (
            ("prometheus", "prometheus.yml"),
            ("alertmanager", "alertmanager.yml"),
            ("evidently", " ui "),
        ):
            if marker in cmd:
                found[name].append(proc.info["pid"])
    pids = _watch(live)["pids"]
    assert found == {n: [pids[n]] for n in WATCHERS}, found


def _alert(body: str, name: str, status: str) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("status") == status
        and any(a.get("labels", {}).get("alertname") == name for a in doc.get("alerts", []))
    )


def test_status_lists_the_watchers_and_each_listens_on_loopback_only(live):
    r = live.cli("status", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    services = json.loads(r.stdout)["services"]
    w = _watch(live)
    for name in WATCHERS:
        assert services[name] == {
            "url": f"http://127.0.0.1:{w['ports'][name]}",
            "running": True,
            "healthy": True,
            "optional": True,
        }
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(w["pids"][name]).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening and all(ip == "127.0.0.1" for ip, _ in listening), (name, listening)
        if name == "alertmanager":  # its cluster port is off: only the web port listens
            assert listening == {("127.0.0.1", w["ports"]["alertmanager"])}
    _one_of_each(live)
    # Prometheus scrapes the model server: its CPU seconds are there to price predictions
    prom = services["prometheus"]["url"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = _get(f"{prom}/api/v1/query?query=process_cpu_seconds_total%7Bjob%3D%22lepton-serve%22%7D")["data"]
        if res["result"]:
            break
        time.sleep(1)
    assert float(res["result"][0]["value"][1]) > 0
    targets = _get(f"{prom}/api/v1/targets")["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["health"]) for t in targets] == [("lepton-serve", "up")]
    assert targets[0]["scrapeUrl"] == f"{live.serve}/metrics"
    # Alertmanager sends to the webhook `lepton up --alert-webhook` gave
    am = _get(f"{services['alertmanager']['url']}/api/v2/status")
    assert live.receiver.url in am["config"]["original"]


def test_server_down_reaches_the_webhook_and_its_return_resolves_it(live):
    """The chain, and `lepton up` restarting a watcher that died (Evidently's UI)."""
    since = len(live.receiver.posts)
    state = live.state()
    serve_pid, ui_pid = state["pids"]["serve"], state["watch"]["pids"]["evidently"]
    os.killpg(serve_pid, signal.SIGTERM)
    os.killpg(ui_pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while (pid_alive(serve_pid) or pid_alive(ui_pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    down = live.receiver.wait_for(lambda t: _alert(t, "LeptonServeDown", "firing"), timeout=120, since=since)
    assert "Lepton model server down" in down
    # the UI being down is named without failing the command (nothing else needs it)
    r = live.cli("status")
    assert r.returncode != 0 and "serve" in r.stderr  # the model server is part of the stack: status fails
    live.up()
    r = live.cli("status", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    services = json.loads(r.stdout)["services"]
    assert services["evidently"]["healthy"] and services["serve"]["healthy"]
    assert live.state()["watch"]["pids"]["evidently"] != ui_pid
    _one_of_each(live)
    live.receiver.wait_for(lambda t: _alert(t, "LeptonServeDown", "resolved"), timeout=120, since=since)


def test_a_dead_ui_is_named_by_status_which_still_answers(live):
    state = live.state()
    ui_pid = state["watch"]["pids"]["evidently"]
    os.killpg(ui_pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while pid_alive(ui_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    r = live.cli("status")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "evidently is down" in r.stderr and "`lepton up` starts it again" in r.stderr
    assert "@champion" in r.stdout  # the registry still shows
    ports = _watch(live)["ports"]
    live.up()
    assert json.loads(live.cli("status", "--json").stdout)["services"]["evidently"]["healthy"] is True
    assert _watch(live)["ports"] == ports  # kept across restarts: bookmarks and the worker's env stay right
    _one_of_each(live)
