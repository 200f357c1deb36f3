"""Lepton's own overhead: `lepton retrain` end to end vs the bare training loop,
and what the model report (`evaluate.report`) adds to a retrain.

Both train the same model on the same prepared digits with the same params (the
loop is deterministic, so both run the same epochs). Run:

    .venv/bin/python benchmarks/overhead.py [--repeats 3]

It uses a fresh temporary project (so the first `lepton retrain` is "cold": new
MLflow database, new DVC repo, new Prefect database) and prints every timing and
the differences. The report's cost is the retrain's time outside training (wall
minus the run's `train_seconds`, so the training's own jitter drops out) with the
report and with `--set evaluate.report=false`, both warm, in turn. Nothing is
asserted: the numbers are for the README and docs/model-report.md.

    .venv/bin/python benchmarks/overhead.py --resources [--repeats 5]

measures only what recording a run's resources and cost, with MLflow's system-metrics
monitor at `cost.system_metrics_seconds`, adds to the digits retrain: the retrain flow
in this process with both on and with both off, in turn (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BARE = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
from lepton_core.data.formats import load_digits
from lepton_core.data.prepare import prepare_dataset
from lepton_core.models import model_config_for
from lepton_core.params import load_params
from lepton_core.predictor import Preprocessing, model_input
from lepton_core.train import train_model
params = load_params(sys.argv[1])
p, tp = prepare_dataset(load_digits(), val_fraction=params.data.val_fraction,
                        test_fraction=params.data.test_fraction, seed=params.data.seed), params.train
cfg = model_config_for(p.meta, tp.model, tp.width, tp.depth, tp.dropout)
pre = Preprocessing.from_meta(p.meta)
t1 = time.perf_counter()
r = train_model(cfg, tp, model_input(p.x["train"], pre, cfg), torch.from_numpy(p.y["train"]),
                model_input(p.x["val"], pre, cfg), torch.from_numpy(p.y["val"]), progress=False)
t2 = time.perf_counter()
print(json.dumps({"setup_s": t1 - t0, "train_s": t2 - t1, "epochs": r.epochs_run}))
"""


def _env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LEPTON_HOME", "PREFECT_HOME"):
        env.pop(k, None)
    env.update(
        LEPTON_PROJECT_DIR=str(ROOT),
        LEPTON_HOME=str(base / "home"),
        LEPTON_DVC_REMOTE=str(base / "remote"),
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
    )
    return env


def bare_loop(env: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", BARE, str(ROOT / "params.yaml")], env=env, capture_output=True, text=True, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    return res


def lepton_retrain(env: dict[str, str], *sets: str) -> dict:
    from mlflow.tracking import MlflowClient

    t0 = time.perf_counter()
    overrides = [a for s in sets for a in ("--set", s)]
    out = subprocess.run(
        [sys.executable, "-c", "from lepton.cli import main; main()", "retrain", "--no-progress", "--json", *overrides],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"lepton retrain failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout[out.stdout.index("{") :])["result"]
    home = Path(env["LEPTON_HOME"])
    run = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(result["run_id"])
    return {"wall_s": wall, "train_s": run.data.metrics["train_seconds"], "epochs": int(run.data.metrics["epochs_run"])}


def _bench_server(env: dict[str, str]):  # noqa: ANN202 - a LocalPrefectServer, imported late
    """A temporary Prefect server for the in-process flow runs, this process pointed at it."""
    os.environ.update(env)
    from lepton.local_server import LocalPrefectServer

    server = LocalPrefectServer(Path(env["LEPTON_HOME"]) / "bench-server.log").start()
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return server


def in_process_flow(env: dict[str, str], repeats: int) -> tuple[dict[bool, list[dict]], dict[bool, list[float]]]:
    """The retrain flow called in this process, imports and server already paid:
    what the orchestration, tracking, DVC and registry steps themselves cost, with
    the model report (True) and without it (False), in turn; then the evaluate step
    alone, with and without it."""
    server = _bench_server(env)
    from mlflow.tracking import MlflowClient

    from flows.retrain import retrain
    from lepton_core.params import EvaluateParams, load_params

    server.wait_healthy()
    p = load_params(ROOT / "params.yaml")
    client = MlflowClient(f"sqlite:///{Path(env['LEPTON_HOME']) / 'mlflow.db'}")
    out: dict[bool, list[dict]] = {True: [], False: []}
    try:
        for i in range(repeats + 1):
            for report in (True, False):
                t0 = time.perf_counter()
                r = retrain(
                    data=p.data,
                    train=p.train,
                    evaluate=EvaluateParams(report=report),
                    promote=p.promote,
                    registry=p.registry,
                    progress=False,
                )
                wall = time.perf_counter() - t0
                if i:  # the first round warms torch.export and the clients
                    train_s = client.get_run(r["run_id"]).data.metrics["train_seconds"]
                    out[report].append({"wall_s": wall, "train_s": train_s})
        steps = evaluate_step(r["run_id"], max(repeats, 5))
    finally:
        server.stop()
    return out, steps


def evaluate_step(run_id: str, pairs: int) -> dict[bool, list[float]]:
    """The evaluate task alone on a finished run (its plain function), with the report
    and without it, in turn: the report's own seconds, with little else around them."""
    from effects.data.dvc_store import version_dataset
    from effects.runtime.settings import get_settings
    from lepton_core.params import EvaluateParams, load_params
    from tasks.evaluate import evaluate

    data = version_dataset(load_params(ROOT / "params.yaml").data)
    checkpoint = str(get_settings().home / "runs" / run_id / "model.pt")
    out: dict[bool, list[float]] = {True: [], False: []}
    for i in range(pairs + 1):
        for report in (True, False):
            t0 = time.perf_counter()
            evaluate.fn(run_id, checkpoint, data, EvaluateParams(report=report))
            if i:  # the first pair warms the clients
                out[report].append(time.perf_counter() - t0)
    return out


@contextmanager
def _unmetered(*_args, **_kwargs):
    """effects.tracking.resources.metered with nothing measured, sampled or logged."""

    class Nothing:
        summary: dict = {}

        def trained(self, *_a, **_k) -> None:
            pass

    yield Nothing()


def resources_overhead(env: dict[str, str], repeats: int) -> None:
    """The retrain flow in this process (server up, imports paid, model report off) with
    resource recording and the system-metrics monitor on, and with both off, in turn
    after one warm-up run; and, measured directly in the runs with them on, the
    recording's own seconds on the retrain's path (start the monitor, stop it, log the
    figures) and the CPU seconds of the monitor's sampling thread."""
    server = _bench_server(env)
    import effects.training.tracked as tracked
    from effects.tracking import resources
    from flows.retrain import retrain
    from lepton_core.params import EvaluateParams, load_params

    server.wait_healthy()
    p = load_params(ROOT / "params.yaml")
    own, sampler = _instrument(resources)
    walls: dict[bool, list[float]] = {True: [], False: []}
    own_per_run, sampler_per_run = [], []
    try:
        for on in [False] + [on for i in range(repeats) for on in ((True, False) if i % 2 else (False, True))]:
            tracked.metered = resources.metered if on else _unmetered  # type: ignore[assignment]
            own.clear()
            sampler.clear()
            t0 = time.perf_counter()
            retrain(
                **{s: getattr(p, s) for s in ("data", "train", "promote", "registry", "cost")},
                evaluate=EvaluateParams(report=False),
                progress=False,
            )
            walls[on].append(time.perf_counter() - t0)
            if on:
                own_per_run.append(sum(own))
                sampler_per_run.append(sum(sampler))
    finally:
        server.stop()
    _print_resources(p.cost.system_metrics_seconds, walls[True], walls[False][1:], own_per_run, sampler_per_run)


def _instrument(resources) -> tuple[list[float], list[float]]:
    """Time the recording's steps (into the first list) and the sampling thread's CPU
    seconds (into the second)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    own: list[float] = []
    sampler: list[float] = []
    for name in ("start_system_metrics", "stop_system_metrics", "record"):
        setattr(resources, name, _timed(getattr(resources, name), own))
    loop = SystemMetricsMonitor.monitor

    def monitor(self):
        try:
            loop(self)
        finally:
            sampler.append(time.thread_time())

    SystemMetricsMonitor.monitor = monitor
    return own, sampler


def _print_resources(interval: float, on: list[float], off: list[float], own: list[float], sampler: list[float]):
    med = statistics.median
    print(f"cost.system_metrics_seconds = {interval:g}; {len(on)} runs with, {len(off)} without, in turn")
    print(f"retrain flow, resources and system metrics on   {med(on):7.3f} s (median; {min(on):.2f} to {max(on):.2f})")
    print(
        f"retrain flow, resources and system metrics off  {med(off):7.3f} s (median; {min(off):.2f} to {max(off):.2f})"
    )
    print(f"difference of the medians: {med(on) - med(off):+.3f} s")
    print(f"the recording's own seconds on the retrain's path: {med(own):.3f} s per run (median)")
    print(f"the sampling thread's CPU: {med(sampler):.3f} s per run (median)")


def _timed(fn, into: list[float]):
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)

    return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="warm runs of each (default 3)")
    ap.add_argument("--resources", action="store_true", help="only: resource recording and system metrics on vs off")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        env = _env(Path(tmp))
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        if args.resources:
            resources_overhead(env, args.repeats)
            return
        bare = [bare_loop(env) for _ in range(args.repeats)]
        cold = lepton_retrain(env)
        warm, plain = [], []
        for _ in range(args.repeats):  # in turn, so a busy moment hits both alike
            warm.append(lepton_retrain(env))
            plain.append(lepton_retrain(env, "evaluate.report=false"))
        flows, steps = in_process_flow(env, args.repeats)

    med = statistics.median
    bare_train = med(b["train_s"] for b in bare)
    bare_proc = med(b["process_s"] for b in bare)
    warm_wall = med(w["wall_s"] for w in warm)
    warm_train = med(w["train_s"] for w in warm)
    print(f"epochs trained (same in both): bare {bare[0]['epochs']}, lepton {warm[0]['epochs']}")
    print(f"bare training loop                 {bare_train:6.2f} s  (median of {len(bare)})")
    print(f"bare script, whole process         {bare_proc:6.2f} s  (imports + prepare + loop)")
    print(f"lepton retrain, cold (new state)   {cold['wall_s']:6.2f} s  (training inside: {cold['train_s']:.2f} s)")
    print(
        f"lepton retrain, warm               {warm_wall:6.2f} s  (training inside: {warm_train:.2f} s; median of {len(warm)})"
    )
    flow_wall = med(f["wall_s"] for f in flows[True])
    flow_train = med(f["train_s"] for f in flows[True])
    print(f"retrain flow in-process (no imports, server up) {flow_wall:6.2f} s  (training inside: {flow_train:.2f} s)")
    print(f"overhead, flow only: flow - its own training {flow_wall - flow_train:6.2f} s")
    print(f"overhead, warm: lepton - bare loop {warm_wall - bare_train:6.2f} s")
    print(f"overhead, warm: lepton - bare script {warm_wall - bare_proc:6.2f} s")
    print(f"overhead, cold: lepton - bare loop {cold['wall_s'] - bare_train:6.2f} s")
    report_rows(warm, plain, flows, steps)


def report_rows(
    warm: list[dict], plain: list[dict], flows: dict[bool, list[dict]], steps: dict[bool, list[float]]
) -> None:
    """What the model report adds: time outside training, with and without it."""
    med = statistics.median

    def outside(runs: list[dict]) -> float:
        return med(r["wall_s"] - r["train_s"] for r in runs)

    cli_on, cli_off = outside(warm), outside(plain)
    flow_on, flow_off = outside(flows[True]), outside(flows[False])
    n = len(warm)
    print(
        f"lepton retrain, warm, outside training: with report {cli_on:6.2f} s, without {cli_off:6.2f} s (median of {n})"
    )
    print(f"retrain flow in-process, outside training: with report {flow_on:6.2f} s, without {flow_off:6.2f} s")
    step_on, step_off = med(steps[True]), med(steps[False])
    print(
        f"evaluate step alone: with report {step_on:6.2f} s, without {step_off:6.2f} s (median of {len(steps[True])})"
    )
    print(
        f"the model report adds: {cli_on - cli_off:+.2f} s (lepton retrain), {flow_on - flow_off:+.2f} s (flow), "
        f"{step_on - step_off:+.2f} s (evaluate step)"
    )


if __name__ == "__main__":
    main()
