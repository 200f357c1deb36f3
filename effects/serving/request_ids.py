"""Request ids the model server issues, checkable without a lookup.

    <random>.<issued at>.<instances>.<mac>

`random` is 20 hex digits (80 bits: the id's uniqueness, and the seed of the log's
sampling), `issued at` whole UTC seconds in hex, `instances` the request's instance
count in hex, and `mac` the first 24 hex digits of HMAC-SHA256(key, the three before
it). Feedback names a request by its id; the server takes it only when the mac is its
own (an id it issued), the id is younger than the feedback window, and the labels are
no more than the instances. No table of issued ids: any worker of the server, and the
server after a restart, checks an id from the id alone.

The key: derived from the server's bearer token when it has one (every worker and
every replica that shares the token shares the key; a new token retires the ids issued
under the old one), else a random key kept in `<home>/serve/request-id.key` (0600),
made by the first process that needs it and read by the others.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

_ID = re.compile(r"([0-9a-f]{20})\.([0-9a-f]{1,12})\.([0-9a-f]{1,8})\.([0-9a-f]{24})")
CLOCK_SKEW_S = 300  # an id "issued" this far in the future still counts (replicas' clocks differ)


class RefusedId(ValueError):
    """Feedback this server does not take, by `kind`: "unknown" (an id it never
    issued), "expired" (past the feedback window) or "count" (more labels than the
    request had instances)."""

    def __init__(self, reason: str, kind: str = "unknown"):
        super().__init__(reason)
        self.kind = kind


def key_file(home: Path) -> Path:
    return home / "serve" / "request-id.key"


def server_key(home: Path, token: str | None) -> bytes:
    """The key that signs this server's request ids (see the module's doc)."""
    if token:
        return hmac.new(token.encode(), b"lepton request ids v1", hashlib.sha256).digest()
    path = key_file(home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # the first process to get here wins; the others read its key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_text().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: not a request-id key (delete it to make a new one)")
    return bytes.fromhex(key)


class RequestIds:
    def __init__(self, key: bytes, window_hours: float):
        self._key = key
        self.window_hours = window_hours
        self._pool, self._used = "", 0  # random hex digits, and how many are used (`_random`)

    def _mac(self, head: str) -> str:
        return hmac.digest(self._key, head.encode(), "sha256").hex()[:24]

    def _random(self) -> str:
        """20 random hex digits, from a pool refilled from the OS 512 ids at a time (one
        system call per request was a visible share of a small request's time)."""
        if self._used >= len(self._pool):
            self._pool, self._used = secrets.token_hex(10 * 512), 0
        self._used += 20
        return self._pool[self._used - 20 : self._used]

    def issue(self, instances: int, now: float | None = None) -> str:
        """A new id for a request of `instances` instances."""
        head = f"{self._random()}.{int(time.time() if now is None else now):x}.{instances:x}"
        return f"{head}.{self._mac(head)}"

    def check(self, request_id: str, labels: int, now: float | None = None) -> int:
        """The instance count of a request this server issued `request_id` for;
        RefusedId (one line) for an id it never issued, one past the feedback window,
        or more `labels` than the request had instances."""
        m = _ID.fullmatch(request_id)
        shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."
        if m is None or not hmac.compare_digest(self._mac(request_id.rpartition(".")[0]), m.group(4)):
            raise RefusedId(f"request_id {shown!r} was not issued by this server")
        issued, n = int(m.group(2), 16), int(m.group(3), 16)
        age = (time.time() if now is None else now) - issued
        if age > self.window_hours * 3600:
            raise RefusedId(
                f"request_id {shown!r} was issued {age / 3600:.0f} h ago, past the feedback window of "
                f"{self.window_hours:g} h (serve.feedback_window_hours)",
                "expired",
            )
        if age < -CLOCK_SKEW_S:
            raise RefusedId(f"request_id {shown!r} was not issued by this server")
        if labels > n:
            raise RefusedId(f"{labels} labels for a request of {n} instance{'s' if n != 1 else ''}", "count")
        return n
