"""Lepton's monitor flow vs a bare Evidently `Report.run` on the same data.

A tabular champion with 20 features is trained (synthetic data), then batches of
10,000 and 100,000 rows in the prediction-log format are checked by

  * bare:   Report([DataDriftPreset, ValueDrift(prediction), DataSummaryPreset]).run(current, reference)
  * lepton: the `monitor` flow (features, the same Evidently report plus the
            classification preset when labelled, verdict, MLflow logging, Prefect artifact),
            without adding the snapshot to the Evidently workspace and with it (a local
            workspace folder), four times each in turn (off, on, off, on, ...; single runs
            of the same flow vary by about a second, so the medians are shown), and `add`:
            the median time of that step alone

Both see the same reference (the champion's test-split profile) and current frames.
Run:  .venv/bin/python benchmarks/monitor.py   (numbers are printed, nothing asserted)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
N_FEATURES = 20


def synthetic_table(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, N_FEATURES)) + y[:, None] * 1.0 + shift
    df = pd.DataFrame(x, columns=[f"c{i}" for i in range(N_FEATURES)])
    df["label"] = y
    return df


ADDED: list[float] = []  # seconds of each add_snapshot call (the step alone)


def timed_flow(monitor, batch: Path, registry, snapshot: bool) -> tuple[float, str]:
    """One `monitor` flow run on `batch`, with or without adding its snapshot to the
    Evidently workspace (the step replaced by a no-op); seconds and the verdict."""
    import effects.monitoring.monitor as m
    from lepton_core.params import MonitorParams

    real = m.add_snapshot

    def add(*args, **kwargs):
        t = time.perf_counter()
        out = real(*args, **kwargs) if snapshot else None
        ADDED.append(time.perf_counter() - t)
        return out

    m.add_snapshot = add
    try:
        t0 = time.perf_counter()
        out = monitor(batch=str(batch), monitor=MonitorParams(min_rows=10), registry=registry)
        return time.perf_counter() - t0, out["results"][0]["verdict"]
    finally:
        m.add_snapshot = real


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="numbers are printed, nothing asserted"
    ).parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lepton-bench-monitor-"))
    os.environ.update(
        LEPTON_PROJECT_DIR=str(ROOT),
        LEPTON_HOME=str(tmp / "home"),
        LEPTON_DVC_REMOTE=str(tmp / "remote"),
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    for k in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "LEPTON_EVIDENTLY_URL", "LEPTON_EVIDENTLY_SECRET"):
        os.environ.pop(k, None)
    from effects.runtime.settings import configure_environment

    s = configure_environment(use_stack=False)
    from lepton.local_server import LocalPrefectServer

    server = LocalPrefectServer(tmp / "server.log").start()
    os.environ["PREFECT_API_URL"] = server.api_url
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    from effects.monitoring.monitor import _reference
    from effects.tracking import runs
    from flows.monitor import monitor
    from flows.retrain import retrain
    from lepton_core.params import DataParams, PromoteParams, RegistryParams, TrainParams

    server.wait_healthy()
    train_csv = tmp / "train.csv"
    synthetic_table(3000, 0).to_csv(train_csv, index=False)
    registry = RegistryParams(model_name="bench-tabular")
    first = retrain(
        data=DataParams(format="csv", path=str(train_csv), include_monitored=False),
        train=TrainParams(epochs=5, width=32),
        promote=PromoteParams(min_accuracy=0.5),
        registry=registry,
        progress=False,
    )
    print("champion:", first["decision"]["reason"])
    c = runs.client(s)
    champ = c.get_model_version_by_alias(registry.model_name, "champion")
    reference = _reference(c, champ.run_id, s)
    features = [col for col in reference.columns if col.startswith("f_")]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"reference: {len(reference)} rows x {len(features)} features (+ prediction, confidence, label)")

    rng = np.random.default_rng(1)
    for rows in (2_000, 10_000, 100_000):  # the first pair only warms up both paths
        cur = reference.sample(n=rows, replace=True, random_state=rows).reset_index(drop=True)
        cur[features] = cur[features] + rng.normal(0, 0.05, (rows, len(features)))
        cur = cur.drop(columns=["label"])
        cur["timestamp"] = pd.Timestamp.now(tz="UTC")
        cur["model_version"] = str(champ.version)
        batch = tmp / f"log-{rows}"
        batch.mkdir()
        cur.to_parquet(batch / "part-0.parquet", index=False)

        dd = DataDefinition(numerical_columns=features + ["confidence"], categorical_columns=["prediction"])
        ref_frame = reference.drop(columns=["label"])
        t0 = time.perf_counter()
        Report([DataDriftPreset(columns=features), ValueDrift(column="prediction"), DataSummaryPreset()]).run(
            Dataset.from_pandas(cur[features + ["prediction", "confidence"]], data_definition=dd),
            Dataset.from_pandas(ref_frame[features + ["prediction", "confidence"]], data_definition=dd),
        )
        bare = time.perf_counter() - t0

        times: dict[bool, list[float]] = {False: [], True: []}
        for snapshot in (False, True) * (1 if rows == 2_000 else 4):
            seconds, verdict = timed_flow(monitor, batch, registry, snapshot=snapshot)
            times[snapshot].append(seconds)
        if rows == 2_000:
            continue
        off, flow = statistics.median(times[False]), statistics.median(times[True])
        added = statistics.median(ADDED[-8:][1::2])  # the "on" runs' (the "off" ones add nothing)
        print(
            f"{rows:>7} rows: bare Evidently {bare:6.2f} s | monitor flow without snapshot {off:6.2f} s, "
            f"with {flow:6.2f} s ({flow / off - 1:+.1%}; add {added:4.2f} s) | "
            f"overhead over bare {flow - bare:5.2f} s ({flow / bare:.2f}x) | verdict: {verdict}"
        )
    server.stop()


if __name__ == "__main__":
    sys.exit(main())
