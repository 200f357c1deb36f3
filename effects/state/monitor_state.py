"""The drift monitor's state: which batches were claimed and processed, which
labelled batches were accepted for training (and which a person rejected before
they were trained on), when the last drift event was.

Where it lives: in a database every worker reaches when one is configured
(LEPTON_STATE_DB, or beside `lepton up --db`'s databases: see
effects/state/shared_state.py, which says why a SQL table and how each claim is one
atomic statement), so two workers on one pool never check one batch twice nor
emit two drift events inside one cool-down. With none configured, in files under
`<home>/monitor/` (one machine, effects/state/files.py). Both backends implement
`effects.state.store.MonitorStore`; the functions here pick one for the settings.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from effects.runtime.settings import Settings
from effects.state import shared_state
from effects.state.files import FileStore
from effects.state.store import CLAIM_LEASE_S, MonitorStore
from lepton_core.fileio import publish_dir


def store(s: Settings) -> MonitorStore:
    """The shared SQL store configured for `s`, else this home's files."""
    url = shared_state.url_for(s)
    if url:
        return shared_state.SharedState(url, s.home)
    return FileStore(s.home / "monitor", s.locks_dir / "monitor-state.lock")


# ---------------------------------------------------------------- processed batches
def processed(s: Settings) -> set[str]:
    return store(s).processed()


def mark_processed(s: Settings, names: list[str]) -> None:
    store(s).mark_processed(names)


def claim_batches(s: Settings, names: list[str], lease_s: float = CLAIM_LEASE_S) -> list[str]:
    """Those of `names` this process may check, in their order: not processed, and
    not claimed by another worker that is still at it (a claim expires after
    `lease_s`, or at once when its process on this machine is gone). Two workers
    asking at once get disjoint lists. `mark_processed` ends a claim, `release_batches`
    gives it back."""
    return store(s).claim(names, lease_s)


def release_batches(s: Settings, names: list[str]) -> None:
    """Give back this process's claims on `names` (taken, then not checked)."""
    store(s).release(names)


# ---------------------------------------------------------------- accepted batches
def accepted_batches(s: Settings) -> list[dict]:
    """Labelled batches the monitor accepted, to fold into the next data version:
    [{"id", "format", "path", "accepted_at" (epoch s), "rows"}], in the order they
    were accepted (entries from before "accepted_at"/"rows" lack them)."""
    return store(s).accepted()


def rejected_batches(s: Settings) -> list[dict]:
    """Batches a person rejected (`lepton monitor reject`): never folded in, never
    accepted again. [{"id", "path", "rejected_at"}]."""
    return store(s).rejected()


def reject_batch(s: Settings, batch: str) -> dict:
    """Take an accepted batch off the list the next retrain folds in, and remember
    it as rejected. `batch` is its id, or its name when one accepted batch has it.
    Returns the entry; LeptonError (one line) when no accepted batch matches."""
    return store(s).reject(batch)


def accept_batch(s: Settings, path: Path, fmt: str, bid: str, rows: int | None = None) -> bool:
    """Keep a copy of a labelled batch (by content id) and list it for the next
    retrain; False (and nothing listed) for a batch that was rejected before."""
    st = store(s)
    if any(b["id"] == bid for b in st.rejected()):
        return False
    dst = s.home / "monitor" / "batches" / bid

    def copy(tmp: Path) -> None:
        if path.is_dir():
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        else:
            shutil.copy2(path, tmp / path.name)

    publish_dir(dst, copy, replace=False)  # same id, same bytes: the first copy stays
    target = dst if path.is_dir() else dst / path.name
    return st.accept({"id": bid, "format": fmt, "path": str(target), "accepted_at": time.time(), "rows": rows})


# ---------------------------------------------------------------- drift events
def last_event(s: Settings) -> dict | None:
    """The last drift event: {"time" (epoch s), **its payload}, or None."""
    return store(s).last_event()


def claim_event_or_cooldown(s: Settings, minutes: float, payload: dict) -> tuple[float, float] | None:
    """Record a drift event now unless one was recorded within the cool-down: None
    when this caller may emit the event, else (time of the last event, end of its
    cool-down), as epoch seconds. Check and record are one atomic step."""
    return store(s).claim_event(minutes, payload)
