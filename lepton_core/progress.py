"""A dependency-free progress bar for long loops (writes to stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self, total: int, desc: str = "", enabled: bool = True, stream: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.total, self.desc, self.enabled = max(total, 1), desc, enabled
        self.stream = stream or sys.stderr
        # On a terminal the bar redraws in place; in a log file (CI, Prefect worker)
        # it writes one line per tenth of the work instead of a wall of '\r's.
        self.tty = self.stream.isatty() if tty is None else tty
        self._tenth = -1
        self.n, self.t0, self._last = 0, time.monotonic(), 0.0
        self.postfix = ""

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n = min(self.n + n, self.total)
        if postfix is not None:
            self.postfix = postfix
        now = time.monotonic()
        if not self.enabled:
            return
        if self.tty:
            if now - self._last > 0.2 or self.n == self.total:
                self._last = now
                self._draw(now)
        elif (tenth := 10 * self.n // self.total) > self._tenth:
            self._tenth = tenth
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.n / self.total
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        elapsed = now - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        end = "\n" if self.n == self.total or not self.tty else ""
        start = "\r" if self.tty else ""
        self.stream.write(
            f"{start}{self.desc} [{bar}] {self.n}/{self.total} {elapsed:5.1f}s eta {eta:4.1f}s {self.postfix}{end}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and not self.tty and self.n < self.total:
            self._draw(time.monotonic())  # ended early: say where it stopped
        elif self.enabled and self.tty and self.n < self.total:
            self.stream.write("\n")
            self.stream.flush()
