"""`lepton reproduce VERSION` through the real command, in a project that holds
Lepton's code as a git repository (so a version's commit is the code that trained
it): the data version restored from the DVC remote, the recorded params, a new run
tagged as the reproduction, metrics equal on the CPU; a later commit that trains
differently is named, and `--at-commit` runs the recorded commit's code from a
temporary worktree; a version whose lineage is gone gets one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, lepton_env_vars, run_cli

pytestmark = pytest.mark.slow

# promote.min_accuracy=0: the tiny version becomes the champion (`reproduce @champion`)
TINY = ["--set", "train.epochs=2", "--set", "train.width=16", "--set", "promote.min_accuracy=0", "--no-progress"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def _git(project, *args: str) -> str:
    r = subprocess.run(
        ["git", "-C", str(project), *args], capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return r.stdout.strip()


def _code_project(dst) -> None:
    """This checkout's files (committed or not, nothing ignored) as a new git repository."""
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f.decode())
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-qm", "A")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Version 1 trained by the project's own code (the CLI runs from the project)."""
    base = tmp_path_factory.mktemp("reproduce")
    (base / "project").mkdir()
    _code_project(base / "project")
    env = lepton_env_vars(base)
    r = run_cli(["retrain", *TINY], env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return base, env


def _run(env, run_id: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"]).get_run(
        run_id
    )


def test_a_version_reproduces_with_equal_metrics_into_a_tagged_run(project):
    base, env = project
    r = run_cli(["reproduce", "1", "--json", "--no-progress"], env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["exact"] is True and out["notes"] == []
    original, again = _run(env, out["reproduces_run_id"]), _run(env, out["run_id"])
    # what the evaluation logs (headlines, per-class F1) is equal; the report's extras
    # (calibration error, baselines) are not part of a reproduction
    logged = {k: v for k, v in original.data.metrics.items() if k in again.data.metrics}
    assert {"test_accuracy", "test_f1_macro", "test_f1_class_0", "test_f1_class_9"} <= set(logged)
    assert {k: again.data.metrics[k] for k in logged} == logged == out["reproduced"]
    assert all(out["logged"][k] == v for k, v in logged.items())
    assert again.data.tags["lepton.reproduces"] == "models:/lepton-digits/1"
    assert again.data.tags["lepton.reproduce.match"] == "exact"
    assert again.data.tags["lepton.data_version"] == original.data.tags["lepton.data_version"]
    assert again.data.params == original.data.params  # the recorded params, as recorded
    assert again.info.status == "FINISHED"
    # the people's form says so, and nothing is left in the home's scratch folder
    r = run_cli(["reproduce", "@champion", "--no-progress"], env, timeout=600)  # v1 is the champion
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        "lepton-digits v1: data " in r.stdout
        and "restoring data version" in r.stdout
        and r.stdout.strip().splitlines()[-1].startswith("the metrics match exactly")
    )
    assert not any((base / "home" / "reproduce").iterdir())


def test_a_later_commit_is_named_and_at_commit_runs_the_recorded_code(project):
    base, env = project
    p = base / "project"
    first = _git(p, "rev-parse", "HEAD")
    train = p / "lepton_core" / "train.py"
    code = train.read_text()
    anchor = "gen = torch.Generator().manual_seed(params.seed)"
    assert anchor in code
    train.write_text(code.replace(anchor, "gen = torch.Generator().manual_seed(params.seed + 1)"))  # other batches
    _git(p, "commit", "-qam", "B: another batch order")
    r = run_cli(["reproduce", "1", "--no-progress"], env, timeout=600)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"trained at commit {first[:12]}; this checkout is at " in r.stdout
    assert "--at-commit" in r.stdout and "the metrics differ" in r.stdout
    r = run_cli(["reproduce", "1", "--at-commit", "--json"], env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["exact"] is True and out["commit"] == first
    assert _run(env, out["run_id"]).data.tags["lepton.git_commit"] == first
    assert len(_git(p, "worktree", "list").splitlines()) == 1  # the temporary worktree is gone
    assert not any((base / "home" / "reproduce").iterdir())


def test_what_is_missing_is_named_in_one_line(project):
    """Last: it deletes the DVC remote and the run."""
    base, env = project
    for args, said in (
        (["reproduce", "9"], "model 'lepton-digits' has no version 9"),
        (["reproduce", "one"], "'one' is not a model version number or an @alias"),
        (["reproduce", "@nobody"], "model 'lepton-digits' has no version @nobody"),
    ):
        r = run_cli(args, env, timeout=300)
        assert r.returncode != 0 and r.stderr.strip().splitlines()[-1] == f"error: {said}", r.stderr[-2000:]
    shutil.rmtree(base / "dvc-remote")
    r = run_cli(["reproduce", "1"], env, timeout=300)
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and line.startswith("error: data version ") and "gone from the DVC remote" in line, line
    from mlflow import MlflowClient

    # both URIs given: an earlier test in this process may have exported MLFLOW_REGISTRY_URI
    c = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    run_id = c.get_model_version("lepton-digits", "1").run_id
    c.delete_run(run_id)
    r = run_cli(["reproduce", "1"], env, timeout=300)
    line = r.stderr.strip().splitlines()[-1]
    assert (
        r.returncode != 0
        and line == f"error: the training run {run_id} of lepton-digits v1 is gone from the tracking server"
    )
    assert not any((base / "home" / "reproduce").iterdir())
