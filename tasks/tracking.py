"""MLflow plumbing shared by the tasks: the client, the experiment, the batched
metric logger that training's `log(step, metrics)` calls, and provenance tags."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag  # noqa: F401 (re-exported)
from mlflow.tracking import MlflowClient

from tasks.settings import Settings, get_settings

TAG_DATA_VERSION = "lepton.data_version"
TAG_GIT_COMMIT = "lepton.git_commit"
TAG_FLOW_RUN = "lepton.prefect_flow_run_id"
TAG_RUN_ID = "lepton.run_id"


def client(settings: Settings | None = None) -> MlflowClient:
    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.tracking_uri, registry_uri=s.tracking_uri)


def ensure_experiment(c: MlflowClient, name: str, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_artifact_location(s, name))
    except Exception:
        exp = c.get_experiment_by_name(name)  # another process created it meanwhile
        if exp is None:
            raise
        return exp.experiment_id


def _artifact_location(s: Settings, name: str) -> str | None:
    if s.tracking_uri.startswith(("http://", "https://")):
        return None  # the server decides (e.g. --serve-artifacts to S3)
    root = s.artifact_root
    if "://" not in root:
        Path(root).mkdir(parents=True, exist_ok=True)
        return Path(root).resolve().as_uri() + "/" + name
    return root.rstrip("/") + "/" + name


class BatchedMetricLogger:
    """`log(step, metrics)` for the training loop: buffers metrics and sends them
    with `log_batch` at most every `interval` seconds (one call, many numbers)."""

    def __init__(self, c: MlflowClient, run_id: str, interval: float = 2.0, prefix: str = ""):
        self.c, self.run_id, self.interval, self.prefix = c, run_id, interval, prefix
        self.buffer: list[Metric] = []
        self.last = time.monotonic()
        self.calls = 0

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        ts = int(time.time() * 1000)
        self.buffer += [Metric(self.prefix + k, float(v), ts, step) for k, v in metrics.items()]
        if time.monotonic() - self.last >= self.interval or len(self.buffer) >= 900:
            self.flush()

    def flush(self) -> None:
        while self.buffer:
            chunk, self.buffer = self.buffer[:1000], self.buffer[1000:]
            self.c.log_batch(self.run_id, metrics=chunk)
            self.calls += 1
        self.last = time.monotonic()


def log_params_and_tags(c: MlflowClient, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
    items = list(params.items())
    for i in range(0, max(len(items), 1), 100):
        c.log_batch(
            run_id,
            params=[Param(k, v[:6000]) for k, v in items[i : i + 100]],
            tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
        )


def git_commit(project_dir: Path) -> str:
    """HEAD of the project's git checkout (suffix '-dirty' with local changes)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(project_dir), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(project_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_artifact(c: MlflowClient, run_id: str, path: str, home: Path) -> Path:
    """A run's artifact as a local file (downloaded under <home>/runs/<run_id>/download)."""
    dst = home / "runs" / run_id / "download"
    dst.mkdir(parents=True, exist_ok=True)
    return Path(c.download_artifacts(run_id, path, str(dst)))


def flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")
