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
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from lepton_core.data.formats import combine_datasets, load_raw
from lepton_core.data.prepare import prepare_dataset, write_prepared
from lepton_core.errors import DataError
from lepton_core.params import DataParams
from tasks.locks import file_lock
from tasks.retry import not_user_error
from tasks.settings import Settings, get_settings

_VERSION_RE = re.compile(r"^[0-9a-f]{32}$")


class DataVersion(BaseModel):
    """What a run needs to know about its dataset."""

    version: str  # DVC md5 of the prepared folder
    dvc_file: str  # the .dvc content that pins it
    meta: dict
    report: dict


# ---------------------------------------------------------------- plain stage
def prepare_stage(
    params: DataParams, out_dir: str | Path, base_dir: Path | None = None, extra: list[dict] | None = None
) -> dict:
    """Load the raw data, validate, dedup, split and write the packed dataset.

    What `dvc repro`'s prepare stage and the Prefect task both call. `extra` lists
    more raw batches ({"format", "path", "id"}) to fold in, e.g. the labelled batches
    the monitor accepted. Returns the validation report.
    """
    path = _resolve(params.path, base_dir)
    raw = load_raw(params.format, path, params.label_column)
    if extra:
        raw = combine_datasets(
            raw, [load_raw(b["format"], b["path"], params.label_column) for b in extra],
            [b.get("id", str(b["path"])) for b in extra],
        )
    prep = prepare_dataset(
        raw, val_fraction=params.val_fraction, test_fraction=params.test_fraction, seed=params.seed
    )
    write_prepared(prep, out_dir)
    return prep.report


def _resolve(path: str | None, base_dir: Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def accepted_batches(settings: Settings) -> list[dict]:
    """Labelled batches the monitor accepted, to fold into the next data version."""
    p = settings.home / "monitor" / "accepted.json"
    return json.loads(p.read_text()) if p.exists() else []


def raw_fingerprint(params: DataParams, base_dir: Path | None = None, extra: list[dict] | None = None) -> str:
    """Hash of the raw bytes and the data params: the cache key of `prepare`.
    Folded-in batches count by their ids (content hashes)."""
    h = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps(sorted(b["id"] for b in extra or []), sort_keys=True).encode())
    if params.format == "digits":
        from lepton_core.data.formats import _digits_csv

        files = [_digits_csv()]
        root = files[0].parent
    else:
        root = _resolve(params.path, base_dir)
        if root is None or not root.exists():
            raise DataError(f"{params.path}: no such file or folder")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        root = root if root.is_dir() else root.parent
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- DVC store
def _data_repo(settings: Settings):
    from dvc.repo import Repo

    root = settings.data_repo
    if not (root / ".dvc").exists():
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):  # DVC prints its init banner twice
            Repo.init(str(root), no_scm=True, force=True)
    repo = Repo(str(root))
    remote = {"url": settings.dvc_remote}
    if settings.dvc_remote.startswith("s3://"):
        # Credentials stay in the environment (AWS_*), never in this config file.
        if endpoint := os.environ.get("LEPTON_S3_ENDPOINT_URL"):
            remote["endpointurl"] = endpoint
        sse = os.environ.get("LEPTON_S3_SSE", "")
        if sse and sse.lower() != "none":
            remote["sse"] = sse  # DVC passes it as ServerSideEncryption on every upload
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
    with file_lock(s.locks_dir / "data.lock"):
        repo = _data_repo(s)
        work = s.data_repo / "prepared"
        extra = accepted_batches(s) if params.include_monitored else []
        report = prepare_stage(params, work, base_dir=s.project_dir, extra=extra)
        (stage,) = repo.add(str(work))
        version = stage.outs[0].hash_info.value.removesuffix(".dir")
        dvc_file = (s.data_repo / "prepared.dvc").read_text()
        repo.push(targets=[str(s.data_repo / "prepared.dvc")])
        _copy_version(work, s.datasets_dir / version)
    meta = json.loads((work / "meta.json").read_text())
    return DataVersion(version=version, dvc_file=dvc_file, meta=meta, report=report)


def _copy_version(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def restore_dataset(version: str, to_dir: str | Path, settings: Settings | None = None) -> Path:
    """Fetch a data version from the DVC remote and check it out at `to_dir`."""
    s = settings or get_settings()
    v = check_version(version)
    dest = Path(to_dir).expanduser().resolve()
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest}: exists and is not empty")
    with file_lock(s.locks_dir / "data.lock"):
        repo = _data_repo(s)
        scratch = s.data_repo / "restore" / uuid.uuid4().hex
        scratch.mkdir(parents=True)
        pin = scratch.with_suffix(".dvc")
        pin.write_text(f"outs:\n- md5: {v}.dir\n  hash: md5\n  path: {scratch.name}/data\n")
        try:
            repo.pull(targets=[str(pin)])
        except Exception as e:
            raise DataError(
                f"data version {v} could not be restored from the remote ({e.__class__.__name__})"
            ) from None
        finally:
            pin.unlink(missing_ok=True)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest.rmdir()
            shutil.move(str(scratch / "data"), str(dest))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dest


def dataset_path(version: str, settings: Settings | None = None) -> Path:
    """The read-only local copy of a data version, restored from DVC if missing."""
    s = settings or get_settings()
    v = check_version(version)
    path = s.datasets_dir / v
    if not path.exists():
        restore_dataset(v, path, s)
    return path


# ---------------------------------------------------------------- Prefect task
def _prepare_cache_key(context, parameters) -> str:
    s = get_settings()
    params = parameters["params"]
    extra = accepted_batches(s) if params.include_monitored else []
    return "prepare-" + hashlib.sha256(
        (raw_fingerprint(params, s.project_dir, extra) + s.dvc_remote + str(s.home)).encode()
    ).hexdigest()



@task(
    name="prepare",
    retries=2,
    retry_delay_seconds=[2, 5],
    retry_condition_fn=not_user_error,
    cache_key_fn=_prepare_cache_key,
    persist_result=True,
    timeout_seconds=3600,
)
def prepare_data(params: DataParams) -> DataVersion:
    """Prepare and version the dataset (cached while the raw data is unchanged)."""
    return version_dataset(params)
