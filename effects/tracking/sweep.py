"""A sweep's side effects: the Optuna study (TPE, ask/tell) and the MLflow runs, one
parent run holding the search space and the best result, one nested run per trial.

The study lives in memory in the process that runs the sweep flow; trials run
wherever the task runner puts them and only report a number back, so the
search itself never leaves one thread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from effects.runtime.procs import process_identity
from effects.runtime.settings import Settings
from effects.tracking import runs, tags
from lepton_core.params import Params, SweepParams, flatten_params
from lepton_core.resources import Usage, usage_text
from lepton_core.sweep import Dimension, goal, space_record


# ---------------------------------------------------------------- the search
def _distribution(d: Dimension):
    if d.kind == "categorical":
        return CategoricalDistribution(list(d.choices))
    assert d.low is not None and d.high is not None  # a numeric dimension always has its range (lepton_core.sweep)
    if d.kind == "int":
        return IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
    return FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)


@dataclass
class Suggestion:
    number: int
    values: dict[str, Any]


@dataclass
class Search:
    """Optuna's TPE over the space, driven by ask/tell (one study in memory)."""

    dims: tuple[Dimension, ...]
    sweep: SweepParams
    study: optuna.Study = field(init=False)
    asked: int = 0
    errors: dict[int, str] = field(default_factory=dict)
    outcomes: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(
            seed=self.sweep.seed,
            n_startup_trials=self.sweep.startup_trials,
            constant_liar=True,  # trials still running count as (pessimistic) results, so parallel asks spread out
        )
        self.study = optuna.create_study(direction=goal(self.sweep), sampler=sampler)
        self._dists = {d.path: _distribution(d) for d in self.dims}

    @property
    def more(self) -> bool:
        """Whether the budget allows another trial."""
        return self.asked < self.sweep.trials

    def ask(self) -> Suggestion:
        trial = self.study.ask(fixed_distributions=self._dists)
        self.asked += 1
        return Suggestion(trial.number, dict(trial.params))

    def tell(self, number: int, outcome: Any) -> None:
        """Report a trial: its outcome (anything with `value` and `run_id`), or the
        exception it raised, which marks the trial FAIL."""
        if isinstance(outcome, BaseException):
            self.errors[number] = f"{type(outcome).__name__}: {outcome}".splitlines()[0][:500]
            self.study.tell(number, state=TrialState.FAIL)
            return
        self.outcomes[number] = outcome
        self.study.tell(number, float(outcome.value))

    def best_outcome(self) -> Any | None:
        """The outcome of the best finished trial (None when none finished)."""
        if not any(t.state == TrialState.COMPLETE for t in self.study.trials):
            return None
        return self.outcomes[self.study.best_trial.number]

    def best(self) -> dict[str, Any] | None:
        o = self.best_outcome()
        return (
            None if o is None else {"number": o.number, "value": o.value, "values": dict(o.values), "run_id": o.run_id}
        )

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "values": dict(t.params),
                "run_id": getattr(self.outcomes.get(t.number), "run_id", None),
                "error": self.errors.get(t.number),
            }
            for t in self.study.trials
        ]


# ---------------------------------------------------------------- the runs
def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def open_parent_run(
    c,
    experiment_id: str,
    params: Params,
    dims: tuple[Dimension, ...],
    data,
    *,
    runner: str,
    flow_run_id: str,
    s: Settings,
) -> str:
    """The sweep's parent run: every section's params, the search space (as params
    `space.<path>` and as sweep/search_space.json) and the dataset as its input."""
    commit = runs.git_commit(s.project_dir)
    run = c.create_run(
        experiment_id,
        run_name=f"sweep-{_stamp()}-data-{data.version[:8]}",
        tags={
            tags.SWEEP: "parent",
            tags.DATA_VERSION: data.version,
            tags.GIT_COMMIT: commit,
            tags.OWNER: process_identity(),
            tags.SWEEP_RUNNER: runner,
        },
    )
    run_id = run.info.run_id
    with runs.failing_run(c, run_id):
        sweep = params.sweep
        flat = {
            **flatten_params(params),
            **{f"space.{d.path}": d.describe() for d in dims},
            "sweep.metric": sweep.metric,
            "sweep.goal": goal(sweep),
            "sweep.trials": str(sweep.trials),
            "sweep.parallel": str(sweep.parallel),
            "sweep.startup_trials": str(sweep.startup_trials),
            "sweep.seed": str(sweep.seed),
            "sweep.sampler": "optuna.TPESampler",
        }
        runs.log_params_and_tags(c, run_id, flat, {})
        c.log_dict(
            run_id,
            {"metric": sweep.metric, "goal": goal(sweep), "space": space_record(dims)},
            "sweep/search_space.json",
        )
        runs.log_run_lineage(
            c, run_id, data, s, git_commit=commit, source_name="flows/sweep.py", flow_run_id=flow_run_id
        )
    return run_id


def open_trial_run(
    c, experiment_id: str, parent_run_id: str, number: int, values: dict[str, Any], data, s: Settings
) -> str:
    """A trial's run, nested under the parent; its searched values as tags until its
    full params are known (they are logged once they validate)."""
    run = c.create_run(
        experiment_id,
        run_name=f"trial-{number:03d}",
        tags={
            tags.PARENT: parent_run_id,
            tags.SWEEP: "trial",
            tags.SWEEP_TRIAL: str(number),
            tags.DATA_VERSION: data.version,
            tags.GIT_COMMIT: runs.git_commit(s.project_dir),
            tags.OWNER: process_identity(),
            "mlflow.source.name": "flows/sweep.py",
            **{tags.TRIAL_PREFIX + k: json.dumps(v) for k, v in values.items()},
        },
    )
    return run.info.run_id


def child_runs(c, experiment_id: str, parent_run_id: str) -> list:
    return c.search_runs([experiment_id], filter_string=f"tags.`{tags.PARENT}` = '{parent_run_id}'", max_results=10_000)


def close_parent_run(
    c,
    parent_run_id: str,
    search: Search,
    *,
    version: str | None = None,
    decision: dict | None = None,
    test_metrics: dict[str, float] | None = None,
) -> dict:
    """Record the outcome on the parent run (best trial, counts, the table of
    trials, the registered version and the gate's word) and finish it. Failed
    trials get their child run's id from MLflow (their task never returned one)."""
    exp = c.get_run(parent_run_id).info.experiment_id
    children = child_runs(c, exp, parent_run_id)
    by_number = {r.data.tags.get(tags.SWEEP_TRIAL): r.info.run_id for r in children}
    spent = trials_cost(children)
    table = search.table()
    for row in table:
        row["run_id"] = row["run_id"] or by_number.get(str(row["number"]))
    best = search.best()
    metric = search.sweep.metric
    failed = sum(1 for r in table if r["state"] == "FAIL")
    metrics = [
        runs.Metric("trials_complete", sum(1 for r in table if r["state"] == "COMPLETE"), 0, 0),
        runs.Metric("trials_failed", failed, 0, 0),
        runs.Metric("cost", spent["amount"], 0, 0),
        *(runs.Metric(f"resources.{k}", spent[k], 0, 0) for k in ("cpu_seconds", "gpu_seconds", "peak_rss_mb")),
    ]
    run_tags = [runs.RunTag(tags.COST_CURRENCY, spent["currency"])]
    if best is not None:
        metrics.append(runs.Metric(f"best_{metric}", float(best["value"]), 0, 0))
        metrics += [runs.Metric(f"best_{k}", float(v), 0, 0) for k, v in (test_metrics or {}).items()]
        run_tags += [runs.RunTag(tags.BEST_TRIAL, str(best["number"])), runs.RunTag(tags.BEST_RUN_ID, best["run_id"])]
        run_tags += [runs.RunTag(tags.BEST_PREFIX + k, json.dumps(v)) for k, v in best["values"].items()]
    if version is not None:
        run_tags.append(runs.RunTag(tags.REGISTERED_VERSION, str(version)))
    if decision is not None:
        run_tags += [
            runs.RunTag(tags.GATE_PROMOTED, str(bool(decision.get("promoted")))),
            runs.RunTag(tags.GATE_REASON, str(decision.get("reason", ""))[:5000]),
        ]
    c.log_batch(parent_run_id, metrics=metrics, tags=run_tags)
    c.log_dict(parent_run_id, {"best": best, "trials": table}, "sweep/trials.json")
    c.set_terminated(parent_run_id, "FINISHED" if best is not None else "FAILED")
    return {"best": best, "trials": table, "failed": failed, "cost": spent}


def trials_cost(children: list) -> dict[str, Any]:
    """What the trials used and cost, all together (failed trials too): their `cost` and
    seconds summed, the highest peak memory; in the trials' currency."""
    figures = [Usage.from_metrics(r.data.metrics) for r in children]
    return {
        "amount": sum(float(r.data.metrics.get("cost", 0.0)) for r in children),
        "currency": next((r.data.tags[tags.COST_CURRENCY] for r in children if tags.COST_CURRENCY in r.data.tags), ""),
        "cpu_seconds": sum(u.cpu_seconds for u in figures),
        "gpu_seconds": sum(u.gpu_seconds for u in figures),
        "peak_rss_mb": max((u.peak_rss_mb for u in figures), default=0.0),
        "peak_gpu_mb": max((u.peak_gpu_mb for u in figures), default=0.0),
        "trials": len(children),
    }


def sweep_markdown(result: dict, model_name: str) -> str:
    """The Prefect UI's summary of a sweep: the trials' table and the best one's fate."""
    d, best = result["decision"], result["best"]
    verdict = "**promoted to @champion**" if d["promoted"] else "**not promoted**"
    lines = [
        f"# Sweep: {len(result['trials'])} trials, best trial {best['number']} -> "
        f"{model_name} v{result['version']} {verdict}",
        "",
        f"Gate: {d['reason']}",
        "",
        f"| trial | state | {result['metric']} | values | MLflow run |",
        "|---|---|---|---|---|",
    ]
    for t in result["trials"]:
        value = "" if t["value"] is None else f"{t['value']:.4f}"
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["values"].items())
        lines.append(f"| {t['number']} | {t['state']} | {value} | {values} | `{t['run_id']}` |")
    lines += [
        "",
        f"- parent MLflow run: `{result['parent_run_id']}` (runner: {result['runner']})",
        f"- {_test_figures(result['metrics'])} of the best",
        f"- data version: `{result['data_version']}`",
    ]
    if result.get("cost"):
        lines.append(f"- cost of the {result['cost']['trials']} trials: {usage_text(result['cost'])}")
    return "\n".join(lines) + "\n"


def _test_figures(metrics: dict[str, float]) -> str:
    """The best trial's headline test figures: accuracy, or (regression) RMSE and R²."""
    if "test_rmse" in metrics:
        return f"test RMSE {metrics['test_rmse']:.4g}, R² {metrics.get('test_r2', float('nan')):.4f}"
    return f"test accuracy {metrics['test_accuracy']:.4f}"
