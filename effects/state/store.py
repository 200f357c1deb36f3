"""The interface of the drift monitor's state, which a file backend (one machine:
effects/state/files.py) and a SQL backend (every worker: effects/state/shared_state.py)
both implement, and the rules they share: who owns a claim, and which accepted batch a
person means."""

from __future__ import annotations

from abc import ABC, abstractmethod

from effects.runtime.procs import identity_alive, process_identity
from lepton_core.errors import LeptonError

# A claim older than this is taken to belong to a worker that died (a check runs for
# at most 30 minutes, retried once): another worker may then take the batch over.
# A claim of a dead process on this same machine is taken over at once.
CLAIM_LEASE_S = 2 * 3600

# the fields of an accepted batch, in the order they are listed
ACCEPTED_FIELDS = ("id", "format", "path", "accepted_at", "rows")


def owner_id() -> str:
    """What a claim records as its owner: this process's identity."""
    return process_identity()


def dead_owners(owners: set[str]) -> set[str]:
    """Those of `owners` that were processes of this machine now gone."""
    me = owner_id()
    return {o for o in owners if o != me and identity_alive(o) is False}


def pick_accepted(accepted: list[dict], batch: str) -> dict:
    """The one accepted batch `batch` names (its id, or its name when one accepted
    batch has it); LeptonError (one line) otherwise."""
    hits = [b for b in accepted if b["id"] == batch] or [b for b in accepted if b["id"].rsplit("-", 1)[0] == batch]
    if len(hits) != 1:
        known = ", ".join(b["id"] for b in accepted) or "none"
        what = "matches several" if hits else "is not"
        raise LeptonError(f"{batch!r} {what} an accepted batch (accepted: {known}; see `lepton monitor accepted`)")
    return {k: hits[0].get(k) for k in ACCEPTED_FIELDS}


class MonitorStore(ABC):
    """Batches claimed and processed, labelled batches accepted or rejected for
    training, and the last drift event. Every method is safe with other processes
    calling at once; each read-modify-write is one atomic step."""

    @abstractmethod
    def processed(self) -> set[str]:
        """Names of the batches checked already."""

    @abstractmethod
    def mark_processed(self, names: list[str]) -> None:
        """Record `names` as checked (which ends their claims)."""

    @abstractmethod
    def claim(self, names: list[str], lease_s: float = CLAIM_LEASE_S) -> list[str]:
        """Those of `names` this process may check, in their order: not processed and
        not held by another live claim (one that is younger than `lease_s` and whose
        process, on this machine, still runs). Two callers at once get disjoint lists."""

    @abstractmethod
    def release(self, names: list[str]) -> None:
        """Give back this process's claims on `names` (taken, then not checked)."""

    @abstractmethod
    def accepted(self) -> list[dict]:
        """Accepted batches ({ACCEPTED_FIELDS}) in the order they were accepted."""

    @abstractmethod
    def rejected(self) -> list[dict]:
        """Rejected batches: [{"id", "path", "rejected_at"}]."""

    @abstractmethod
    def accept(self, entry: dict) -> bool:
        """List `entry` for the next retrain (once); False when it was rejected."""

    @abstractmethod
    def reject(self, batch: str) -> dict:
        """Take the accepted batch `batch` names (see `pick_accepted`) off the list and
        remember it as rejected; returns its entry."""

    @abstractmethod
    def last_event(self) -> dict | None:
        """The last drift event: {"time" (epoch s), **its payload}, or None."""

    @abstractmethod
    def claim_event(self, minutes: float, payload: dict) -> tuple[float, float] | None:
        """Record a drift event now unless one was recorded within `minutes`: None when
        this caller records it, else (time of the last event, end of its cool-down)."""
