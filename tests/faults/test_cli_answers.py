"""Clear answers from the real `lepton` command (subprocesses, real Prefect, MLflow
and DVC): every documented exit code, `--json` that is only JSON, an infrastructure
failure that ends in one line with its traceback in the log, a user error inside a
flow that Prefect's own failure records do not bury, and the monitor's cool-down and
accepted batches."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.conftest import lepton_env_vars, make_project, run_cli

pytestmark = [pytest.mark.faults, pytest.mark.slow]

TINY = ["--set", "train.epochs=2", "--set", "train.width=8", "--set", "train.patience=0"]


def one_error_line(r, needle: str = "") -> str:
    """The stderr of a failed command: no traceback, exactly one `error:` line, last."""
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert r.stderr.rstrip().splitlines()[-1] == errors[0]
    assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def registered(tmp_path_factory, prefect_server):
    """A new home; one retrain with `--json` that registers v1 and, with a floor of
    1.0, does not promote it."""
    base = tmp_path_factory.mktemp("answers")
    make_project(base / "project")
    env = {**lepton_env_vars(base), "PREFECT_API_URL": prefect_server}
    r = run_cli(["retrain", "--json", "--no-progress", *TINY, "--set", "promote.min_accuracy=1.0"], env)
    return base, env, r


def test_json_on_a_first_run_in_a_new_home_is_only_json(registered):
    _, _, r = registered
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # nothing else on stdout (DVC's "Initialized DVC repository." was)
    assert out["result"]["version"] == "1"
    assert out["result"]["decision"]["promoted"] is False


def test_every_documented_exit_code(registered, tmp_path):
    """README, "Exit codes": 0 done, 1 infrastructure failure, 2 bad input, 3 the gate
    said no (here through `promote`; 1 has its own test below)."""
    _, env, _ = registered
    no = run_cli(["promote", "1", "--set", "promote.min_accuracy=1.0"], env)
    assert no.returncode == 3, (no.returncode, no.stdout, no.stderr[-2000:])
    assert no.stdout.strip().startswith("v1 not promoted:"), no.stdout
    assert "error:" not in no.stderr and "Traceback" not in no.stderr

    bad = run_cli(["promote", "1", "--set", "promote.alpha=2"], env, timeout=60)
    assert bad.returncode == 2  # (tests/faults/test_bad_inputs.py holds 80 more)
    one_error_line(bad, "promote.alpha")

    usage = run_cli(["promote", "1", "2"], env, timeout=60)  # a usage error (click's own): also 2
    assert usage.returncode == 2 and "unexpected extra argument" in usage.stderr
    nothing = run_cli(["promote"], env, timeout=60)  # no VERSION, and no @challenger to take: bad input
    assert nothing.returncode == 2
    one_error_line(nothing, "has no @challenger")

    yes = run_cli(["promote", "1", "--set", "promote.min_accuracy=0"], env)
    assert yes.returncode == 0, yes.stderr[-2000:]
    assert yes.stdout.strip().startswith("v1 promoted:"), yes.stdout


def test_an_infrastructure_failure_is_one_line_and_a_logged_traceback(tmp_path, prefect_server):
    """A DVC remote that cannot be written (its parent is a file): the push inside the
    retrain flow fails. stderr ends in one `error:` line that names the remote, what to
    do and the log; no traceback and no Prefect ERROR record on the terminal; the log
    holds the traceback. (More kinds of failure: tests/faults/test_failure_lines.py.)"""
    make_project(tmp_path / "project")
    (tmp_path / "a-file").write_text("not a folder\n")
    env = {
        **lepton_env_vars(tmp_path),
        "PREFECT_API_URL": prefect_server,
        "LEPTON_DVC_REMOTE": str(tmp_path / "a-file" / "remote"),
    }
    r = run_cli(["retrain", "--no-progress", *TINY], env)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    log = tmp_path / "home" / "logs" / "lepton.log"
    text = log.read_text()
    assert "Traceback" in text and "NotADirectoryError" in text
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and r.stderr.rstrip().splitlines()[-1] == errors[0], r.stderr[-3000:]
    line = errors[0]
    assert f"the DVC remote {tmp_path / 'a-file' / 'remote'} failed" in line
    assert "writable" in line
    assert "Traceback" not in r.stderr + r.stdout
    assert f"traceback in {log}" in line
    assert "| ERROR" not in r.stderr, r.stderr[-3000:]
    assert len(r.stderr.splitlines()) < 15, r.stderr  # was 121 lines with 4 tracebacks


def test_a_user_error_inside_a_flow_is_not_buried(registered, tmp_path):
    """A one-class table fails inside the prepare task: the answer is the one
    `error:` line, with no Prefect ERROR records or tracebacks above it."""
    _, env, _ = registered
    table = tmp_path / "one_class.csv"
    table.write_text("a,b,label\n" + "".join(f"{i},{i * 2},cat\n" for i in range(40)))
    r = run_cli(["retrain", "--no-progress", "--format", "csv", "--data", str(table)], env)
    assert r.returncode == 2
    one_error_line(r, "one class")
    assert "| ERROR" not in r.stderr, r.stderr


def test_drift_in_cooldown_says_until_when_and_accepted_batches_can_be_rejected(registered, tmp_path):
    from mlflow.tracking import MlflowClient

    base, env, _ = registered
    assert run_cli(["promote", "1", "--set", "promote.min_accuracy=0"], env).returncode == 0
    from effects.monitoring.monitor import write_drift_batch

    batch = Path(write_drift_batch("rotate", "high", tmp_path / "strong")["path"])
    # an event 1 minute ago, as a monitor run would have recorded it: the cool-down holds
    last = time.time() - 60
    state = base / "home" / "monitor"
    state.mkdir(parents=True, exist_ok=True)
    (state / "last_event.json").write_text(json.dumps({"time": last, "model_version": "1"}))
    r = run_cli(["monitor", str(batch), "--set", "monitor.cooldown_minutes=600"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    until = time.strftime("%H:%M", time.gmtime(last + 600 * 60))
    assert re.search(
        rf"drift event suppressed: cool-down until (\d{{4}}-\d\d-\d\d )?{until} UTC "
        rf"\(the last event was at {time.strftime('%H:%M', time.gmtime(last))} UTC\)",
        r.stdout,
    ), r.stdout
    bid = re.search(r"^(strong-[0-9a-f]{12}): drift", r.stdout, re.M).group(1)
    run_id = re.search(r"MLflow monitoring run\s+(\w+)", r.stdout).group(1)
    uri = env["MLFLOW_TRACKING_URI"]
    tags = MlflowClient(uri, registry_uri=uri).get_run(run_id).data.tags
    assert tags["lepton.monitor.event"].startswith("suppressed: cool-down until ")
    assert until in tags["lepton.monitor.event"]

    listed = run_cli(["monitor", "accepted"], env, timeout=60)
    assert listed.returncode == 0
    (row,) = [ln for ln in listed.stdout.splitlines() if ln.startswith(bid)]
    assert re.search(rf"{bid}\s+\d{{4}}-\d\d-\d\d \d\d:\d\d\s+\d+\s+/", row), row
    as_json = json.loads(run_cli(["monitor", "accepted", "--json"], env, timeout=60).stdout)
    assert [b["id"] for b in as_json] == [bid] and as_json[0]["rows"] >= 50

    gone = run_cli(["monitor", "reject", bid], env, timeout=60)
    assert gone.returncode == 0 and f"rejected {bid}" in gone.stdout
    assert "no accepted batches" in run_cli(["monitor", "accepted"], env, timeout=60).stdout
    again = run_cli(["monitor", "reject", bid], env, timeout=60)
    assert again.returncode == 2
    one_error_line(again, "is not an accepted batch")
    # a rejected batch is not accepted again when it is checked again
    from effects.runtime.settings import get_settings
    from effects.state import monitor_state

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s = get_settings()
        assert monitor_state.accept_batch(s, batch, "imagefolder", bid, 10) is False
        assert monitor_state.accepted_batches(s) == []
        assert [b["id"] for b in monitor_state.rejected_batches(s)] == [bid]
