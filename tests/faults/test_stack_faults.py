"""Faults injected into a real `lepton up` stack (one stack for the module): a service
killed under it, S3 killed while a retrain pushes its dataset, the MLflow server
killed while a run trains, the worker killed while it runs a deployment's run.
Each time: the failure names the service, nothing falls back to local state,
nothing is half-registered, and `lepton up` brings back only what died (the
survivors keep their PIDs), after which the same command succeeds or the run
resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error

import pytest

from effects.runtime.procs import pid_alive
from tests.conftest import ROOT
from tests.faults.test_training_faults import _descendants
from tests.live.conftest import Live, _running_stack

pytestmark = [pytest.mark.faults, pytest.mark.slow]

FAST = ["--set", "train.epochs=2", "--set", "train.width=16", "--no-progress"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack for the module; after its `lepton down`, no process of its home is left."""
    yield from _running_stack(tmp_path_factory, "sqlite")


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """Set up before `stack` (so torn down after its `lepton down`): no process of the
    stack's home is left, and no temporary file of an interrupted write."""
    seen: list[Live] = []
    yield seen
    from lepton import weed

    for live in seen:
        left = _processes_of(live.home, wait=30)
        assert not left, left
        sockets = [p for p in weed.grpc_sockets(live.state().get("internal")) if p.exists()]
        assert not sockets, sockets  # SeaweedFS's gRPC sockets in /tmp
        temps = [p for p in live.home.rglob("*.tmp") if ".dvc" not in p.parts]
        assert not temps, temps


def _processes_of(home, wait: float) -> list[str]:
    deadline = time.monotonic() + wait
    while True:
        left = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if str(home) in cmd or f"LEPTON_HOME={home}\0".encode() in env:
                left.append(f"{d}: {cmd[:200]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


@pytest.fixture(autouse=True)
def _watch(nothing_left_behind, stack):
    if stack not in nothing_left_behind:
        nothing_left_behind.append(stack)


def _pids(live: Live) -> dict[str, int]:
    return live.state()["pids"]


def _kill(*pids: int) -> None:
    """SIGKILL to each of `pids`; back once all are gone."""
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


def _versions(live: Live) -> list[dict]:
    r = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/search?filter=name%3D%27lepton-digits%27")
    return r.get("model_versions", [])


def _no_local_state(live: Live) -> None:
    """Nothing fell back to the local SQLite registry or a local artifact store."""
    assert not (live.home / "mlflow.db").exists()
    assert not (live.home / "mlartifacts").exists()


def _error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines, r.stdout[-2000:]
    return lines[-1]


def _up_again(live: Live, dead: str, before: dict[str, int]) -> None:
    r = live.up()
    after = _pids(live)
    for name, pid in before.items():
        if name == dead:
            assert after[name] != pid and pid_alive(after[name]), (name, before, after)
        else:
            assert after[name] == pid, f"{name} was restarted: {before} -> {after}\n{r.stderr}"
    # `up` returned: every service passed its health check (S3: a write, read and delete)
    assert f"started again: {dead}; kept: " in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("service", ["mlflow", "seaweedfs", "prefect"])
def test_a_killed_service_is_named_and_up_restarts_only_it(stack, service):
    before = _pids(stack)
    _kill(before[service])

    st = stack.cli("status", timeout=120)
    assert st.returncode != 0
    line = _error_line(st)
    assert line.startswith("error: ") and service in line and "lepton up" in line, st.stderr[-2000:]
    assert f"{service:<17} down" in st.stdout
    assert "local sqlite" not in st.stdout + st.stderr

    r = stack.cli("retrain", *FAST, timeout=300)
    assert r.returncode != 0
    line = _error_line(r)
    assert line.startswith("error: ") and service in line and "lepton up" in line, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    _no_local_state(stack)

    _up_again(stack, service, before)
    st = stack.cli("status", "--json", timeout=120)
    assert st.returncode == 0, st.stderr[-2000:]
    services = json.loads(st.stdout)["services"]
    assert all(h["healthy"] for h in services.values()), services


def _retrain_killing(live: Live, service: str, when: str, seed: int, then=None) -> subprocess.CompletedProcess:
    """A retrain (on a dataset of its own: `data.seed`, so its data step runs) during
    which `service` is killed with -9 (its whole process group) as soon as the
    retrain's output shows `when` and `then()` (if given) returns."""
    env = {
        **os.environ,
        **live.env,
        "PREFECT_LOGGING_LEVEL": "INFO",
        # the MLflow client's own retries (7, with backoff) would wait minutes for a
        # server that is gone; two are enough to show the run fails cleanly
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lepton.cli import main; main()", "retrain", *FAST, "--set", f"data.seed={seed}"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, killed, t_kill = [], False, 0.0
    try:
        for line in proc.stdout:
            out.append(line)
            if not killed and when in line:
                if then is not None:
                    then()
                # the whole server: MLflow's leader alone would leave its uvicorn serving
                os.killpg(_pids(live)[service], signal.SIGKILL)
                killed, t_kill = True, time.monotonic()
        proc.wait(timeout=600)
        print(f"{service} killed; the retrain ended {time.monotonic() - t_kill:.1f} s later")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed, "".join(out)[-3000:]
    text = "".join(out)
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, text)


def test_s3_killed_mid_push_registers_nothing_and_a_retry_after_up_succeeds(stack):
    """SeaweedFS killed as the retrain's data step starts: the DVC push fails."""
    before, versions = _pids(stack), len(_versions(stack))
    r = _retrain_killing(stack, "seaweedfs", "Beginning flow run", seed=101)
    assert r.returncode != 0, r.stdout[-3000:]
    line = _error_line(r)
    assert line.startswith("error: ") and any(w in line for w in ("S3", "s3:", "seaweedfs")), line
    assert "registry " not in r.stdout and "model version " not in r.stdout
    assert len(_versions(stack)) == versions  # nothing half-registered
    _no_local_state(stack)

    _up_again(stack, "seaweedfs", before)
    r = stack.cli("retrain", *FAST, "--set", "data.seed=101", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"registry        {stack.mlflow} (lepton up)" in r.stdout
    assert len(_versions(stack)) == versions + 1


def _runs(live: Live, status: str) -> list[dict]:
    try:
        exp = live.get(f"{live.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=lepton")["experiment"]
    except urllib.error.HTTPError as e:
        if e.code == 404:  # no retrain yet (the test run on its own): the retrain makes it
            return []
        raise
    return live.post(
        f"{live.mlflow}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp["experiment_id"]], "filter": f"attributes.status = '{status}'", "max_results": 50},
    ).get("runs", [])


def test_mlflow_killed_mid_run_registers_nothing_and_a_retry_after_up_succeeds(stack):
    """The MLflow server killed (its whole process group) while the run trains."""
    before, versions = _pids(stack), len(_versions(stack))
    running_before = {r["info"]["run_id"] for r in _runs(stack, "RUNNING")}
    started: list[str] = []

    def run_started():  # wait until the training run exists in MLflow
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            new = {r["info"]["run_id"] for r in _runs(stack, "RUNNING")} - running_before
            if new:
                started.extend(new)
                return
            time.sleep(0.2)
        raise AssertionError("no MLflow run started")

    r = _retrain_killing(stack, "mlflow", "Task run 'prepare", seed=102, then=run_started)
    assert r.returncode != 0, r.stdout[-3000:]
    line = _error_line(r)
    assert line.startswith("error: ") and "MLflow" in line, line
    assert "model version " not in r.stdout
    _no_local_state(stack)

    _up_again(stack, "mlflow", before)
    (run_id,) = started
    assert run_id not in {v["run_id"] for v in _versions(stack)}  # the killed run registered nothing
    assert len(_versions(stack)) == versions
    r = stack.cli("retrain", *FAST, "--set", "data.seed=102", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(_versions(stack)) == versions + 1


# ---------------------------------------------------------------- the object store's health


def test_writes_to_many_buckets_succeed(stack):
    """Each bucket is a SeaweedFS collection with volumes of its own. With
    `-volume.max=0` (free disk / 30 GB volumes) a disk with less than ~200 GB free
    had too few slots: after the filer's and the first bucket's, PutObject failed.
    So: the `lepton` bucket written first (as a retrain does), then six more buckets
    that all hold an object at once."""
    from botocore.exceptions import ClientError

    s3 = stack.s3_client()
    s3.put_object(Bucket="lepton", Key="volume-probe", Body=b"l" * 1000)
    buckets = [f"probe-{i}" for i in range(6)]
    try:
        for b in buckets:
            s3.create_bucket(Bucket=b)
            s3.put_object(Bucket=b, Key="k", Body=b.encode() * 100)
        for b in buckets:  # all still there, each with its own bytes
            assert s3.get_object(Bucket=b, Key="k")["Body"].read() == b.encode() * 100
        assert s3.get_object(Bucket="lepton", Key="volume-probe")["Body"].read() == b"l" * 1000
    finally:
        for b in buckets:
            try:
                s3.delete_object(Bucket=b, Key="k")
                s3.delete_bucket(Bucket=b)
            except ClientError:  # not made: an earlier write failed
                pass
        s3.delete_object(Bucket="lepton", Key="volume-probe")


def _weed_shell(live: Live, command: str) -> str:
    """SeaweedFS's own shell, with the stack's security.toml (its client certificate)."""
    i = live.state()["internal"]
    r = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "weed"),
            f"-config_dir={live.home / 'stack' / 'seaweedfs-config'}",
            "shell",
            f"-master=127.0.0.1:{i['master']}.{i['master_grpc']}",
            f"-filer=127.0.0.1:{i['filer']}.{i['filer_grpc']}",
        ],
        input=command + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_status_fails_when_bucket_writes_fail_though_s3_answers(stack):
    """The bucket made read-only in the filer: S3 still answers on its port (what the
    old check looked at), but a write fails, so `lepton status` says seaweedfs is
    not healthy and exits non-zero."""
    from lepton.stack import s3_answers, s3_roundtrip

    out = _weed_shell(stack, "fs.configure -locationPrefix=/buckets/lepton/ -readOnly=true -apply")
    assert '"readOnly":  true' in out or '"readOnly": true' in out, out[-2000:]
    try:
        creds = stack.credentials()
        assert s3_answers(stack.s3)
        assert not s3_roundtrip(stack.s3, "lepton", creds)
        st = stack.cli("status", timeout=120)
        assert st.returncode != 0
        assert "seaweedfs         running, not healthy" in st.stdout, st.stdout
        line = _error_line(st)
        assert "seaweedfs" in line and "not healthy" in line and "lepton up" in line, line
    finally:
        _weed_shell(stack, "fs.configure -locationPrefix=/buckets/lepton/ -delete -apply")
    assert s3_roundtrip(stack.s3, "lepton", stack.credentials())
    assert stack.cli("status", timeout=120).returncode == 0


# ---------------------------------------------------------------- the worker killed mid-run

WORKER_EPOCHS = 24


def _states(stack, flow_run_id: str) -> list[str]:
    return [s["type"] for s in stack.get(f"{stack.prefect_api}/flow_run_states/?flow_run_id={flow_run_id}")]


@pytest.mark.timeout(900)  # about 90 s of silence before the run counts as crashed
def test_a_run_whose_worker_dies_is_rerun_and_resumes_from_its_checkpoint(stack):
    """The worker killed mid-run: the flow run it was running loses its process; the
    lost-runs automation marks it CRASHED when its heartbeats stop, the retry
    automation schedules it again, the worker `lepton up` restarted runs it, and the
    train task resumes from the work checkpoint in the same MLflow run, to COMPLETED."""
    from lepton_core.checkpoint import load_checkpoint

    r = stack.cli("deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    names = {a["name"] for a in stack.post(f"{stack.prefect_api}/automations/filter", {})}
    assert {"lepton-crash-lost-runs", "lepton-retry-crashed"} <= names
    dep = stack.get(f"{stack.prefect_api}/deployments/name/retrain/lepton")
    fr = stack.post(
        f"{stack.prefect_api}/deployments/{dep['id']}/create_flow_run",
        {"parameters": {"train": {"epochs": WORKER_EPOCHS, "width": 8, "patience": 0}}},
    )

    ckdir = stack.home / "checkpoints"
    earlier = set(ckdir.glob("train-*.pt"))  # none expected, but not this test's business

    def ours() -> list:
        return [ck for ck in ckdir.glob("train-*.pt") if ck not in earlier]

    deadline = time.monotonic() + 300
    epoch = 0
    while epoch < 2 and time.monotonic() < deadline:  # mid-training: two epochs in the checkpoint
        for ck in ours():
            try:
                epoch = int(load_checkpoint(ck)["epoch"])
            except Exception:  # replaced while read
                pass
        assert stack.get(f"{stack.prefect_api}/flow_runs/{fr['id']}")["state"]["type"] in (
            "SCHEDULED",
            "PENDING",
            "RUNNING",
        )
        time.sleep(0.5)
    assert epoch >= 2, "training did not get under way"

    # The worker and the flow run it started die at once, as when their machine goes.
    worker = _pids(stack)["worker"]
    _kill(worker, *_descendants(worker))
    killed_at = load_checkpoint(ours()[0])
    assert int(killed_at["epoch"]) < WORKER_EPOCHS
    stack.up()  # restarts the dead worker (and only it)

    # CRASHED (no heartbeat), then scheduled again and run to the end
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = stack.get(f"{stack.prefect_api}/flow_runs/{fr['id']}")
        if done["state"]["type"] in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        time.sleep(2)
    seen = _states(stack, fr["id"])
    assert done["state"]["type"] == "COMPLETED", (seen, stack.wait_flow_run(fr["id"], 1)["state"].get("logs"))
    assert "CRASHED" in seen and done["run_count"] >= 2, seen
    # the resume is a warning; Prefect's API returns at most 200 logs a call
    logs = stack.post(
        f"{stack.prefect_api}/logs/filter",
        {"logs": {"flow_run_id": {"any_": [fr["id"]]}, "level": {"ge_": 30}}, "limit": 200},
    )
    resumed = [entry["message"] for entry in logs if "from its work checkpoint" in entry["message"]]
    assert resumed and killed_at["mlflow_run_id"] in resumed[0], "the rerun did not resume the checkpoint"
    assert not ours()  # finished: the work checkpoint is gone


# ---------------------------------------------------------------- private state (last: after the retrains)


def test_nothing_under_the_home_is_readable_by_others(stack):
    """After `lepton up`, restarts and retrains against the stack: the home is 0700
    and no file or folder under it is open to the group or others."""
    assert (stack.home.stat().st_mode & 0o777) == 0o700
    from tests.faults.test_private_home import _kept_by_its_tool

    open_to_others = [
        f"{oct(p.lstat().st_mode & 0o777)} {p.relative_to(stack.home)}"
        for p in stack.home.rglob("*")
        if not p.is_symlink()
        and p.lstat().st_mode & 0o077
        and not _kept_by_its_tool(p.relative_to(stack.home), p.lstat().st_mode & 0o777)
    ]
    assert not open_to_others, open_to_others[:20]


# ---------------------------------------------------------------- lost data (last: it deletes the store's volumes)


def test_status_and_up_name_lost_data_though_the_store_answers(stack):
    """The bucket's volumes deleted through the master with the stack's own
    certificate (what a stranger's `/col/delete` did before mutual TLS). SeaweedFS
    makes fresh volumes, so a write, read and delete of a new object still go through;
    the sentinel is gone, and `lepton status` and `lepton up` both say so and exit
    non-zero. `lepton up --accept-data-loss` writes a new sentinel and goes on."""
    import ssl
    import urllib.request

    from lepton.stack import s3_roundtrip

    tls = stack.home / "stack" / "tls"
    ctx = ssl.create_default_context(cafile=str(tls / "ca.crt"))
    ctx.load_cert_chain(str(tls / "client.crt"), str(tls / "client.key"))
    master = stack.state()["internal"]["master"]
    assert stack.cli("status", timeout=120).returncode == 0
    with urllib.request.urlopen(
        f"https://127.0.0.1:{master}/col/delete?collection=lepton", timeout=30, context=ctx
    ) as r:
        assert 200 <= r.status < 300
    assert s3_roundtrip(stack.s3, "lepton", stack.credentials())  # the old check: still fine
    st = stack.cli("status", timeout=120)
    assert st.returncode != 0
    assert "seaweedfs         data missing (sentinel gone)" in st.stdout, st.stdout
    assert _error_line(st).startswith("error: seaweedfs: data missing (sentinel gone)"), st.stderr[-2000:]
    js = stack.cli("status", "--json", timeout=120)
    assert js.returncode != 0
    assert json.loads(js.stdout)["services"]["seaweedfs"]["problem"] == "data missing (sentinel gone)"
    before = _pids(stack)
    up = stack.up(check=False)
    assert up.returncode != 0
    line = _error_line(up)
    assert line.startswith("error: seaweedfs: data missing (sentinel gone)") and "--accept-data-loss" in line, line
    assert _pids(stack) == before  # nothing was stopped or started
    up = stack.up("--accept-data-loss")
    assert "going on with what is left (--accept-data-loss)" in up.stderr, up.stderr[-2000:]
    assert _pids(stack) == before
    st = stack.cli("status", timeout=120)
    assert st.returncode == 0 and "seaweedfs         healthy" in st.stdout, st.stdout + st.stderr[-2000:]
