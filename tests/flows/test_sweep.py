"""Sweeps end to end on real Prefect (test server), MLflow (SQLite in tmp) and DVC:
Optuna's TPE over params paths, trials as nested MLflow runs under one parent,
only the best registered and gated; on threads, with a trial that fails, and on a
real Dask LocalCluster of two worker processes through `lepton sweep --dask local`."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest

from lepton_core.params import PromoteParams, RegistryParams, SweepParams, SweepRange, TrainParams
from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TINY = TrainParams(epochs=2, width=8, patience=0)
SPACE = {"train.lr": SweepRange(low=1e-3, high=2e-2, log=True), "train.width": SweepRange(choices=(8, 16))}
GATE = PromoteParams(min_accuracy=0.5)


def _runs(experiment: str):
    from effects.tracking.runs import client
    from effects.tracking.tags import PARENT as TAG_PARENT
    from effects.tracking.tags import SWEEP as TAG_SWEEP

    c = client()
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get(TAG_SWEEP) == "parent"]
    children = [r for r in runs if r.data.tags.get(TAG_PARENT) == parent.info.run_id]
    assert len(runs) == 1 + len(children)  # nothing else in the experiment
    return c, parent, children


def _versions_of(c, parent_run_id: str):
    return [
        v for v in c.search_model_versions("name='lepton-digits'") if v.tags.get("lepton.sweep_run_id") == parent_run_id
    ]


def _check_shape(result: dict, experiment: str, trials: int, failed: int = 0):
    """One parent (space, best), `trials` nested runs, one registered version (the
    best trial's), and the gate's decision applied to the aliases."""
    from effects.tracking.registry import registry_status

    c, parent, children = _runs(experiment)
    assert parent.info.run_id == result["parent_run_id"]
    assert parent.info.status == "FINISHED"
    p = parent.data
    assert p.params["space.train.lr"].startswith("log-uniform float in [0.001, 0.02]")
    assert p.params["space.train.width"] == "one of [8, 16]"
    assert p.params["sweep.trials"] == str(trials) and p.params["sweep.metric"] == "val_accuracy"
    with tempfile.TemporaryDirectory() as tmp:
        space = json.loads(Path(c.download_artifacts(parent.info.run_id, "sweep/search_space.json", tmp)).read_text())
    assert set(space["space"]) == {"train.lr", "train.width"} and space["goal"] == "maximize"

    assert len(children) == trials == len(result["trials"])
    states = sorted(r.info.status for r in children)
    assert states == sorted(["FINISHED"] * (trials - failed) + ["FAILED"] * failed)
    assert {r.data.tags["lepton.data_version"] for r in children} == {result["data_version"]}  # one prepare
    assert p.metrics["trials_complete"] == trials - failed and p.metrics["trials_failed"] == failed

    done = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    best = max(done, key=lambda t: t["value"])
    assert result["best"]["number"] == best["number"] and result["best"]["run_id"] == best["run_id"]
    assert p.tags["lepton.best_run_id"] == best["run_id"] == result["run_id"]
    assert p.metrics["best_val_accuracy"] == pytest.approx(best["value"])
    best_run = c.get_run(best["run_id"])
    assert best_run.data.metrics["best_val_accuracy"] == pytest.approx(best["value"])
    assert float(best_run.data.params["train.lr"]) == pytest.approx(best["values"]["train.lr"])
    assert best_run.data.params["train.width"] == str(best["values"]["train.width"])
    assert "test_accuracy" in best_run.data.metrics  # evaluated: only the best trial
    assert sum("test_accuracy" in r.data.metrics for r in children) == 1

    (version,) = _versions_of(c, parent.info.run_id)  # exactly one registered version
    assert str(version.version) == result["version"] and version.run_id == best["run_id"]
    assert p.tags["lepton.registered_version"] == result["version"]
    decision = result["decision"]
    assert decision["reason"] and p.tags["lepton.gate.promoted"] == str(decision["promoted"])
    champion = registry_status("lepton-digits")["champion"]
    assert (champion is not None and champion["version"] == result["version"]) == decision["promoted"]
    return c, parent, children


def test_sweep_on_threads_nests_four_trials_and_registers_only_the_best(lepton_env, prefect_server):
    from effects.tracking.sweep import sweep_markdown
    from flows.sweep import sweep

    result = sweep(
        train=TINY,
        promote=GATE,
        registry=RegistryParams(experiment="sweep-threads"),
        sweep=SweepParams(space=SPACE, trials=4, parallel=2, startup_trials=2),
    )
    assert result["runner"] == "threads" and result["failed"] == 0
    _, _, children = _check_shape(result, "sweep-threads", trials=4)
    assert result["decision"]["promoted"] is True  # the first model of this registry passes the gate
    assert {r.data.tags["lepton.sweep_trial"] for r in children} == {"0", "1", "2", "3"}
    # what the trials used and cost, summed on the parent run and in the summary
    costs = [r.data.metrics["cost"] for r in children]
    assert all(c > 0 for c in costs) and all(r.data.metrics["resources.cpu_seconds"] > 0 for r in children)
    parent = _runs("sweep-threads")[1]
    assert parent.data.metrics["cost"] == pytest.approx(sum(costs)) == pytest.approx(result["cost"]["amount"])
    cpu = sum(r.data.metrics["resources.cpu_seconds"] for r in children)
    assert parent.data.metrics["resources.cpu_seconds"] == pytest.approx(cpu)
    assert result["cost"]["trials"] == 4 and result["cost"]["currency"] == "USD"
    assert "- cost of the 4 trials: " in sweep_markdown(result, "lepton-digits")


def test_a_trial_that_raises_is_recorded_and_the_sweep_goes_on(lepton_env, prefect_server, monkeypatch):
    """Fault: the second trial to start raises inside training. Its run ends FAILED
    with the error, Optuna is told FAIL, and the other three still finish; the best
    of them is registered."""
    import effects.training.tracked as tracked  # where a trial's training calls train_stage
    from flows.sweep import sweep

    real, calls, lock = tracked.train_stage, [], threading.Lock()

    def flaky(prepared, params, *args, **kwargs):
        with lock:
            calls.append(params.lr)
            nth = len(calls)
        if nth == 2:
            raise FloatingPointError("loss is nan at epoch 1 (injected)")
        return real(prepared, params, *args, **kwargs)

    monkeypatch.setattr(tracked, "train_stage", flaky)
    result = sweep(
        train=TINY,
        promote=GATE,
        registry=RegistryParams(experiment="sweep-fault"),
        sweep=SweepParams(space=SPACE, trials=4, parallel=2, startup_trials=2, seed=1),
    )
    assert len(calls) == 4 and result["failed"] == 1
    _, parent, children = _check_shape(result, "sweep-fault", trials=4, failed=1)
    (bad,) = [t for t in result["trials"] if t["state"] == "FAIL"]
    assert bad["value"] is None and "loss is nan" in bad["error"]
    (bad_run,) = [r for r in children if r.info.status == "FAILED"]
    assert bad_run.info.run_id == bad["run_id"]
    assert bad_run.data.tags["lepton.error"] == "FloatingPointError: loss is nan at epoch 1 (injected)"
    assert result["best"]["number"] != bad["number"]
    # a failed training still records what it used, its system metrics end with it, and it counts in the sum
    assert bad_run.data.metrics["resources.wall_seconds"] > 0 and "cost" in bad_run.data.metrics
    assert "system/cpu_utilization_percentage" in bad_run.data.metrics
    assert parent.data.metrics["cost"] == pytest.approx(sum(r.data.metrics["cost"] for r in children))
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


def test_cli_sweep_on_a_local_dask_cluster_of_two_worker_processes(lepton_env, prefect_server):
    """`lepton sweep --trials 4 --dask local`: the trials run in two Dask worker
    processes (not the CLI's), with the same shape of result as on threads."""
    from effects.tracking.tags import OWNER as TAG_OWNER

    _, env = lepton_env
    r = run_cli(
        [
            "sweep",
            "--trials",
            "4",
            "--parallel",
            "2",
            "--dask",
            "local",
            "--json",
            "--set",
            "train.epochs=2",
            "--set",
            "train.patience=0",
            "--set",
            "promote.min_accuracy=0.5",
            "--set",
            "registry.experiment=sweep-dask",
            "--set",
            "sweep.startup_trials=2",
            "--set",
            "sweep.space={train.lr: {low: 0.001, high: 0.02, log: true}, train.width: {choices: [8, 16]}}",
        ],
        {**env, "PREFECT_API_URL": prefect_server},
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout[r.stdout.index("{") :])
    assert result["runner"] == "local" and result["failed"] == 0
    _, parent, children = _check_shape(result, "sweep-dask", trials=4)
    assert parent.data.tags["lepton.sweep_runner"] == "local"
    pid = lambda run: run.data.tags[TAG_OWNER].split(":")[1]  # noqa: E731
    workers = {pid(c) for c in children}
    assert len(workers) == 2 and pid(parent) not in workers  # two worker processes, not the CLI


@pytest.mark.parametrize(
    "args, says",
    [
        (["--trials", "0"], "sweep.trials: Input should be greater than or equal to 1"),
        (["--set", "sweep.space={train.lrr: {low: 0.1, high: 0.2}}"], "unknown params path 'train.lrr'"),
        (["--set", "sweep.space={data.seed: {choices: [1, 2]}}"], "only train.* params can be searched"),
        (["--dask", "not an address"], "expected 'local' or a scheduler address"),
    ],
)
def test_cli_refuses_a_bad_budget_or_space_in_one_line(tmp_path, args, says):
    from tests.conftest import lepton_env_vars, make_project

    make_project(tmp_path / "project")
    env = lepton_env_vars(tmp_path)
    r = run_cli(["sweep", *args], env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and says in r.stderr
    assert not (tmp_path / "home" / "mlflow.db").exists()  # refused before any work
