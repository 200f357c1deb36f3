"""The same sweep three ways: sequential, threads, and a 2-worker Dask LocalCluster.

8 trials (Optuna TPE, the same seed and space each time) on the bundled digits,
through the real sweep flow (Prefect, MLflow, DVC, the registry and the gate):

    sequential   one trial at a time (ThreadPoolTaskRunner, 1 thread)
    threads      2 trials at a time (ThreadPoolTaskRunner, 2 threads; the default)
    dask         2 trials at a time on a temporary LocalCluster of 2 single-threaded
                 worker processes (`lepton sweep --dask local`), cluster start included

Run:

    .venv/bin/python benchmarks/sweep.py [--trials 8] [--epochs 10]

A warm-up sweep of one short trial runs first (imports, the MLflow database, the
prepared and versioned dataset), so the three timed sweeps do the same work. Every
trial runs all its epochs (patience 0). Prints a markdown table: wall time of the
whole flow, the span of the trials (first trial start to last trial end, from the
MLflow runs), the speed-up of each over sequential, the median training time of
one trial, and the 1-minute load average (start and end of each sweep, averaged:
on a shared machine it says how much of the CPU the sweep had). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads)"
    )


def _trials(experiment: str) -> tuple[float, float]:
    """From the trials' MLflow runs: first trial start to last trial end (each trial's
    own end, not the best one's later registration), and the median training time."""
    import statistics

    from effects.tracking.runs import client
    from effects.tracking.tags import SWEEP as TAG_SWEEP

    c = client()
    exp = c.get_experiment_by_name(experiment)
    runs = [r for r in c.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get(TAG_SWEEP) == "trial"]
    end = max(r.info.start_time / 1000 + r.data.metrics["trial_seconds"] for r in runs)
    return end - min(r.info.start_time for r in runs) / 1000, statistics.median(
        r.data.metrics["train_seconds"] for r in runs
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="lepton-bench-sweep-"))
    for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(k, None)
    os.environ.update(
        LEPTON_PROJECT_DIR=str(ROOT),
        LEPTON_HOME=str(base / "home"),
        LEPTON_DVC_REMOTE=str(base / "remote"),
        PREFECT_HOME=str(base / "prefect"),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    from effects.runtime.settings import configure_environment

    configure_environment()
    from lepton.local_server import LocalPrefectServer

    server = LocalPrefectServer(base / "prefect-server.log").start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        server.wait_healthy()
        from flows.sweep import sweep
        from lepton_core.params import load_params

        params = load_params(
            ROOT / "params.yaml", [f"train.epochs={args.epochs}", "train.patience=0", "promote.min_accuracy=0"]
        )

        def run(name: str, parallel: int, dask: str | None, trials: int, epochs: int | None = None) -> dict:
            train = params.train if epochs is None else params.train.model_copy(update={"epochs": epochs})
            sw = params.sweep.model_copy(update={"trials": trials, "parallel": parallel})
            reg = params.registry.model_copy(update={"experiment": f"bench-sweep-{name}"})
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            r = sweep(
                data=params.data,
                train=train,
                promote=params.promote,
                registry=reg,
                deploy=params.deploy,
                monitor=params.monitor,
                serve=params.serve,
                optimize=params.optimize,
                sweep=sw,
                dask=dask,
                progress=False,
            )
            wall = time.perf_counter() - t0
            span, train_median = _trials(reg.experiment)
            return {
                "name": name,
                "wall": wall,
                "span": span,
                "train": train_median,
                "best": r["best"]["value"],
                "failed": r["failed"],
                "load": (load0 + os.getloadavg()[0]) / 2,
            }

        run("warmup", 1, None, trials=1, epochs=1)
        rows = [
            run("sequential", 1, None, args.trials),
            run("threads", 2, None, args.trials),
            run("dask", 2, "local", args.trials),
        ]
    finally:
        server.stop()

    seq = rows[0]
    print(
        f"\n{args.trials} trials x {args.epochs} epochs on digits (sweep.space of params.yaml, TPE seed "
        f"{params.sweep.seed}); {_machine()}\n"
    )
    print(
        "| runner | trials at once | wall time (s) | trials span (s) | speed-up (wall) | speed-up (span) "
        "| median training of a trial (s) | best val accuracy | failed | load average |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    labels = {
        "sequential": ("sequential (1 thread)", 1),
        "threads": ("ThreadPoolTaskRunner", 2),
        "dask": ("DaskTaskRunner, LocalCluster 2 processes", 2),
    }
    for r in rows:
        label, k = labels[r["name"]]
        print(
            f"| {label} | {k} | {r['wall']:.1f} | {r['span']:.1f} | {seq['wall'] / r['wall']:.2f}x "
            f"| {seq['span'] / r['span']:.2f}x | {r['train']:.1f} | {r['best']:.4f} | {r['failed']} "
            f"| {r['load']:.1f} |"
        )


if __name__ == "__main__":
    main()
