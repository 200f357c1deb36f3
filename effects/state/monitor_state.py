"""The drift monitor's state: which batches were claimed and processed, which
labelled batches were accepted for training (and which a person rejected before
they were trained on), when the last drift event was.

Where it lives: in a database every worker reaches when one is configured
(LEPTON_STATE_DB, or beside `lepton up --db`'s databases: see
effects/state/shared_state.py, which says why a SQL table and how each claim is one
atomic statement), so two workers on one pool never check one batch twice nor
emit two drift events inside one cool-down. With none configured, in files under
`<home>/monitor/` (one machine): every read-modify-write happens under one file
lock, and every file is replaced atomically, so a manual `lepton monitor` next to
the hourly deployment cannot lose an entry.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from effects.state import shared_state
from effects.runtime.locks import file_lock
from effects.runtime.procs import pid_alive
from effects.runtime.settings import Settings
from lepton_core.errors import LeptonError
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
    if (db := shared_state.store(s)) is not None:
        return db.processed()
    return set(_read(_root(s) / "processed.json", []))


def mark_processed(s: Settings, names: list[str]) -> None:
    if (db := shared_state.store(s)) is not None:
        return db.mark_processed(names)
    p, claims = _root(s) / "processed.json", _root(s) / "claims.json"
    with _locked(s):
        _write(p, sorted(set(_read(p, [])) | set(names)))
        held = _read(claims, {})
        if set(names) & set(held):
            _write(claims, {k: v for k, v in held.items() if k not in names})


def claim_batches(s: Settings, names: list[str], lease_s: float = shared_state.CLAIM_LEASE_S) -> list[str]:
    """Those of `names` this process may check, in their order: not processed, and
    not claimed by another worker that is still at it (a claim expires after
    `lease_s`, or at once when its process on this machine is gone). Two workers
    asking at once get disjoint lists. `mark_processed` ends a claim, `release_batches`
    gives it back."""
    if (db := shared_state.store(s)) is not None:
        return db.claim(names, pid_alive, lease_s)
    p, claims = _root(s) / "processed.json", _root(s) / "claims.json"
    now, me = time.time(), shared_state.owner_id()
    with _locked(s):
        done, held = set(_read(p, [])), _read(claims, {})
        dead = shared_state.dead_local_owners({c["owner"] for c in held.values()} - {me}, pid_alive)
        mine = [n for n in dict.fromkeys(names) if n not in done and (
            n not in held or held[n]["owner"] in dead or held[n]["owner"] == me
            or held[n]["at"] < now - lease_s)]
        if mine:
            _write(claims, {**held, **{n: {"owner": me, "at": now} for n in mine}})
    return mine


def release_batches(s: Settings, names: list[str]) -> None:
    """Give back this process's claims on `names` (taken, then not checked)."""
    if (db := shared_state.store(s)) is not None:
        return db.release(names)
    claims, me = _root(s) / "claims.json", shared_state.owner_id()
    with _locked(s):
        held = _read(claims, {})
        _write(claims, {k: v for k, v in held.items() if not (k in names and v["owner"] == me)})


# ---------------------------------------------------------------- accepted batches
def accepted_batches(s: Settings) -> list[dict]:
    """Labelled batches the monitor accepted, to fold into the next data version:
    [{"id", "format", "path", "accepted_at" (epoch s), "rows"}], in the order they
    were accepted (entries from before "accepted_at"/"rows" lack them)."""
    if (db := shared_state.store(s)) is not None:
        return db.accepted()
    return list(_read(_root(s) / "accepted.json", []))


def rejected_batches(s: Settings) -> list[dict]:
    """Batches a person rejected (`lepton monitor reject`): never folded in, never
    accepted again. [{"id", "path", "rejected_at"}]."""
    if (db := shared_state.store(s)) is not None:
        return db.rejected()
    return list(_read(_root(s) / "rejected.json", []))


def reject_batch(s: Settings, batch: str) -> dict:
    """Take an accepted batch off the list the next retrain folds in, and remember
    it as rejected. `batch` is its id, or its name when one accepted batch has it.
    Returns the entry; LeptonError (one line) when no accepted batch matches."""
    if (db := shared_state.store(s)) is not None:
        return db.reject(batch)
    listing, rejected = _root(s) / "accepted.json", _root(s) / "rejected.json"
    with _locked(s):
        accepted = _read(listing, [])
        hits = [b for b in accepted if b["id"] == batch] or \
            [b for b in accepted if b["id"].rsplit("-", 1)[0] == batch]
        if len(hits) != 1:
            known = ", ".join(b["id"] for b in accepted) or "none"
            what = "matches several" if hits else "is not"
            raise LeptonError(f"{batch!r} {what} an accepted batch (accepted: {known}; "
                              "see `lepton monitor accepted`)")
        entry = hits[0]
        _write(listing, [b for b in accepted if b["id"] != entry["id"]])
        _write(rejected, [*_read(rejected, []), {"id": entry["id"], "path": entry["path"],
                                                  "rejected_at": time.time()}])
    return entry


def accept_batch(s: Settings, path: Path, fmt: str, bid: str, rows: int | None = None) -> bool:
    """Keep a copy of a labelled batch (by content id) and list it for the next
    retrain; False (and nothing listed) for a batch that was rejected before."""
    if any(b["id"] == bid for b in rejected_batches(s)):
        return False
    dst = _root(s) / "batches" / bid

    def copy(tmp: Path) -> None:
        if path.is_dir():
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        else:
            shutil.copy2(path, tmp / path.name)

    publish_dir(dst, copy, replace=False)  # same id, same bytes: the first copy stays
    target = dst if path.is_dir() else dst / path.name
    if (db := shared_state.store(s)) is not None:
        return db.accept({"id": bid, "format": fmt, "path": str(target), "accepted_at": time.time(),
                          "rows": rows})
    listing = _root(s) / "accepted.json"
    with _locked(s):
        if any(b["id"] == bid for b in _read(_root(s) / "rejected.json", [])):
            return False  # rejected while it was being copied
        accepted = _read(listing, [])
        if all(b["id"] != bid for b in accepted):
            accepted.append({"id": bid, "format": fmt, "path": str(target), "accepted_at": time.time(),
                             "rows": rows})
            _write(listing, accepted)
    return True


# ---------------------------------------------------------------- drift events
def last_event(s: Settings) -> dict | None:
    """The last drift event: {"time" (epoch s), **its payload}, or None."""
    if (db := shared_state.store(s)) is not None:
        return db.last_event()
    return _read(_root(s) / "last_event.json", None)


def cooldown_allows(s: Settings, minutes: float) -> bool:
    last = last_event(s)
    return last is None or time.time() - last["time"] >= minutes * 60


def claim_event(s: Settings, minutes: float, payload: dict) -> bool:
    """Record a drift event now unless one was recorded within the cool-down;
    True if this caller may emit it (check and record are one locked step)."""
    return claim_event_or_cooldown(s, minutes, payload) is None


def claim_event_or_cooldown(s: Settings, minutes: float, payload: dict) -> tuple[float, float] | None:
    """As `claim_event`; None when this caller may emit the event, else (time of the
    last event, end of its cool-down), as epoch seconds."""
    if (db := shared_state.store(s)) is not None:
        return db.claim_event(minutes, payload)
    p = _root(s) / "last_event.json"
    with _locked(s):
        last = _read(p, None)
        if last is not None and time.time() - last["time"] < minutes * 60:
            return float(last["time"]), float(last["time"]) + minutes * 60
        _write(p, {"time": time.time(), **payload})
        return None
