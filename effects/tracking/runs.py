"""MLflow plumbing shared by the tasks: the client, the experiment, the batched
metric logger that training's `log(step, metrics)` calls, and provenance tags."""

from __future__ import annotations

import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag  # noqa: F401 (re-exported)
from mlflow.tracking import MlflowClient

from effects.runtime.procs import identity_alive, process_identity
from effects.runtime.settings import Settings, get_settings
from effects.tracking import tags

# host:pid:start-time of the process working on a run, so the next one can tell a
# run whose process was killed (left RUNNING) from one still going.


def client(settings: Settings | None = None) -> MlflowClient:
    s = settings or get_settings()
    return MlflowClient(tracking_uri=s.tracking_uri, registry_uri=s.tracking_uri)


EXPERIMENT_KIND = "mlflow.experimentKind"
# MLflow 3 opens an experiment of unknown kind on its GenAI overview; Lepton's are
# model training, so they open on the runs table and training charts.
TRAINING_KIND = "custom_model_development"


# MLflow 3.17's UI picks GenAI or model-training views from a `workflowType` URL
# parameter (else the browser's last choice, GenAI by default), not from the kind
# tag; every link Lepton gives carries the parameter, so it opens on training runs.
TRAINING_VIEW = "?workflowType=machine_learning"


def experiment_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's training-runs table in the MLflow UI (None without a server)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs{TRAINING_VIEW}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def ensure_experiment(c: MlflowClient, name: str, settings: Settings | None = None) -> str:
    s = settings or get_settings()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = c.create_experiment(
                name, artifact_location=_artifact_location(s, name), tags={EXPERIMENT_KIND: TRAINING_KIND}
            )
            return exp_id
        except Exception:
            exp = c.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND) != TRAINING_KIND:
        c.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
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


# the folder that holds Lepton's packages: its checkout, or site-packages when installed
CODE_DIR = Path(__file__).resolve().parents[2]


def _head(folder: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(project_dir: Path, code_dir: Path = CODE_DIR) -> str:
    """HEAD of the project's git checkout (suffix '-dirty' with local changes); for a
    command started outside any checkout, HEAD of the checkout whose code ran;
    "unknown" when neither is a git checkout (an installed package run elsewhere)."""
    for folder in dict.fromkeys([Path(project_dir), Path(code_dir)]):
        if (head := _head(folder)) is not None:
            return head
    return "unknown"


# ---------------------------------------------------------------- runs of killed processes
def fail_run(c: MlflowClient, run_id: str, error: BaseException | None = None) -> None:
    """Mark a run FAILED, with the error's first line as a tag when one is given."""
    try:
        if error is not None:
            c.set_tag(run_id, tags.ERROR, f"{type(error).__name__}: {error}".splitlines()[0][:5000])
    finally:
        c.set_terminated(run_id, "FAILED")


@contextmanager
def failing_run(c: MlflowClient, run_id: str, tag_error: bool = False) -> Iterator[None]:
    """Whatever is raised inside ends the run FAILED (its first line tagged with
    `tag_error`) and goes on up."""
    try:
        yield
    except BaseException as e:
        fail_run(c, run_id, e if tag_error else None)
        raise


def end_dead_runs(c: MlflowClient, experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose owner process (on this
    host) is gone, e.g. a `lepton retrain` killed with SIGKILL; returns their ids."""
    ended = []
    for r in c.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        owner = r.data.tags.get(tags.OWNER)
        if r.info.run_id != keep and owner and identity_alive(owner) is False:
            c.set_terminated(r.info.run_id, "KILLED")
            ended.append(r.info.run_id)
    return ended


def continue_run(c: MlflowClient, run_id: str, history: list[dict[str, float]]) -> bool:
    """Take over an unfinished run (RUNNING with a dead owner, FAILED or KILLED) so a
    resumed training adds its epochs to the same run: status RUNNING again, owner
    this process, and the epochs the checkpoint holds but the run lacks (logged in
    a buffer the kill lost) logged now. False if there is no such run to continue."""
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(run_id)
    except MlflowException:
        return False
    if run.info.lifecycle_stage != "active" or run.info.status == "FINISHED":
        return False
    owner = run.data.tags.get(tags.OWNER)
    if run.info.status == "RUNNING" and owner and identity_alive(owner) is not False and owner != process_identity():
        return False  # someone is still on it
    c.update_run(run_id, status="RUNNING")
    resumes = int(run.data.tags.get(tags.RESUMES, "0")) + 1
    c.log_batch(run_id, tags=[RunTag(tags.OWNER, process_identity()), RunTag(tags.RESUMES, str(resumes))])
    logged = {m.step for m in c.get_metric_history(run_id, "val_accuracy")}
    missing = [h for h in history if int(h["epoch"]) not in logged]
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, int(h["epoch"])) for h in missing for k, v in h.items() if k != "epoch"]
    for i in range(0, len(metrics), 1000):
        c.log_batch(run_id, metrics=metrics[i : i + 1000])
    return True


def run_artifact(c: MlflowClient, run_id: str, path: str, home: Path) -> Path:
    """A run's artifact as a local file (downloaded under <home>/runs/<run_id>/download)."""
    dst = home / "runs" / run_id / "download"
    dst.mkdir(parents=True, exist_ok=True)
    return Path(c.download_artifacts(run_id, path, str(dst)))


# ---------------------------------------------------------------- lineage
def dvc_object_uri(dvc_remote: str, version: str) -> str:
    """Where a data version's directory listing lives in the DVC remote (DVC 3 layout)."""
    root = dvc_remote.rstrip("/")
    if "://" not in root:
        root = Path(root).resolve().as_uri()
    return f"{root}/files/md5/{version[:2]}/{version[2:]}.dir"


def _log_inputs(c: MlflowClient, run_id: str, inputs: list, tries: int = 5) -> None:
    """`log_inputs`, again when a concurrent run won the race to create the same
    dataset row. MLflow's store looks the dataset up, then inserts it, in one
    transaction: two runs logging one new data version at once can both miss it, and
    the second insert fails on the (experiment, name, digest) unique key. The retry
    finds the row the other run made and links to it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            c.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            text = str(e)
            if attempt == tries - 1 or not ("UNIQUE constraint" in text or "duplicate key" in text):
                raise
            time.sleep(0.05 * (attempt + 1))


def log_run_lineage(
    c: MlflowClient,
    run_id: str,
    data: Any,
    s: Settings,
    *,
    git_commit: str,
    source_name: str,
    flow_run_id: str,
    monitored: list[dict] | None = None,
) -> None:
    """`log_lineage` for a run on the data version `data` (its .version and .meta), with
    these settings' DVC remote and, on a lasting Prefect server, the flow run's link."""
    log_lineage(
        c,
        run_id,
        data_version=data.version,
        meta=data.meta,
        dvc_remote=s.dvc_remote,
        git_commit=git_commit,
        source_name=source_name,
        flow_run_id=flow_run_id,
        flow_run_url=flow_run_url(s.prefect_ui_api_url, flow_run_id),
        monitored=monitored,
    )


def log_lineage(
    c: MlflowClient,
    run_id: str,
    *,
    data_version: str,
    meta: dict,
    dvc_remote: str,
    git_commit: str,
    source_name: str,
    flow_run_id: str = "",
    flow_run_url: str | None = None,
    monitored: list[dict] | None = None,
) -> None:
    """Lineage in MLflow's own fields: the dataset as a run input (its source the data
    version in the DVC remote), each folded-in monitor batch as a second input, the
    git commit as the run's source version, and a link to the Prefect flow run."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    def dataset_input(uri: str, name: str, digest: str, context: str) -> DatasetInput:
        with warnings.catch_warnings():  # file: URIs match two equal "local" sources
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        # mlflow marks `Dataset.profile` abstract but MetaDataset leaves it out; Dataset is
        # no ABC, so it instantiates (mlflow's own docs do it)
        ds = MetaDataset(source=source, name=name, digest=digest[:36])  # type: ignore[abstract]
        return DatasetInput(dataset=ds._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value=context)])

    inputs = [
        dataset_input(
            dvc_object_uri(dvc_remote, data_version),
            f"{meta.get('kind', 'data')}-{data_version[:8]}",
            data_version,
            "training",
        )
    ]
    for b in monitored or []:
        inputs.append(
            dataset_input(
                Path(b["path"]).resolve().as_uri(),
                f"monitor-batch-{b['id']}",
                b["id"].rsplit("-", 1)[-1],
                "monitored-batch",
            )
        )
    _log_inputs(c, run_id, inputs)
    run_tags = [
        RunTag("mlflow.source.type", "JOB"),
        RunTag("mlflow.source.name", source_name),
        RunTag("mlflow.source.git.commit", git_commit.removesuffix("-dirty")),
    ]
    if flow_run_id:
        run_tags.append(RunTag(tags.FLOW_RUN, flow_run_id))
    if flow_run_url:
        run_tags.append(RunTag(tags.FLOW_RUN_URL, flow_run_url))
        run_tags.append(RunTag("mlflow.note.content", f"Prefect flow run: [{flow_run_id}]({flow_run_url})"))
    c.log_batch(run_id, tags=run_tags)


def flow_run_url(prefect_api_url: str | None, flow_run_id: str) -> str | None:
    """The dashboard page of a flow run, when there is a Prefect server with a UI."""
    if not prefect_api_url or not flow_run_id:
        return None
    return prefect_api_url.rstrip("/").removesuffix("/api") + f"/runs/flow-run/{flow_run_id}"
