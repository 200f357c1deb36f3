"""Cross-process locks on one machine (flock on a file under `.lepton/locks`): one
holder at a time (`file_lock`), or one of numbered slots per holder (`first_free_slot`)."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, timeout: float = 600.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for lock {path.name}") from None
                time.sleep(0.05)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextmanager
def first_free_slot(lock_dir: Path, key: str, prefer: Iterable[int] = (), slots: int = 256):
    """Hold the first of `key`'s numbered slots that no live process holds (those in
    `prefer` first, then 0, 1, ...), and yield its number. For one resource per
    concurrent user: two runs never get the same slot, and the slot of a process
    that died is free again at once (the kernel drops a dead process's flock), so
    the next one takes it over."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    order = [i for i in prefer if 0 <= i < slots]
    for i in [*order, *(i for i in range(slots) if i not in order)]:
        fd = os.open(lock_dir / f"{key}.{i}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield i
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return
    raise TimeoutError(f"all {slots} slots of {key} are held")
