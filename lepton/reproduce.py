"""`lepton reproduce VERSION`: a version trained again from its lineage.

The lineage is what the version's training run recorded: its data version (the DVC
md5 of the prepared dataset), its params (`section.key` MLflow params) and the git
commit of the code. The dataset is restored from the DVC remote (not from a local
copy, so the remote is shown to hold it), the model is trained and evaluated by the
same stage functions a retrain calls, into a new MLflow run tagged as a reproduction
of the version, and the test metrics of both are compared. Training on the CPU is
deterministic, so there they match exactly.

`at_commit`: the recorded commit's code runs, from a temporary `git worktree` of the
project, through its own `python -m lepton.stages train|evaluate` (what `dvc repro`
runs); this code only restores the data and records the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from effects.runtime.settings import Settings
from lepton_core.errors import LeptonError, ParamsError

REPRODUCES = "lepton.reproduces"  # on the new run: models:/NAME/VERSION
REPRODUCES_RUN = "lepton.reproduces_run_id"
REPRODUCE_MATCH = "lepton.reproduce.match"  # "exact" | "differs"


@dataclass
class Lineage:
    name: str
    version: str
    run_id: str
    experiment_id: str
    data_version: str
    commit: str  # "unknown" when the run recorded none
    flat_params: dict[str, str]
    metrics: dict[str, float]  # the run's test_* metrics (the report's extras among them)
    device: str = ""


@dataclass
class Reproduction:
    lineage: Lineage
    run_id: str
    commit: str  # the code that ran now
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def diffs(self) -> dict[str, float]:
        """Each metric both runs have: reproduced minus logged."""
        return {k: self.metrics[k] - v for k, v in self.lineage.metrics.items() if k in self.metrics}

    @property
    def exact(self) -> bool:
        """Every metric the evaluation logs (headlines, per class) is equal, to the last bit."""
        d = self.diffs
        return bool(d) and all(v == 0 for v in d.values())


def _clean(commit: str) -> str:
    return commit.removesuffix("-dirty")


def lineage_of(name: str, version: str, s: Settings) -> Lineage:
    """What the version's run recorded; one line naming what is missing."""
    from mlflow.exceptions import MlflowException

    from effects.tracking import runs, tags

    c = runs.client(s)
    try:
        if version.startswith("@"):
            mv = c.get_model_version_by_alias(name, version[1:])
            version = str(mv.version)
        else:
            mv = c.get_model_version(name, version)
    except MlflowException:
        raise LeptonError(f"model {name!r} has no version {version}") from None
    if mv.tags.get(tags.VARIANT):
        source = mv.tags.get(tags.VARIANT_OF, "?")
        raise LeptonError(
            f"{name} v{version} is the {mv.tags[tags.VARIANT]} variant of v{source}: reproduce v{source} instead"
        )
    run_id = mv.run_id or mv.tags.get(tags.RUN_ID) or ""
    try:
        run = c.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        raise LeptonError(f"the training run {run_id or '?'} of {name} v{version} is gone from the tracking server")
    data_version = mv.tags.get(tags.DATA_VERSION) or run.data.tags.get(tags.DATA_VERSION)
    if not data_version:
        raise LeptonError(f"{name} v{version} records no data version: it cannot be reproduced")
    return Lineage(
        name=name,
        version=version,
        run_id=run_id,
        experiment_id=run.info.experiment_id,
        data_version=data_version,
        commit=mv.tags.get(tags.GIT_COMMIT) or run.data.tags.get(tags.GIT_COMMIT) or "unknown",
        flat_params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items() if k.startswith("test_")},
        device=run.data.tags.get(tags.DEVICE, ""),
    )


def _restore(lin: Lineage, to: Path, s: Settings) -> None:
    from effects.data.dvc_store import restore_dataset
    from lepton_core.errors import DataError

    try:
        restore_dataset(lin.data_version, to, s, from_remote=True)
    except DataError as e:
        raise LeptonError(
            f"data version {lin.data_version} of {lin.name} v{lin.version} is gone from the DVC remote "
            f"({s.dvc_remote}): {e}"
        ) from None


def _train_here(lin: Lineage, data: Path, work: Path, progress: bool) -> dict:
    """This checkout's code: the stage functions a retrain calls."""
    from effects.training.stages import evaluate_stage, train_stage
    from lepton_core.data.prepare import read_prepared
    from lepton_core.params import params_from_flat

    try:
        params = params_from_flat(lin.flat_params)
    except ParamsError as e:
        raise LeptonError(
            f"the params {lin.name} v{lin.version} was trained with do not fit this checkout's code ({e}); "
            "--at-commit runs the code it was trained with"
        ) from None
    prepared = read_prepared(data)
    train_stage(prepared, params.train, work / "model.pt", progress=progress)
    return evaluate_stage(prepared, work / "model.pt", work / "evaluation")


@contextmanager
def _worktree(project: Path, commit: str, where: Path) -> Iterator[Path]:
    """A detached git worktree of `project` at `commit`, removed afterwards."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, timeout=300)

    r = git("worktree", "add", "--detach", str(where), commit)
    if r.returncode != 0:
        raise LeptonError(f"cannot check out commit {commit[:12]} of {project}: {r.stderr.strip().splitlines()[-1:]}")
    try:
        yield where
    finally:
        git("worktree", "remove", "--force", str(where))
        git("worktree", "prune")


def _train_at_commit(lin: Lineage, data: Path, work: Path, project: Path, echo: Callable[[str], None]) -> dict:
    """The recorded commit's code, through its own `python -m lepton.stages`, on the
    restored data and the recorded params (as that code wrote them)."""
    from lepton_core.params import nested_from_flat

    with _worktree(project, _clean(lin.commit), work / "code") as tree:
        (tree / "data").mkdir(exist_ok=True)
        shutil.move(str(data), str(tree / "data" / "prepared"))
        params_file = tree / "params.reproduce.yaml"
        params_file.write_text(yaml.safe_dump(nested_from_flat(lin.flat_params), sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(tree), "LEPTON_PROJECT_DIR": str(tree)}
        for stage in ("train", "evaluate"):
            echo(f"{stage} (commit {_clean(lin.commit)[:12]}) ...")
            r = subprocess.run(
                [sys.executable, "-m", "lepton.stages", stage, "--params", str(params_file)],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                last = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
                raise LeptonError(f"the {stage} stage of commit {_clean(lin.commit)[:12]} failed: {last[0]}")
        metrics = json.loads((tree / "metrics" / "metrics.json").read_text())
        shutil.copytree(tree / "metrics", work / "evaluation", dirs_exist_ok=True)
    return metrics


def _record(lin: Lineage, metrics: dict, commit: str, work: Path, s: Settings) -> tuple[str, dict[str, float]]:
    """The new run: the recorded params, the test metrics, tags naming what it reproduces."""
    from effects.tracking import runs, tags
    from lepton_core.evaluate import logged_test_metrics

    c = runs.client(s)
    summary = logged_test_metrics(metrics)  # what the evaluate task logs, without the report's extras
    run = c.create_run(
        lin.experiment_id,
        run_name=f"reproduce-{lin.name}-v{lin.version}",
        tags={
            REPRODUCES: f"models:/{lin.name}/{lin.version}",
            REPRODUCES_RUN: lin.run_id,
            tags.DATA_VERSION: lin.data_version,
            tags.GIT_COMMIT: commit,
        },
    )
    run_id = run.info.run_id
    with runs.failing_run(c, run_id):
        runs.log_params_and_tags(c, run_id, lin.flat_params, {})
        c.log_batch(run_id, metrics=[runs.Metric(k, v, 0, 0) for k, v in summary.items()])
        if (work / "evaluation" / "metrics.json").exists():
            c.log_artifact(run_id, str(work / "evaluation" / "metrics.json"), "evaluation")
    return run_id, summary


def reproduce(
    name: str,
    version: str,
    s: Settings,
    at_commit: bool = False,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> Reproduction:
    """Restore, retrain and evaluate VERSION from its lineage into a new run."""
    from effects.tracking import runs

    lin = lineage_of(name, version, s)
    here = runs.git_commit(s.project_dir)
    notes = []
    if at_commit and _clean(lin.commit) == "unknown":
        raise LeptonError(f"{name} v{version} records no git commit: --at-commit has nothing to check out")
    if lin.commit.endswith("-dirty"):
        notes.append(f"v{version} was trained from a checkout with local changes to {_clean(lin.commit)[:12]}")
    if _clean(lin.commit) != _clean(here) and not at_commit:
        notes.append(
            f"v{version} was trained at commit {_clean(lin.commit)[:12]}; this checkout is at {_clean(here)[:12]}: "
            "its code may train differently (--at-commit runs the recorded commit's code)"
        )
    if lin.device.startswith("cuda"):
        notes.append(f"v{version} was trained on {lin.device}: on another device the metrics may differ slightly")
    for n in notes:
        echo(n)
    work = s.home / "reproduce" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        echo(f"restoring data version {lin.data_version} from the DVC remote ...")
        _restore(lin, work / "prepared", s)
        if at_commit:
            metrics = _train_at_commit(lin, work / "prepared", work, s.project_dir, echo)
        else:
            echo(f"training with the params of v{version}'s run {lin.run_id} ...")
            metrics = _train_here(lin, work / "prepared", work, progress)
        commit = lin.commit if at_commit else here
        run_id, summary = _record(lin, metrics, commit, work, s)
        rep = Reproduction(lin, run_id, commit, summary, notes)
        c = runs.client(s)
        c.set_tag(run_id, REPRODUCE_MATCH, "exact" if rep.exact else "differs")
        c.set_terminated(run_id, "FINISHED")
        return rep
    finally:
        shutil.rmtree(work, ignore_errors=True)
