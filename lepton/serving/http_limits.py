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

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lepton_core.params import ServeParams

MAX_HEADER_BYTES = 64 * 1024  # request line and headers of one request
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's default)
_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large"}


class _TooBig(Exception):
    """Raised in a parser callback to stop the parser once the 431 is sent."""


class _HeaderLimits:
    """Mixed into one of uvicorn's HTTP protocols (one instance per connection).

    Only the bytes of a request's own request line and headers count towards the cap:
    the subclasses report them as their parser reads them (`_begin`, `_count`, `_end`),
    never the rest of an earlier request's body that uvicorn drains after answering
    before reading it (a 401, 404 or 503)."""

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
        self._header_bytes = 0  # of the request whose headers are being read, as its parser reports them
        self._partial = 0  # bytes read since the parser last reported (a header not yet whole)
        self._reported = 0  # how many times the parser has reported
        self._refused = False

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout_s, self._refuse, 408, self._too_slow())

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> str:
        return f"the request headers took over {self._header_timeout_s:g} s (serve.header_timeout_s)"

    # ------------------------------------------------ what the parsers report
    def _begin(self) -> None:
        """The first byte of a request: its headers are due within the timeout."""
        self._arm()
        self._header_bytes = self._partial = 0

    def _count(self, n: int) -> None:
        """`n` more bytes of the current request's request line or headers."""
        self._header_bytes += n
        self._partial = 0
        self._reported += 1
        if self._header_bytes > self._max_header_bytes:
            self._refuse(431, f"request headers over {self._max_header_bytes // 1024} KB")
            raise _TooBig

    def _end(self) -> None:
        """The headers are in; the body has its own limits."""
        self._disarm()
        self._header_bytes = self._partial = 0

    # ------------------------------------------------ the connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()  # a connection that sends nothing is timed out too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # the parser's error after a 431 (raised to stop it): answered already
            super().send_400_response(msg)  # type: ignore[misc]

    def _refuse(self, status: int, reason: str) -> None:
        self._disarm()
        self._refused = True
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
    """uvicorn's pure-Python HTTP/1.1 protocol, with the header limits. h11 has no
    per-header callbacks: bytes count while h11 waits for a new request (IDLE), and
    once a request's headers are parsed their exact size is checked."""

    conn: Any

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self.conn.their_state is h11.IDLE:  # a new request's headers, not an earlier request's body
            if self._header_timer is None:
                self._begin()
            self._partial += len(data)
        super().data_received(data)
        if self._refused:
            return
        if self.cycle is not None and self.cycle is not before:  # a new request: its headers are in
            self._end()
            try:
                self._count(_head_size(self.cycle.scope))
            except _TooBig:
                self.cycle.disconnected = True  # its app sees the client gone
        elif self._header_timer is not None and self._partial > self._max_header_bytes:
            self._refuse(431, f"request headers over {self._max_header_bytes // 1024} KB")

    def send_400_response(self, msg: str) -> None:
        if not self._refused and self._partial > self._max_header_bytes:  # h11's own cap: the same limit
            self._refuse(431, f"request headers over {self._max_header_bytes // 1024} KB")
        super().send_400_response(msg)


def _head_size(scope: Any) -> int:
    """The bytes of a parsed request's request line and headers."""
    line = len(scope["method"]) + len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 12
    return line + sum(len(k) + len(v) + 4 for k, v in scope["headers"])


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional to uvicorn: h11 serves then, as uvicorn's "auto" does
    LimitedHttpTools: type | None = None
else:

    class LimitedHttpTools(_HeaderLimits, HttpToolsProtocol):  # type: ignore[no-redef]
        """uvicorn's httptools protocol (its default when installed), with the header
        limits, counted by the parser's callbacks; and, for a header that never ends,
        every byte read while the same request's headers are still coming."""

        def data_received(self, data: bytes) -> None:
            reported, waiting = self._reported, self._header_timer is not None
            super().data_received(data)
            if self._refused or self._header_timer is None:
                return
            if waiting and self._reported == reported:  # all of it is a header not yet whole
                self._partial += len(data)
            if self._header_bytes + self._partial > self._max_header_bytes:
                self._refuse(431, f"request headers over {self._max_header_bytes // 1024} KB")

        def on_message_begin(self) -> None:
            self._begin()
            self._count(0)
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._end()
            super().on_headers_complete()


def uvicorn_options(params: ServeParams) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` / `uvicorn.Config` for the server's limits
    (picklable, so uvicorn's worker processes get them too)."""
    protocol = LimitedHttpTools or LimitedH11
    return {
        "http": functools.partial(protocol, header_timeout_s=params.header_timeout_s),
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "timeout_keep_alive": KEEP_ALIVE_S,
    }
