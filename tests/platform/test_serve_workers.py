"""`lepton serve --workers 2` as a user runs it (a subprocess on a free port of 127.0.0.1,
a real champion on a real registry): both workers answer on the one port, their metrics
add up, a promotion under load moves every worker to the new version with zero errors,
and a worker killed under load is replaced while only its requests in flight fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lepton_core.params import DataParams, TrainParams

pytestmark = pytest.mark.slow

FAST = TrainParams(epochs=8, width=16, patience=3)


class Workers:
    """`lepton serve --workers N` in a subprocess; stopped (SIGTERM to the PID it has) on exit."""

    def __init__(self, tmp_path: Path, env: dict[str, str], n: int = 2, poll_seconds: float = 0.3):
        from effects.runtime.procs import free_port

        self.n, self.port = n, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_folder = tmp_path / "predictions"
        self.stderr = tmp_path / "serve.stderr"
        cmd = [sys.executable, "-c", "from lepton.cli import main; main()", "serve", "--workers", str(n)]
        cmd += ["--port", str(self.port), "--set", f"serve.poll_seconds={poll_seconds}"]
        cmd += ["--set", "serve.log_flush_seconds=0.2"]
        self.cmd = cmd
        self.env = {**os.environ, **env, "LEPTON_PREDICTION_LOG": str(self.log_folder)}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Workers:
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.env["LEPTON_PROJECT_DIR"], stdout=err, stderr=err
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr.read_text()
            try:
                if len(self.versions()) == self.n and self.request("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise AssertionError(f"the workers did not get ready: {self.stderr.read_text()}")

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        pids = set(self.versions_or_none() or {})
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the server did not stop on SIGTERM") from None
        from effects.runtime.procs import pid_alive

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(pid_alive(int(p)) for p in pids):
            time.sleep(0.1)
        assert not [p for p in pids if pid_alive(int(p))], "a worker outlived the server"

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict | str]:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def predict(self, x) -> tuple[int, dict | str]:
        return self.request("POST", "/v1/predict", json.dumps({"instances": np.asarray(x).tolist()}).encode())

    def metrics(self) -> list:
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.request("GET", "/metrics")
        assert status == 200 and isinstance(text, str)
        return [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def versions(self) -> dict[str, str]:
        """The version each live worker has loaded, by PID (from /metrics)."""
        return {s.labels["pid"]: str(int(s.value)) for s in self.metrics() if s.name == "lepton_model_version"}

    def versions_or_none(self) -> dict[str, str] | None:
        try:
            return self.versions()
        except (OSError, AssertionError):
            return None


def _value(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _answered_by(samples: list) -> dict[str, float]:
    return {s.labels["pid"]: s.value for s in samples if s.name == "lepton_worker_requests_total"}


class Load:
    """Client threads sending one-instance requests, each on a new connection, until stopped;
    every answer's (start time, version), every failure."""

    def __init__(self, srv: Workers, x: np.ndarray, clients: int = 4):
        self.srv, self.x = srv, x
        self.answers: list[tuple[float, str]] = []
        self.errors: list = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]

    def _run(self, k: int) -> None:
        i = k
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, out = self.srv.predict(self.x[i % len(self.x)][None])
            except OSError as e:  # the connection went down with its worker
                self.errors.append(repr(e))
            else:
                if status == 200 and isinstance(out, dict):
                    self.answers.append((t0, out["version"]))
                else:
                    self.errors.append((status, out))
            i += len(self.threads)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture(scope="module")
def champion(lepton_env, prefect_server):
    from effects.data.dvc_store import dataset_path
    from flows.retrain import retrain
    from lepton_core.data.prepare import read_prepared

    first = retrain(data=DataParams(), train=FAST, progress=False)
    assert first["decision"]["promoted"]
    return first, read_prepared(dataset_path(first["data_version"]))


def test_two_workers_answer_on_one_port_and_their_metrics_add_up(champion, lepton_env, tmp_path):
    first, prepared = champion
    x, y = prepared.x["test"], prepared.y["test"]
    with Workers(tmp_path, lepton_env[1]) as srv:
        assert set(srv.versions().values()) == {first["version"]}
        sent, ok, errors = 240, [], []

        def client(k: int) -> None:
            for i in range(k, sent, 8):
                status, out = srv.predict(x[i % len(x)][None])
                (ok.append((i, out)) if status == 200 else errors.append((status, out)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        assert len(ok) == sent
        labels = {i: out["labels"][0] for i, out in ok}
        acc = np.mean([labels[i] == y[i % len(x)] for i in labels])
        assert acc > 0.8  # the champion's answers, from whichever worker
        for _ in range(3):
            assert srv.request("POST", "/v1/predict", b"{")[0] == 400

        # each worker sets its own log gauges every second: wait for the flushed totals
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = srv.metrics()
            if _value(m, "lepton_prediction_log_written_rows") == sent:
                break
            time.sleep(0.2)
        answered = _answered_by(m)
        assert len(answered) == 2 and min(answered.values()) > 0, answered  # both workers answered
        assert set(answered) == set(srv.versions())
        # summed over the workers: every request counted once
        assert _value(m, "lepton_requests_total", code="200") == sent
        assert _value(m, "lepton_requests_total", code="400") == 3
        assert _value(m, "lepton_instances_total") == sent
        assert _value(m, "lepton_request_seconds_count") == sent
        assert _value(m, "lepton_http_request_seconds_count", route="/v1/predict") == sent + 3
        assert sum(answered.values()) == _value(m, "lepton_http_request_seconds_count")
        assert _value(m, "lepton_batch_size_sum") == sent
        assert _value(m, "lepton_prediction_log_written_rows") == sent
        assert _value(m, "lepton_model_loaded") == 1
        assert {s.labels["pid"] for s in m if s.name == "lepton_worker_resident_memory_bytes"} == set(answered)

    # one prediction log: both workers' parts side by side, every answered instance once
    import pandas as pd

    parts = sorted(srv.log_folder.glob("*.parquet"))
    df = pd.concat([pd.read_parquet(p) for p in parts])
    assert len(df) == sent and df["request_id"].nunique() == sent
    assert set(df["request_id"]) == {out["request_id"] for _, out in ok}
    assert not list(srv.log_folder.glob(".*"))  # no half-written part


def test_a_promotion_under_load_moves_every_worker_with_zero_errors(champion, lepton_env, tmp_path):
    from flows.registry import promote_flow
    from flows.retrain import retrain

    first, prepared = champion
    poll = 0.3
    with Workers(tmp_path, lepton_env[1], poll_seconds=poll) as srv, Load(srv, prepared.x["test"]) as load:
        before = srv.versions()
        assert len(before) == 2
        second = retrain(data=DataParams(), train=TrainParams(epochs=2, width=8), progress=False)
        if not second["decision"]["promoted"]:
            assert promote_flow(version=second["version"], force=True)["promoted"]
        moved = time.monotonic()
        deadline = moved + 30
        first_seen, all_moved = None, None
        while time.monotonic() < deadline:
            now = srv.versions()
            if first_seen is None and second["version"] in now.values():
                first_seen = time.monotonic()
            if len(now) == 2 and set(now.values()) == {second["version"]}:
                all_moved = time.monotonic()
                break
            time.sleep(0.05)
        assert all_moved is not None, srv.versions()
        assert first_seen is not None
        time.sleep(1.0)  # more traffic on the new version
        load.__exit__()
        m = srv.metrics()
        assert set(srv.versions()) == set(before)  # the same two workers, swapped in place
    assert not load.errors, load.errors[:3]
    seen = [v for _, v in load.answers]
    assert set(seen) == {first["version"], second["version"]}
    # every worker followed within the poll interval of the other (and a model load)
    assert all_moved - first_seen <= poll + 5
    # once every worker had the new version, no request started later got the old one
    assert not [v for t, v in load.answers if t > all_moved and v != second["version"]]
    assert _value(m, "lepton_model_swaps_total") == 2  # one per worker


def test_a_killed_worker_is_replaced_and_only_its_requests_in_flight_fail(champion, lepton_env, tmp_path):
    from effects.runtime.procs import pid_alive

    prepared = champion[1]
    clients = 4
    with Workers(tmp_path, lepton_env[1]) as srv, Load(srv, prepared.x["test"], clients) as load:
        time.sleep(1.0)
        before = srv.versions()
        victim = sorted(before)[0]
        os.kill(int(victim), signal.SIGKILL)  # a worker of the server this test started
        deadline = time.monotonic() + 60
        after: dict[str, str] = {}
        while time.monotonic() < deadline:
            after = srv.versions()
            if len(after) == 2 and victim not in after:
                break
            time.sleep(0.1)
        assert len(after) == 2 and victim not in after, after  # replaced, the dead one's series gone
        (newcomer,) = set(after) - set(before)
        assert pid_alive(int(newcomer)) and not pid_alive(int(victim))
        assert set(after.values()) == set(before.values())  # the replacement loaded the champion
        # the replacement takes its share of the traffic
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _answered_by(srv.metrics()).get(newcomer):
            time.sleep(0.2)
        time.sleep(0.5)
        load.__exit__()
        m = srv.metrics()
        # the supervisor itself killed outright: its workers end with it, none serves on as an orphan
        workers = [int(p) for p in srv.versions()]
        assert srv.proc is not None
        srv.proc.kill()
        srv.proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(pid_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if pid_alive(p)], "workers outlived their killed supervisor"
        # its metrics folder is left behind (nothing ran to remove it) until the next start removes it
        from lepton.cli.serving import _metrics_dir

        home = Path(lepton_env[1]["LEPTON_HOME"])
        left = home / "serve" / "metrics" / str(srv.proc.pid)
        assert left.is_dir()
        with _metrics_dir(home) as fresh:
            assert not left.exists() and Path(fresh).is_dir()
        assert not Path(fresh).exists()
    assert _answered_by(m).get(newcomer, 0) > 0
    assert victim in _answered_by(m)  # a dead worker's counts stay in the sums
    # each client had at most one request in flight on the killed worker
    assert len(load.errors) <= clients, load.errors
    assert all(isinstance(e, str) for e in load.errors), load.errors  # dropped connections, never an HTTP error
    ok = len(load.answers)
    assert ok > 50
    # a request the killed worker counted may have died before its answer left
    assert ok <= _value(m, "lepton_requests_total", code="200") <= ok + len(load.errors)


def test_lepton_up_starts_the_model_server_with_its_workers(tmp_path, monkeypatch):
    """`lepton up --serve-workers 2`'s model server: the stack's own start of `lepton
    serve` (no registry runs here: the workers answer /healthz and their metrics, and
    /readyz says 503 until a model loads)."""
    from effects.runtime import stack_state
    from effects.runtime.procs import free_port, stop_group
    from effects.runtime.settings import get_settings
    from lepton import stack

    monkeypatch.setenv("LEPTON_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    s = get_settings()
    stack_state.stack_dir(s.home).mkdir(parents=True)
    ports = {k: free_port() for k in ("prefect", "mlflow", "s3", "serve")}
    record = {"up": True, "db_url": None, "bucket": "lepton", "pool": "lepton-pool", "sse": None, "auth": True}
    st = stack.StackState.from_record({**record, "ports": ports, "pids": {}})
    go = stack._Starter(s, st, "", "", lambda line: None)
    go.serve_workers = 2
    pid = go.serve()
    try:
        # read once the child has exec'd `lepton serve` (between fork and exec it reads as
        # the parent, and empty while exec replaces it)
        until, cmdline = time.monotonic() + 10, [b""]
        while time.monotonic() < until and b"serve" not in cmdline:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            time.sleep(0.05)
        assert cmdline[-3:-1] == [b"--workers", b"2"], cmdline
        srv = Workers.__new__(Workers)
        srv.url = f"http://127.0.0.1:{ports['serve']}"
        deadline, memory = time.monotonic() + 120, set()
        while time.monotonic() < deadline and len(memory) < 2:
            try:
                samples = srv.metrics()
                memory = {x.labels["pid"] for x in samples if x.name == "lepton_worker_resident_memory_bytes"}
            except OSError:
                pass
            time.sleep(0.3)
        assert len(memory) == 2, (tmp_path / "home" / "stack" / "logs" / "serve.log").read_text()
        assert srv.request("GET", "/healthz")[0] == 200
        assert srv.request("GET", "/readyz")[0] == 503
        assert _value(srv.metrics(), "lepton_model_loaded") == 0
    finally:
        stop_group(pid, 15)
