"""Crash-safe file writes: a reader sees the old content or the new, never half.

Both helpers write beside the target (same folder, so the same file system) and
`os.replace` into place; on any error the temporary is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(
    path: str | Path, data: bytes | str | Callable[[BinaryIO], None], mode: int | None = None, fsync: bool = True
) -> Path:
    """Write `data` (bytes, text, or a function that writes to a binary file) to `path`.

    `mode` is the final permission (0o600 for files that hold secrets); by default
    what a new file gets under the umask (0644, or 0600 under Lepton's 077)."""
    if mode is None:
        mode = 0o666 & ~current_umask()
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


def publish_dir(dst: str | Path, build: Callable[[Path], None], replace: bool = True, mode: int | None = None) -> Path:
    """Build a folder with `build(tmp_dir)` beside `dst`, then move it into place.

    An existing `dst` is swapped out (`replace=True`) or kept as it is
    (`replace=False`: the first complete copy wins, e.g. an immutable version)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not replace:
        return dst
    if mode is None:
        mode = 0o777 & ~current_umask()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    os.chmod(tmp, mode)  # mkdtemp makes it 0700; a published folder gets what a new one would
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
