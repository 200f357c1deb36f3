"""The model server's HTTP connections: limits uvicorn does not set by itself.

uvicorn times out only idle kept-alive connections: a client that sends its request
headers a byte at a time (or not at all) holds its connection for as long as it likes,
and with httptools nothing bounds how long the headers may be. Here each request's
headers must arrive within `serve.header_timeout_s` of its first byte (of the
connection's opening, for the first request) and fit in `MAX_HEADER_BYTES`; otherwise
the server answers 408 or 431 and closes the connection. The body has its own limits,
checked as it is read (`lepton.serving.bodies.read_body`).

    uvicorn.run(app, host=..., port=..., **uvicorn_options(params.serve))
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from lepton_core.params import ServeParams

MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's default)
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class _HeaderLimits:
    """Mixed into one of uvicorn's HTTP protocols (one instance per connection)."""

    # set by uvicorn's protocols (Any: each declares its own types)
    loop: Any
    cycle: Any
    transport: Any

    def __init__(
        self, *args: Any, header_timeout_s: float = 10.0, max_header_bytes: int = MAX_HEADER_BYTES, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s, self._max_header_bytes = header_timeout_s, max_header_bytes
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._cycle_before: Any = None  # the request that was current when the timer started

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._refuse, 408, self._too_slow())
        self._header_bytes, self._cycle_before = 0, self.cycle

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> str:
        return f"the request headers took over {self._header_timeout_s:g} s (serve.header_timeout_s)"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        if self._header_timer is not None:
            self._header_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        if self._header_timer is None:
            return
        if self.cycle is not self._cycle_before:  # the headers are in; the body has its own limits
            self._disarm()
        elif self._header_bytes > self._max_header_bytes:
            self._refuse(431, f"request headers over {self._max_header_bytes // 1024} KB")

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({"error": reason}).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


class LimitedH11(_HeaderLimits, H11Protocol):
    """uvicorn's pure-Python HTTP/1.1 protocol, with the header limits."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional to uvicorn: h11 serves then, as uvicorn's "auto" does
    LimitedHttpTools: type | None = None
else:

    class LimitedHttpTools(_HeaderLimits, HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol (its default when installed), with the header limits."""


def uvicorn_options(params: ServeParams) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for the server's limits
    (picklable, so uvicorn's worker processes get them too)."""
    protocol = LimitedHttpTools or LimitedH11
    return {
        "http": functools.partial(protocol, header_timeout_s=params.header_timeout_s),
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }
