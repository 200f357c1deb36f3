"""The drift monitor's state under `<home>/monitor/`: which batches were processed,
which labelled batches were accepted for training, when the last drift event was.

Every read-modify-write happens under one file lock, and every file is replaced
atomically, so a manual `lepton monitor` next to the hourly deployment cannot
lose an entry.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from effects.locks import file_lock
from effects.settings import Settings
from lepton_core.fileio import atomic_write, publish_dir


def _root(s: Settings) -> Path:
    return s.home / "monitor"


@contextmanager
def _locked(s: Settings):
    with file_lock(s.locks_dir / "monitor-state.lock"):
        yield


def _read(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _write(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True), fsync=False)


# ---------------------------------------------------------------- processed batches
def processed(s: Settings) -> set[str]:
    return set(_read(_root(s) / "processed.json", []))


def mark_processed(s: Settings, names: list[str]) -> None:
    p = _root(s) / "processed.json"
    with _locked(s):
        _write(p, sorted(set(_read(p, [])) | set(names)))


# ---------------------------------------------------------------- accepted batches
def accepted_batches(s: Settings) -> list[dict]:
    """Labelled batches the monitor accepted, to fold into the next data version:
    [{"id", "format", "path"}], in the order they were accepted."""
    return list(_read(_root(s) / "accepted.json", []))


def accept_batch(s: Settings, path: Path, fmt: str, bid: str) -> None:
    """Keep a copy of a labelled batch (by content id) and list it for the next retrain."""
    dst = _root(s) / "batches" / bid

    def copy(tmp: Path) -> None:
        if path.is_dir():
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        else:
            shutil.copy2(path, tmp / path.name)

    publish_dir(dst, copy, replace=False)  # same id, same bytes: the first copy stays
    listing = _root(s) / "accepted.json"
    with _locked(s):
        accepted = _read(listing, [])
        if all(b["id"] != bid for b in accepted):
            target = dst if path.is_dir() else dst / path.name
            accepted.append({"id": bid, "format": fmt, "path": str(target)})
            _write(listing, accepted)


# ---------------------------------------------------------------- drift events
def cooldown_allows(s: Settings, minutes: float) -> bool:
    last = _read(_root(s) / "last_event.json", None)
    return last is None or time.time() - last["time"] >= minutes * 60


def claim_event(s: Settings, minutes: float, payload: dict) -> bool:
    """Record a drift event now unless one was recorded within the cool-down;
    True if this caller may emit it (check and record are one locked step)."""
    p = _root(s) / "last_event.json"
    with _locked(s):
        last = _read(p, None)
        if last is not None and time.time() - last["time"] < minutes * 60:
            return False
        _write(p, {"time": time.time(), **payload})
        return True
