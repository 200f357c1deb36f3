"""The data stage: prepare (validate, dedup, split, pack) and version with DVC.

Prepared datasets are versioned in a DVC repository under `<home>/data` (no git
needed) whose remote is `LEPTON_DVC_REMOTE`; the project's own `dvc.yaml` pushes to
the same remote, so any version from either path restores by its id. A data
version is the DVC md5 of the prepared folder (32 hex digits, without `.dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import uuid
from pathlib import Path

from pydantic import BaseModel

from effects.data.data_source import is_s3, local_data_path
from effects.runtime.locks import file_lock
from effects.runtime.settings import Settings, get_settings
from effects.state import monitor_state
from lepton_core.data.fingerprint import prepare_fingerprint
from lepton_core.data.prepare import prepare_from_params
from lepton_core.errors import DataError
from lepton_core.fileio import publish_dir
from lepton_core.params import DataParams

_VERSION_RE = re.compile(r"^[0-9a-f]{32}$")


class DataVersion(BaseModel):
    """What a run needs to know about its dataset."""

    version: str  # DVC md5 of the prepared folder
    dvc_file: str  # the .dvc content that pins it
    meta: dict
    report: dict


# ---------------------------------------------------------------- DVC store
def _quiet_dvc_stdout() -> None:
    """Importing DVC gives its loggers handlers that print INFO messages ("Initialized
    DVC repository.") to the stdout of that moment; stdout is the command's own
    output (`--json`), so they go. Warnings still reach stderr, and every record still
    propagates to the process's own logging."""
    import logging
    import sys

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if getattr(h, "stream", None) in (sys.stdout, sys.__stdout__):
                logger.removeHandler(h)


def _data_repo(settings: Settings, root: Path | None = None):
    """The DVC repository of prepared datasets (or, `root`, a scratch one with its own
    empty cache and the same remote)."""
    from dvc.repo import Repo

    _quiet_dvc_stdout()
    root = root or settings.data_repo
    if not (root / ".dvc").exists():
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # DVC prints its init banner twice
            Repo.init(str(root), no_scm=True, force=True)
    repo = Repo(str(root))
    remote = {"url": settings.dvc_remote}
    if settings.dvc_remote.startswith("s3://"):
        # Credentials stay in the environment (AWS_*), never in this config file.
        if settings.s3_endpoint_url:
            remote["endpointurl"] = settings.s3_endpoint_url
        if settings.sse:
            remote["sse"] = settings.sse  # DVC passes it as ServerSideEncryption on every upload
    with repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["remote"] = "store"
        conf["remote"]["store"] = remote
    return Repo(str(root))


def check_version(version: str) -> str:
    v = version.strip().lower().removesuffix(".dir")
    if not _VERSION_RE.match(v):
        raise DataError(f"{version!r} is not a data version (32 hex digits, from `lepton status`)")
    return v


def version_dataset(params: DataParams, settings: Settings | None = None) -> DataVersion:
    """Prepare into the data repo, `dvc add`, `dvc push`, and keep a read-only copy."""
    s = settings or get_settings()
    params = local_params(params, s)  # an s3:// source: its local mirror (fetched, only what changed)
    with file_lock(s.locks_dir / "data.lock"):
        repo = _data_repo(s)
        work = s.data_repo / "prepared"
        extra = monitor_state.accepted_batches(s) if params.include_monitored else []
        report = prepare_from_params(params, work, base_dir=s.project_dir, extra=extra)
        (stage,) = repo.add(str(work))
        version = stage.outs[0].hash_info.value.removesuffix(".dir")
        dvc_file = (s.data_repo / "prepared.dvc").read_text()
        repo.push(targets=[str(s.data_repo / "prepared.dvc")])
        _copy_version(work, s.datasets_dir / version)
    meta = json.loads((work / "meta.json").read_text())
    return DataVersion(version=version, dvc_file=dvc_file, meta=meta, report=report)


def local_params(params: DataParams, s: Settings) -> DataParams:
    """The params with an s3:// data path replaced by its local mirror."""
    if not is_s3(params.path):
        return params
    return params.model_copy(update={"path": local_data_path(params.path, s)})


def _copy_version(src: Path, dst: Path) -> None:
    """A data version's local copy is immutable: the first complete copy stays."""

    def build(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)

    publish_dir(dst, build, replace=False)


def restore_dataset(
    version: str, to_dir: str | Path, settings: Settings | None = None, from_remote: bool = False
) -> Path:
    """Fetch a data version from the DVC remote and check it out at `to_dir`.
    `from_remote`: through a scratch repository with an empty cache, so the objects
    come from the remote itself, never from this machine's cache."""
    s = settings or get_settings()
    v = check_version(version)
    dest = Path(to_dir).expanduser().resolve()
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest}: exists and is not empty")
    own = s.data_repo.parent / "data-restore" / uuid.uuid4().hex if from_remote else None
    try:
        with file_lock(s.locks_dir / "data.lock"):
            _pull_into(s, v, dest, own)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)
    return dest


def _pull_into(s: Settings, v: str, dest: Path, root: Path | None) -> None:
    """Pull data version `v` through the repository at `root` (default: the datasets' one) into `dest`."""
    repo = _data_repo(s, root)
    scratch = (root or s.data_repo) / "restore" / uuid.uuid4().hex
    scratch.mkdir(parents=True)
    pin = scratch.with_suffix(".dvc")
    pin.write_text(f"outs:\n- md5: {v}.dir\n  hash: md5\n  path: {scratch.name}/data\n")
    try:
        repo.pull(targets=[str(pin)])
    except Exception as e:
        shutil.rmtree(scratch, ignore_errors=True)  # nothing half-fetched stays behind
        raise DataError(f"data version {v} could not be restored from the remote ({e.__class__.__name__})") from None
    finally:
        pin.unlink(missing_ok=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest.rmdir()
        shutil.move(str(scratch / "data"), str(dest))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dataset_path(version: str, settings: Settings | None = None) -> Path:
    """The read-only local copy of a data version, restored from DVC if missing."""
    s = settings or get_settings()
    v = check_version(version)
    path = s.datasets_dir / v
    if not path.exists():
        restore_dataset(v, path, s)
    return path


def prepare_cache_key(params: DataParams, settings: Settings | None = None) -> str:
    """The prepare step's cache key: the raw bytes, the data params, the accepted
    batches that will be folded in, the prepare code, and where versions are kept."""
    s = settings or get_settings()
    params = local_params(params, s)
    if params.format == "custom" and not params.path:
        # a loader that reads a database or a URL: its bytes are unknown until it runs,
        # so every retrain prepares again (an unchanged result keeps its DVC version)
        return f"prepare-uncached-{uuid.uuid4().hex}"
    extra = monitor_state.accepted_batches(s) if params.include_monitored else []
    fp = prepare_fingerprint(params, s.project_dir, [b["id"] for b in extra])
    return "prepare-" + hashlib.sha256((fp + s.dvc_remote + str(s.home)).encode()).hexdigest()
