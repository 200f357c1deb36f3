"""Test helpers for the Evidently workspace: start `evidently ui`, read a project's
dashboard points the way its page does, and take the docs' screenshot of it.

    .venv/bin/python -m tests.evidently_ui docs/images/evidently-dashboard.png

starts `evidently ui` on a temporary workspace, adds three monitor snapshots of small
synthetic batches (a reference and batches drifting further each time) and saves the
project's dashboard as rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from effects.runtime.procs import free_port

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def evidently_ui(workspace: Path, secret: str = "test-secret", timeout: float = 60.0):
    """`evidently ui` on 127.0.0.1 and a free port, telemetry off; yields its URL and
    stops it (this process only) at the end."""
    port = free_port()
    log = open(workspace.parent / f"evidently-ui-{port}.log", "w")
    cmd = [str(ROOT / ".venv" / "bin" / "evidently"), "ui", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workspace", str(workspace)]  # the write secret through the environment, as `lepton up` does
    env = {**os.environ, "DO_NOT_TRACK": "1", "EVIDENTLY_SECRET": secret}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, (workspace.parent / f"evidently-ui-{port}.log").read_text()[-2000:]
            try:
                get(url + "/api/version")
                break
            except OSError:
                assert time.monotonic() < deadline, "evidently ui did not answer"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def http_points(url: str, project_name: str) -> dict[str, dict]:
    """Each panel of the project's dashboard, read through the UI's HTTP API as its page
    does: GET /api/v2/dashboards/{project}, then per panel
    POST /api/v2/snapshots/{project}/data_series_batch with the panel's series filter.
    -> {title: {"sources": [...], "series": [...]}}"""
    (project,) = [p for p in get(url + "/api/projects") if p["name"] == project_name]
    board = get(f"{url}/api/v2/dashboards/{project['id']}")
    keys = ("tags", "metadata", "metric", "metric_labels")
    out = {}
    for panel in board["panels"]:
        body = {"series_filter": [{k: v[k] for k in keys} for v in panel["values"]]}
        out[panel["title"]] = post(f"{url}/api/v2/snapshots/{project['id']}/data_series_batch", body)
    return out


def local_points(path: Path, project_name: str) -> dict[str, dict]:
    """The same, from a local workspace folder, through the storage code `evidently ui` uses."""
    from evidently.legacy.utils.sync import async_to_sync
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(path))
    (project,) = ws.search_project(project_name)
    store = InMemoryDataStorage(str(path))
    out = {}
    for panel in ws.get_dashboard(project.id).panels:
        filters = [
            SeriesFilter(**v.dict(include={"tags", "metadata", "metric", "metric_labels"})) for v in panel.values
        ]
        out[panel.title] = json.loads(async_to_sync(store.get_data_series(project.id, filters, None, None)).json())
    return out


def synthetic_records(n: int = 3, rows: int = 80, seed: int = 0):
    """`n` monitor reports of small synthetic batches against one reference, each
    drifting further, as SnapshotRecords an hour apart (the last one now)."""
    import numpy as np
    import pandas as pd

    from effects.monitoring.drift_report import run_drift_report
    from effects.monitoring.workspace import SnapshotRecord

    features = [f"f_{name}" for name in ("mean_intensity", "contrast", "ink_fraction", "edge_energy")]

    def frame(seed: int, n_rows: int, shift: float, accuracy: float) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        df = pd.DataFrame(rng.normal(size=(n_rows, len(features))) + shift, columns=features)
        y = rng.integers(0, 3, n_rows)
        pred = np.where(rng.random(n_rows) < accuracy, y, rng.integers(0, 3, n_rows))
        df["prediction"] = np.where(rng.random(n_rows) < shift / 2, 0, pred)  # drifted batches lean to class 0
        df["label"], df["confidence"] = y, rng.beta(8 - 3 * shift, 2, n_rows)
        return df

    reference = frame(seed, 150, 0.0, 0.95)
    out_dir = Path(tempfile.mkdtemp(prefix="lepton-evidently-"))
    now = datetime.now(UTC).replace(microsecond=0)
    records = []
    for i in range(n):
        current = frame(seed + 1 + i, rows + 10 * i, 0.4 * i, 0.95 - 0.1 * i)
        drift = run_drift_report(reference, current, features, out_dir / str(i), title=f"batch-{i}")
        when = now - timedelta(hours=n - 1 - i)
        records.append(SnapshotRecord(drift.snapshot, features, False, when))
    shutil.rmtree(out_dir, ignore_errors=True)
    return records


def result(i: int, version: str = "3", status: str = "no drift") -> SimpleNamespace:
    """The MonitorResult fields add_snapshot reads."""
    return SimpleNamespace(
        batch_id=f"batch-{i}",
        mlflow_run_id=f"run{i:028d}",
        champion_version=version,
        status=status,
        verdict=status,
        report_url=None,
    )


def screenshot(url: str, out: Path, profile: Path, size: str = "1400,2250") -> None:
    """The page at `url` as headless Chromium renders it (Debian's chromium)."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    flags += [f"--user-data-dir={profile}", "--virtual-time-budget=15000", f"--window-size={size}", "--hide-scrollbars"]
    r = subprocess.run([chromium, *flags, f"--screenshot={out}", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]


def main(out: Path) -> None:
    from effects.monitoring import workspace

    tmp = Path(tempfile.mkdtemp(prefix="lepton-evidently-shot-"))
    try:
        with evidently_ui(tmp / "workspace", secret="docs") as url:
            os.environ.update({workspace.URL_ENV: url, workspace.SECRET_ENV: "docs"})
            s = SimpleNamespace(home=tmp / "home")
            for i, record in enumerate(synthetic_records()):
                assert workspace.add_snapshot(record, "lepton-digits", result(i), 500, s)
            (project,) = [p for p in get(url + "/api/projects") if p["name"] == "lepton-digits"]
            screenshot(f"{url}/projects/{project['id']}", out, tmp / "profile")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "evidently-dashboard.png").resolve())
