"""A webhook receiver for the live tests: what a Slack channel or an incident tool
would be. A threaded HTTP server on 127.0.0.1 that keeps every POST it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict] = []  # {"path", "headers", "body" (parsed JSON, or the text)}
        self._lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                with received._lock:
                    received.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def texts(self) -> list[str]:
        """Every body as one string (a Slack `text`, or the JSON dumped), oldest first."""
        with self._lock:
            return [p["body"] if isinstance(p["body"], str) else json.dumps(p["body"]) for p in self.posts]

    def wait_for(self, match: Callable[[str], bool], timeout: float = 60.0, since: int = 0) -> str:
        """The first body after the first `since` ones that `match` accepts; fails the
        test after `timeout` seconds, listing what did arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t in self.texts()[since:]:
                if match(t):
                    return t
            time.sleep(0.25)
        raise AssertionError(f"no matching notification in {timeout} s; got: {self.texts()[since:]!r}"[:4000])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
