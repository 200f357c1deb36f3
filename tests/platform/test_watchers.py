"""`lepton up`'s watching services (lepton.watchers) without the rest of the stack:
the real Prometheus, Alertmanager and `evidently ui` started by `_Starter.watch` in
a temporary home, kept and reloaded by a second `up`, listed by `lepton status`'s
health, stopped by `lepton down`; and a machine without Debian's packages, where the
stack runs without them and says so. The whole chain on a live stack is
tests/live/test_live_watchers.py."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from effects.runtime import stack_state
from effects.runtime.procs import free_port, pid_alive
from lepton import stack, watchers
from lepton.stack import StackState

RECORD = {"up": True, "db_url": None, "bucket": "lepton", "pool": "lepton-pool", "sse": None, "auth": True}


@pytest.fixture
def settings(tmp_path, monkeypatch):
    from effects.runtime.settings import get_settings

    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LEPTON_ALERT_WEBHOOK", raising=False)
    for name in watchers.WATCHERS:  # no default ports here: tests run beside a user's stack
        monkeypatch.setenv(f"LEPTON_{name.upper()}_PORT", str(free_port()))
    s = get_settings()
    stack_state.stack_dir(s.home).mkdir(parents=True)
    return s


def _state(settings) -> StackState:
    ports = {k: free_port() for k in ("prefect", "mlflow", "s3", "serve")}
    st = StackState.from_record({**RECORD, "ports": ports, "pids": {}})
    st.write(settings.home)
    return st


@pytest.fixture
def started(settings):
    """Stops, at the end, whatever the test's `up` started (by the recorded PIDs)."""
    yield
    stack.down(settings)


def _config(url: str) -> str:
    with urllib.request.urlopen(f"{url}/api/v2/status", timeout=5) as r:
        return json.loads(r.read())["config"]["original"]


def test_watch_starts_all_three_then_keeps_them_and_reloads_a_new_webhook(settings, started):
    st, said = _state(settings), []
    stack_state.set_alert_webhook(settings.home, "http://127.0.0.1:9/first")
    stack._Starter(settings, st, "", "", said.append).watch()
    st.write(settings.home)
    pids, ports = dict(st.watch["pids"]), st.watch["ports"]
    assert [line.split(" (")[0] for line in said] == [
        "starting prometheus",
        "starting alertmanager",
        "starting evidently",
    ]
    assert all(pid_alive(p) for p in pids.values())
    health = stack.health(settings)
    for name in watchers.WATCHERS:
        assert health[name] == {
            "url": f"http://127.0.0.1:{ports[name]}",
            "running": True,
            "healthy": True,
            "optional": True,
        }
    am = health["alertmanager"]["url"]
    assert "http://127.0.0.1:9/first" in _config(am)
    # a second `up` with a new webhook: the same processes, the new configuration
    stack_state.set_alert_webhook(settings.home, "http://127.0.0.1:9/second")
    st, said = StackState.read(settings.home), []
    go = stack._Starter(settings, st, "", "", said.append)
    go.watch()
    assert said == [] and st.watch["pids"] == pids and st.watch["ports"] == ports
    assert go.kept == list(watchers.WATCHERS)
    deadline = time.monotonic() + 10
    while "second" not in _config(am) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "http://127.0.0.1:9/second" in _config(am) and "first" not in _config(am)
    st.write(settings.home)
    assert set(stack.down(settings)) >= set(watchers.WATCHERS)
    assert not any(pid_alive(p) for p in pids.values())


def test_without_the_packages_the_stack_says_so_and_runs_the_rest(settings, started, monkeypatch):
    real = watchers.binary
    monkeypatch.setattr(watchers, "binary", lambda name: real(name) if name == "evidently" else None)
    st, said = _state(settings), []
    stack._Starter(settings, st, "", "", said.append).watch()
    st.write(settings.home)
    assert said[:2] == [
        "prometheus: not installed (Debian package prometheus; the stack works without it)",
        "alertmanager: not installed (Debian package prometheus-alertmanager; the stack works without it)",
    ]
    assert said[2].startswith("starting evidently (http://127.0.0.1:")
    assert st.watch["pids"]["prometheus"] == 0 and pid_alive(st.watch["pids"]["evidently"])
    health = stack.health(settings)
    assert health["prometheus"] == {
        "url": "",
        "running": False,
        "healthy": False,
        "optional": True,
        "problem": "not installed (Debian package prometheus; the stack works without it)",
    }
    assert health["evidently"]["healthy"] is True
    # stopped, and its port taken meanwhile: the next `up` gives it another one
    old = st.watch["ports"]["evidently"]
    stack.down(settings)
    monkeypatch.delenv("LEPTON_EVIDENTLY_PORT")  # asked for by name, a taken port would be an error
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old server's TIME_WAITs
        squatter.bind(("127.0.0.1", old))
        squatter.listen()
        st = StackState.read(settings.home)
        stack._Starter(settings, st, "", "", said.append).watch()
        st.write(settings.home)
        assert st.watch["ports"]["evidently"] != old and stack.health(settings)["evidently"]["healthy"] is True
