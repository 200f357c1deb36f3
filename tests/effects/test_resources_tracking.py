"""A run's resources and cost on MLflow (effects.tracking.resources), on a real SQLite
store: a resumed attempt adds to what the failed one recorded; the system-metrics
monitor leaves a point for a run shorter than its interval, and its thread ends."""

from __future__ import annotations

import threading
import time

import pytest

from lepton_core.params import CostParams
from lepton_core.resources import Usage


def test_a_second_attempt_adds_to_the_first_and_a_short_run_gets_a_system_point(tmp_path):
    from mlflow.tracking import MlflowClient

    from effects.tracking import resources

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    c = MlflowClient(uri)
    run_id = c.create_run(c.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    prices = CostParams(currency="EUR", cpu_core_hour=1.0, gpu_hour=10.0)
    monitor = resources.start_system_metrics(run_id, 15, uri)
    time.sleep(0.2)  # far shorter than the interval
    resources.stop_system_metrics(monitor)
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    resources.record(c, run_id, Usage(cpu_seconds=30, peak_rss_mb=800, wall_seconds=20), prices)  # failed attempt
    total = resources.record(c, run_id, Usage(cpu_seconds=6, peak_rss_mb=500, wall_seconds=4, gpu_seconds=36), prices)
    m = c.get_run(run_id).data.metrics
    assert m["resources.cpu_seconds"] == 36 and m["resources.wall_seconds"] == 24
    assert m["resources.peak_rss_mb"] == 800 and m["resources.gpu_seconds"] == 36
    assert m["cost"] == pytest.approx(36 / 3600 * 1.0 + 36 / 3600 * 10.0) == pytest.approx(total["amount"])
    assert "system/cpu_utilization_percentage" in m
    assert resources.recorded_cost(c.get_run(run_id)) == total  # as `lepton status` reads it
    assert resources.start_system_metrics(run_id, 0, uri) is None  # 0: off
