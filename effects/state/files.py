"""The monitor's state in files under `<home>/monitor/`, for one machine: every
read-modify-write happens under one file lock, and every file is replaced
atomically, so a manual `lepton monitor` next to the hourly deployment cannot lose
an entry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from effects.runtime.locks import file_lock
from effects.state import store
from effects.state.store import CLAIM_LEASE_S, MonitorStore
from lepton_core.fileio import atomic_write


class FileStore(MonitorStore):
    def __init__(self, root: Path, lock: Path):
        self.root, self.lock = root, lock

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.lock):
            yield

    def _read(self, name: str, default: Any) -> Any:
        p = self.root / name
        return json.loads(p.read_text()) if p.exists() else default

    def _write(self, name: str, obj: Any) -> None:
        atomic_write(self.root / name, json.dumps(obj, indent=2, sort_keys=True), fsync=False)

    # ------------------------------------------------------------ batches
    def processed(self) -> set[str]:
        return set(self._read("processed.json", []))

    def mark_processed(self, names: list[str]) -> None:
        with self._locked():
            self._write("processed.json", sorted(set(self._read("processed.json", [])) | set(names)))
            held = self._read("claims.json", {})
            if set(names) & set(held):
                self._write("claims.json", {k: v for k, v in held.items() if k not in names})

    def claim(self, names: list[str], lease_s: float = CLAIM_LEASE_S) -> list[str]:
        now, me = time.time(), store.owner_id()
        with self._locked():
            done, held = set(self._read("processed.json", [])), self._read("claims.json", {})
            dead = store.dead_owners({c["owner"] for c in held.values()})
            mine = [
                n
                for n in dict.fromkeys(names)
                if n not in done
                and (
                    n not in held or held[n]["owner"] in dead or held[n]["owner"] == me or held[n]["at"] < now - lease_s
                )
            ]
            if mine:
                self._write("claims.json", {**held, **{n: {"owner": me, "at": now} for n in mine}})
        return mine

    def release(self, names: list[str]) -> None:
        me = store.owner_id()
        with self._locked():
            held = self._read("claims.json", {})
            self._write("claims.json", {k: v for k, v in held.items() if not (k in names and v["owner"] == me)})

    # ------------------------------------------------------------ accepted / rejected
    def accepted(self) -> list[dict]:
        return list(self._read("accepted.json", []))

    def rejected(self) -> list[dict]:
        return list(self._read("rejected.json", []))

    def accept(self, entry: dict) -> bool:
        with self._locked():
            if any(b["id"] == entry["id"] for b in self._read("rejected.json", [])):
                return False  # rejected while it was being copied
            accepted = self._read("accepted.json", [])
            if all(b["id"] != entry["id"] for b in accepted):
                self._write("accepted.json", [*accepted, entry])
        return True

    def reject(self, batch: str) -> dict:
        with self._locked():
            accepted = self._read("accepted.json", [])
            entry = store.pick_accepted(accepted, batch)
            self._write("accepted.json", [b for b in accepted if b["id"] != entry["id"]])
            self._write(
                "rejected.json",
                [
                    *self._read("rejected.json", []),
                    {"id": entry["id"], "path": entry["path"], "rejected_at": time.time()},
                ],
            )
        return entry

    # ------------------------------------------------------------ drift events
    def last_event(self) -> dict | None:
        last: dict | None = self._read("last_event.json", None)
        return last

    def claim_event(self, minutes: float, payload: dict) -> tuple[float, float] | None:
        with self._locked():
            last = self._read("last_event.json", None)
            if last is not None and time.time() - last["time"] < minutes * 60:
                return float(last["time"]), float(last["time"]) + minutes * 60
            self._write("last_event.json", {"time": time.time(), **payload})
            return None
