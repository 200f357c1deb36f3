"""The monitor's state shared by many workers (effects/state/shared_state.py): real OS
processes, each with its own LEPTON_HOME as a worker on another machine would have,
race on one store (PostgreSQL on 127.0.0.1:5432, a fresh database per test; a
SQLite file; and the local files of one home) to claim batches and the cool-down."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pytest

PG = "postgresql://postgres@127.0.0.1:5432"
ctx = multiprocessing.get_context("spawn")


@pytest.fixture
def pg_url():
    import psycopg2

    name = f"lepton_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(f"{PG}/postgres", connect_timeout=10)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            assert cur.fetchone() is None
        conn.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def store_url(request, tmp_path):
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
    else:
        yield f"sqlite:///{tmp_path / 'shared' / 'state.db'}"


def _env(home: Path, url: str | None) -> None:
    os.environ["LEPTON_HOME"] = str(home)
    os.environ.pop("LEPTON_STATE_DB", None)
    if url:
        os.environ["LEPTON_STATE_DB"] = url


def _run(target, args_per_worker, timeout=120):
    """Run target(*args, barrier) in one spawned process per args; the barrier lets
    them start racing at once (after their imports)."""
    barrier = ctx.Barrier(len(args_per_worker), timeout=timeout)
    procs = [ctx.Process(target=target, args=(*a, barrier)) for a in args_per_worker]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert codes == [0] * len(procs), codes


# ---------------------------------------------------------------- batches
def _claim_worker(home: str, url: str | None, names: list[str], out: str, barrier) -> None:
    _env(Path(home), url)
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    s = get_settings()
    monitor_state.processed(s)  # tables and engine ready before the race
    mine = []
    barrier.wait()
    for i in range(0, len(names), 3):  # in small overlapping groups, as runs would
        for name in monitor_state.claim_batches(s, names[i : i + 5]):
            mine.append(name)
            time.sleep(0.01)  # checking it
            monitor_state.mark_processed(s, [name])
    Path(out).write_text(json.dumps(mine))


@pytest.mark.parametrize("backend", ["postgresql", "sqlite", "files"])
def test_two_workers_claim_every_batch_exactly_once(backend, tmp_path, request):
    url = (
        None
        if backend == "files"
        else request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path / 'state.db'}"
    )
    names = [f"batch-{i:03d}" for i in range(60)]
    # shared store: one home each (two machines); local files: one home (one machine)
    homes = [tmp_path / "home", tmp_path / "home"] if backend == "files" else [tmp_path / "w0", tmp_path / "w1"]
    outs = [tmp_path / f"out{k}.json" for k in range(2)]
    _run(_claim_worker, [(str(homes[k]), url, names, str(outs[k])) for k in range(2)])
    got = [json.loads(o.read_text()) for o in outs]
    assert not set(got[0]) & set(got[1]), "a batch was claimed by both workers"
    assert sorted(got[0] + got[1]) == names  # none lost
    assert got[0] and got[1], "one worker got everything: the race did not happen"

    _env(homes[0], url)
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    try:
        assert monitor_state.processed(get_settings()) == set(names)
        assert monitor_state.claim_batches(get_settings(), names) == []  # processed: never again
    finally:
        os.environ.pop("LEPTON_STATE_DB", None)


def test_a_claim_of_a_dead_worker_is_taken_over_and_a_live_one_is_not(store_url, tmp_path, monkeypatch):
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state, store

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEPTON_STATE_DB", store_url)
    s = get_settings()
    p = ctx.Process(target=_claim_only, args=(str(tmp_path / "other"), store_url, ["a", "b"]))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    # "a" and "b" are held by a process of this machine that is gone: taken over at once
    assert monitor_state.claim_batches(s, ["a", "b", "c"]) == ["a", "b", "c"]
    # held by a live process (this one, seen from another owner id): left alone, until the lease ends
    monkeypatch.setattr(store, "owner_id", lambda: "elsewhere:1")
    assert monitor_state.claim_batches(s, ["a", "c", "d"]) == ["d"]
    assert monitor_state.claim_batches(s, ["a"], lease_s=0) == ["a"]
    monitor_state.release_batches(s, ["d"])  # given back: free for anyone
    monkeypatch.undo()
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LEPTON_STATE_DB", store_url)
    assert monitor_state.claim_batches(s, ["d"]) == ["d"]


def _claim_only(home: str, url: str, names: list[str]) -> None:
    _env(Path(home), url)
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    assert monitor_state.claim_batches(get_settings(), names) == names


# ---------------------------------------------------------------- cool-down
WINDOW_S = 0.5
RACE_S = 3.0


def _event_worker(home: str, url: str, out: str, barrier) -> None:
    _env(Path(home), url)
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    s = get_settings()
    monitor_state.processed(s)
    won = []
    barrier.wait()
    start_at = time.time()
    while time.time() < start_at + RACE_S:
        before = time.time()
        if monitor_state.claim_event_or_cooldown(s, WINDOW_S / 60, {"by": os.getpid()}) is None:
            won.append((before, time.time()))  # the event's recorded time lies in between
        time.sleep(0.005)
    Path(out).write_text(json.dumps(won))


def test_two_workers_fire_one_event_per_cooldown(store_url, tmp_path):
    outs = [tmp_path / f"ev{k}.json" for k in range(2)]
    _run(_event_worker, [(str(tmp_path / f"w{k}"), store_url, str(outs[k])) for k in range(2)])
    wins = sorted(tuple(w) for o in outs for w in json.loads(o.read_text()))
    # exactly one event per window: even the widest reading of two events' times
    # (the later one's end minus the earlier one's start) is no shorter than the cool-down ...
    assert all(b[1] - a[0] >= WINDOW_S for a, b in zip(wins, wins[1:])), wins
    # ... and none lost: a new one as soon as each window ends
    assert len(wins) >= int(RACE_S / WINDOW_S) - 1, wins
    assert all(b[0] - a[1] < WINDOW_S + 0.5 for a, b in zip(wins, wins[1:])), wins


# ---------------------------------------------------------------- through the monitor's tasks
def _monitor_worker(home: str, url: str, inbox: str, out: str, barrier) -> None:
    """One worker's two monitor runs (the hourly schedule): the flow's tasks in order
    (find, check each, emit), with the check and the event recorded instead of run
    against MLflow and Prefect."""
    _env(Path(home), url)
    from pathlib import Path as P

    import tasks.monitor as tm
    from effects.monitoring.monitor import MonitorResult, batch_id
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state
    from lepton_core.params import MonitorParams

    checked, events = [], []

    def fake_check(batch, fmt, params, model_name, experiment, flow_run_id=""):
        checked.append(P(batch).name)
        time.sleep(0.05)  # a check takes a while: the other worker is running meanwhile
        return MonitorResult(
            batch=batch,
            batch_id=batch_id(P(batch)),
            champion_version="1",
            verdict="drift",
            status="drift",
            mlflow_run_id=f"run-{P(batch).name}",
        )

    tm.check_batch = fake_check
    tm.record_event_outcome = lambda *a, **k: None
    # the drift events only (a worker in the cool-down sends lepton.drift.suppressed instead)
    tm.emit_event = lambda **kw: kw["event"] == "lepton.drift.detected" and events.append(kw["payload"]["batch_ids"])
    monitor_state.processed(get_settings())
    params = MonitorParams(inbox=inbox, cooldown_minutes=60)
    runs = []
    for _ in range(2):
        barrier.wait()  # both workers start each run at once
        checked.clear(), events.clear()
        batches = tm.find_new_batches.fn(inbox, False, 1)
        results = [tm.check_batch_task.fn(b, None, params, "m", "e") for b in batches]
        outcome = tm.emit_drift_event.fn(results, params, "m")
        runs.append({"checked": list(checked), "events": list(events), "outcome": outcome})
    P(out).write_text(json.dumps(runs))


def test_two_monitor_runs_never_check_a_batch_twice_and_emit_one_event(pg_url, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"b{i}.csv" for i in range(8)]
    for i, n in enumerate(names):
        (inbox / n).write_text(f"a,label\n{i},x\n")

    outs = [tmp_path / f"runs{k}.json" for k in range(2)]
    _run(_monitor_worker, [(str(tmp_path / f"w{k}"), pg_url, str(inbox), str(outs[k])) for k in range(2)], timeout=180)
    first, again = zip(*(json.loads(o.read_text()) for o in outs))
    checked = [n for r in first for n in r["checked"]]
    assert sorted(checked) == names, checked  # each batch checked once, none left
    events = [e for r in first for e in r["events"]]
    assert len(events) == 1, events  # one drift event in the cool-down, not one per worker
    for r in first:  # the other worker, when it checked drifted batches too, says why it is quiet
        if r["checked"] and not r["outcome"]["emitted"]:
            assert r["outcome"]["suppressed"].startswith("suppressed: cool-down until")

    # the next hourly runs of both workers: nothing new
    assert [r["checked"] for r in again] == [[], []]
    assert [r["events"] for r in again] == [[], []]


# ---------------------------------------------------------------- accepted, rejected, migration
def test_local_state_is_imported_once_and_accepted_batches_are_shared(store_url, tmp_path, monkeypatch):
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state, shared_state

    home = tmp_path / "home"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    monkeypatch.delenv("LEPTON_STATE_DB", raising=False)
    s = get_settings()
    batch = tmp_path / "labelled"
    batch.mkdir()
    (batch / "x.csv").write_text("a,label\n1,x\n")
    for bid in ("old-aaaaaaaaaaaa", "keep-bbbbbbbbbbbb", "gone-cccccccccccc"):
        assert monitor_state.accept_batch(s, batch, "csv", bid, 1)
    monitor_state.reject_batch(s, "gone")
    monitor_state.mark_processed(s, ["seen-1", "seen-2"])
    assert monitor_state.claim_event_or_cooldown(s, 60, {"model_name": "m"}) is None
    last = monitor_state.last_event(s)["time"]

    monkeypatch.setenv("LEPTON_STATE_DB", store_url)  # the shared store is configured
    s = get_settings()
    assert monitor_state.processed(s) == {"seen-1", "seen-2"}
    assert [b["id"] for b in monitor_state.accepted_batches(s)] == ["old-aaaaaaaaaaaa", "keep-bbbbbbbbbbbb"]
    assert [b["id"] for b in monitor_state.rejected_batches(s)] == ["gone-cccccccccccc"]
    assert monitor_state.claim_event_or_cooldown(s, 60, {}) == (pytest.approx(last), pytest.approx(last + 3600))
    assert monitor_state.accept_batch(s, batch, "csv", "gone-cccccccccccc") is False  # still rejected

    monitor_state.reject_batch(s, "old")  # in the shared store only
    shared_state._ready.clear()  # a new process of the same home: no second import
    assert [b["id"] for b in monitor_state.accepted_batches(s)] == ["keep-bbbbbbbbbbbb"]

    # another worker (another home) sees the same lists
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "other"))
    s2 = get_settings()
    assert [b["id"] for b in monitor_state.accepted_batches(s2)] == ["keep-bbbbbbbbbbbb"]
    assert monitor_state.accept_batch(s2, batch, "csv", "new-dddddddddddd", 1)
    assert [b["id"] for b in monitor_state.accepted_batches(s)] == ["keep-bbbbbbbbbbbb", "new-dddddddddddd"]
    with pytest.raises(Exception, match="is not an accepted batch"):
        monitor_state.reject_batch(s, "nope")


def test_lepton_up_with_a_database_hands_its_workers_the_shared_store(tmp_path, monkeypatch):
    from effects.runtime import stack_state
    from effects.runtime.settings import get_settings
    from effects.state import shared_state

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    monkeypatch.delenv("LEPTON_STATE_DB", raising=False)
    state = {
        "up": True,
        "db_url": "postgresql://u:pw@db.internal:5432/lepton",
        "bucket": "lepton",
        "pool": "p",
        "ports": {"s3": 1, "mlflow": 2, "prefect": 3, "serve": 4},
        "auth": False,
        "pids": {},
    }
    stack_state.write_state(tmp_path, {**state, "db_url": None})
    assert shared_state.url_for(get_settings()) is None  # a stack on SQLite files: one machine
    assert "LEPTON_STATE_DB" not in stack_state.client_env(tmp_path, {**state, "db_url": None})
    stack_state.write_state(tmp_path, state)
    want = "postgresql://u:pw@db.internal:5432/lepton_lepton"
    assert shared_state.url_for(get_settings()) == want  # also for commands that skip the stack's env
    assert stack_state.client_env(tmp_path, state)["LEPTON_STATE_DB"] == want
    monkeypatch.setenv("LEPTON_STATE_DB", "sqlite:///elsewhere.db")
    assert shared_state.url_for(get_settings()) == "sqlite:///elsewhere.db"


def test_an_unreachable_shared_store_is_one_line_naming_it(tmp_path, monkeypatch):
    from effects.runtime.procs import free_port
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state
    from lepton_core.errors import LeptonError

    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    monkeypatch.setenv("LEPTON_STATE_DB", f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(LeptonError) as e:
        monitor_state.claim_batches(get_settings(), ["a"])
    msg = str(e.value)
    assert "\n" not in msg and "shared state database" in msg and "127.0.0.1" in msg
    assert "secret" not in msg  # the password is not shown
    assert not (tmp_path / "monitor").exists()  # no quiet fall-back to local files


def test_the_stacks_state_database_is_created_on_first_use(tmp_path, monkeypatch):
    """`lepton up --db .../NAME` creates NAME_mlflow and NAME_prefect; NAME_lepton
    comes into being the first time a worker uses the shared state."""
    import psycopg2

    from effects.runtime import stack_state
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    base = f"lepton_test_{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path))
    monkeypatch.delenv("LEPTON_STATE_DB", raising=False)
    stack_state.write_state(tmp_path, {"up": True, "db_url": f"{PG}/{base}"})
    conn = psycopg2.connect(f"{PG}/postgres", connect_timeout=10)
    conn.autocommit = True
    try:
        assert monitor_state.claim_batches(get_settings(), ["a"]) == ["a"]
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{base}_lepton",))
            assert cur.fetchone() == (1,)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{base}_lepton" WITH (FORCE)')
        conn.close()
