"""The `lepton` command as a user runs it: help, bad input (one line, non-zero,
nothing registered), status JSON, and resume after a crash mid-training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import lepton_env_vars, make_project, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture()
def env(tmp_path, prefect_server):
    make_project(tmp_path / "project")
    return {**lepton_env_vars(tmp_path), "PREFECT_API_URL": prefect_server}


def _registered_versions(env) -> int:
    from mlflow.tracking import MlflowClient

    # The registry named explicitly: MlflowClient would otherwise take the process-wide
    # registry URI that an earlier in-process test may have set (tasks.registry does).
    uri = env["MLFLOW_TRACKING_URI"]
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return len(c.search_model_versions())


def _assert_one_line_error(r: subprocess.CompletedProcess, needle: str, code: int = 2) -> None:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], r.stderr[-2000:]


def test_help_for_every_command(env):
    commands = [
        "demo",
        "retrain",
        "sweep",
        "status",
        "promote",
        "rollback",
        "optimize",
        "up",
        "down",
        "env",
        "deploy",
        "simulate-drift",
        "serve",
        "predict",
        "data",
        "monitor",
    ]
    subcommands = [["data", "restore"], ["monitor", "check"], ["monitor", "accepted"], ["monitor", "reject"]]
    for args in ([], *([c] for c in commands), *subcommands):
        r = run_cli([*args, "--help"], env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "Usage" in r.stdout


def test_bad_inputs_end_in_one_line_and_register_nothing(env, tmp_path):
    one_class = tmp_path / "one_class.csv"
    one_class.write_text("a,b,label\n" + "".join(f"{i},{i * 2},cat\n" for i in range(40)))
    cases = [
        (["retrain", "--data", str(tmp_path / "missing"), "--format", "mnist"], "no such file"),
        (["retrain", "--format", "bogus"], "unknown format"),
        (["retrain", "--set", "train.epochs=abc"], "train.epochs"),
        (["retrain", "--set", "nosuch.key=1"], "unknown section"),
        (["retrain", "--set", "train.nosuch=1"], "train.nosuch"),
        (["retrain", "--format", "csv", "--data", str(one_class)], "one class"),
        (["data", "restore", "not-a-version", "--to", str(tmp_path / "r")], "not a data version"),
        (["promote", "7"], "no version"),
        (["rollback"], "no @previous"),
    ]
    for args, needle in cases:
        r = run_cli(args, env, timeout=300)
        _assert_one_line_error(r, needle)
    assert _registered_versions(env) == 0


def test_status_json_on_an_empty_registry(env):
    import json

    r = run_cli(["status", "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert set(st) == {"registered_model", "tracking_uri", "champion", "previous", "registry"}
    assert st["registered_model"] == "lepton-digits"
    # no stack configured: the local SQLite registry, and the output says so
    assert st["registry"].startswith("local sqlite ") and st["tracking_uri"].startswith("sqlite:")
    assert st["champion"] is None and st["previous"] is None


def test_resume_after_a_crash_continues_from_the_checkpoint(env):
    """Kill `lepton retrain` mid-training (SIGKILL, no clean-up), run it again:
    training resumes from the last epoch's checkpoint and the run finishes."""
    import torch
    from mlflow.tracking import MlflowClient

    args = [
        "retrain",
        "--no-progress",
        "--json",
        "--set",
        "train.epochs=60",
        "--set",
        "train.patience=0",
        "--set",
        "train.width=8",
        "--set",
        "monitor.drift_share=0.3",
    ]
    ckpt_dir = Path(env["LEPTON_HOME"]) / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from lepton.cli import main; main()", *args],
        env={**os.environ, **env},
        cwd=env["LEPTON_PROJECT_DIR"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        epoch = 0
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = list(ckpt_dir.glob("train-*.pt"))
            if ckpts:
                try:
                    epoch = int(torch.load(ckpts[0], weights_only=True)["epoch"])
                except Exception:  # replaced while we read it; try again
                    epoch = 0
                if epoch >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert epoch >= 2
    (ckpt,) = ckpt_dir.glob("train-*.pt")
    saved_epoch = int(torch.load(ckpt, weights_only=True)["epoch"])
    assert 2 <= saved_epoch < 60

    r = run_cli(args, env, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    out = json.loads(r.stdout[r.stdout.index("{") :])
    result = out["result"]
    assert result["resumed_from_epoch"] >= saved_epoch
    assert result["epochs_run"] == 60  # history carries over: all 60 epochs accounted for
    run = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(result["run_id"])
    assert int(run.data.tags["lepton.resumed_from_epoch"]) >= saved_epoch
    assert run.data.params["monitor.drift_share"] == "0.3"  # recorded as given, not the default
    assert run.data.params["train.epochs"] == "60"
    assert not list(ckpt_dir.glob("train-*.pt"))  # finished: the work checkpoint is gone
    assert out["status"]["champion"]["version"] == result["version"]
    # what it used and cost, on the run, in the summary and in `lepton status`
    assert run.data.metrics["resources.cpu_seconds"] > 0 and run.data.metrics["cost"] > 0
    assert result["cost"]["amount"] == pytest.approx(run.data.metrics["cost"])
    st = run_cli(["status"], env, timeout=120)
    assert st.returncode == 0, st.stderr[-2000:]
    (line,) = [ln for ln in st.stdout.splitlines() if ln.strip().startswith("training cost")]
    assert " USD  (CPU " in line and "peak memory" in line
