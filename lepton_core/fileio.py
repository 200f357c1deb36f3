"""Crash-safe file writes: a reader sees the old content or the new, never half.

Both helpers write beside the target (same folder, so the same file system) and
`os.replace` into place; on any error the temporary is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None], mode: int = 0o644,
                 fsync: bool = True) -> Path:
    """Write `data` (bytes, text, or a function that writes to a binary file) to `path`.

    `mode` is the final permission (0o600 for files that hold secrets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish_dir(dst: str | Path, build: Callable[[Path], None], replace: bool = True,
                mode: int = 0o755) -> Path:
    """Build a folder with `build(tmp_dir)` beside `dst`, then move it into place.

    An existing `dst` is swapped out (`replace=True`) or kept as it is
    (`replace=False`: the first complete copy wins, e.g. an immutable version)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not replace:
        return dst
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    os.chmod(tmp, mode)  # mkdtemp makes it private; published folders are meant to be read
    try:
        build(tmp)
        if dst.exists():
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return dst
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
            os.rmdir(old)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
