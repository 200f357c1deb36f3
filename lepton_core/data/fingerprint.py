"""The prepare stage's cache key: what produces the packed bytes.

A prepared dataset is a function of (raw bytes, data params, folded-in batches,
the code of `lepton_core/data/`). The key hashes all four, so an edit to the
prepare code makes `lepton retrain` rebuild exactly when `dvc repro` does
(dvc.yaml's prepare stage depends on the same folder: `PREPARE_CODE_DIR`).

A team's own loader (`data.format: custom`) adds its code (`data.loader.code`) to
the key, so an edit to the loader rebuilds too; its raw bytes are `data.path`'s files
when set, and none otherwise (what a loader reads from elsewhere, a database or a
URL, the key cannot see: a changed `init_args` value, such as a snapshot date, is
what tells it the data changed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lepton_core.errors import DataError
from lepton_core.params import DataParams, LoaderSpec

if TYPE_CHECKING:
    from lepton_core.usermodel import CodeBundle

PREPARE_CODE_DIR = Path(__file__).resolve().parent  # lepton_core/data


def prepare_code_files() -> list[Path]:
    return sorted(PREPARE_CODE_DIR.glob("*.py"))


def code_hash(files: Iterable[Path] | None = None) -> str:
    """sha256 over the prepare code's file names and bytes."""
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in (prepare_code_files() if files is None else files)):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def resolve_path(path: str | None, base_dir: Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p


def raw_files(params: DataParams, base_dir: Path | None = None) -> tuple[Path, list[Path]]:
    """(root, files) of the raw data the params name."""
    if params.format == "digits":
        from lepton_core.data.formats import digits_file

        f = digits_file()
        return f.parent, [f]
    root = resolve_path(params.path, base_dir)
    if params.format == "custom" and root is None:  # the loader reads nothing Lepton can list
        return (base_dir or Path.cwd()), []
    if root is None or not root.exists():
        raise DataError(f"{params.path}: no such file or folder")
    if root.is_dir():
        return root, sorted(p for p in root.rglob("*") if p.is_file())
    return root.parent, [root]


def prepare_fingerprint(
    params: DataParams, base_dir: Path | None = None, extra_ids: Iterable[str] = (), code: str | None = None
) -> str:
    """Hash of the raw bytes, the data params, the folded-in batch ids and the code."""
    h = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps(sorted(extra_ids)).encode())
    h.update((code if code is not None else code_hash()).encode())
    if params.format == "custom" and params.loader is not None:
        h.update(b"loader\0" + loader_bundle(params.loader, base_dir).digest.encode())
    root, files = raw_files(params, base_dir)
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def loader_bundle(spec: LoaderSpec, base_dir: Path | None) -> CodeBundle:
    """The source files of a custom loader's code folders (relative to `base_dir`, the
    project), read the way the team's model code is."""
    from lepton_core.usermodel import CodeBundle, ModelError

    try:
        return CodeBundle.from_folders(spec.code, base_dir or Path.cwd(), field="data.loader.code")
    except ModelError as e:  # the data stage's kind of error, same words
        raise DataError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data.loader.code: unreadable ({e.__class__.__name__}: {e})") from None
