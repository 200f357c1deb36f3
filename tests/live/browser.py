"""Headless Chromium (Debian's package) driven over the DevTools protocol, for what
`--dump-dom` cannot see: the text inside the frames a page renders (MLflow shows an
HTML artifact in a sandboxed iframe of its own)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from effects.runtime.procs import free_port

_TEXT = "document.readyState === 'complete' && document.body ? document.body.innerText : ''"


def frame_texts(
    url: str, profile: Path, until: str, timeout: float = 90, headers: dict[str, str] | None = None
) -> list[str]:
    """Open `url`; return the visible text of the page and of every frame in it, as
    soon as one of them contains `until` (or whatever they hold at the timeout).

    `headers` go with every request the page makes: how a browser that has answered
    a basic-auth prompt talks to MLflow (credentials inside the URL would not do:
    Chromium refuses a page's `fetch` of a relative URL when the page's URL holds
    credentials, so MLflow's UI could load no data)."""
    return _with_chromium(
        profile, timeout, lambda ws_url, deadline: _collect(ws_url, url, until, deadline, headers or {}, _TEXT)
    )


def page_html(url: str, profile: Path, until: str, timeout: float = 90, headers: dict[str, str] | None = None) -> str:
    """Open `url`; return the page's DOM (outer HTML) once it contains `until`, or as
    it is at the timeout."""
    texts = _with_chromium(
        profile,
        timeout,
        lambda ws_url, deadline: _collect(ws_url, url, until, deadline, headers or {}, _HTML, frames=False),
    )
    return texts[0]


_HTML = "document.readyState === 'complete' && document.documentElement ? document.documentElement.outerHTML : ''"


def _with_chromium(profile: Path, timeout: float, work, exit_grace: float = 0):
    """Start headless Chromium on `profile`, run `work(ws_url, deadline)` against its
    first page, then stop it (after up to `exit_grace` s for it to exit by itself)."""
    import websockets  # noqa: F401  (fail early if the test dependency is missing)

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    port = free_port()
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        tabs = None
        while tabs is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as r:
                    tabs = json.loads(r.read())
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
                time.sleep(0.2)
        page = next(t for t in tabs if t["type"] == "page")
        return asyncio.run(work(page["webSocketDebuggerUrl"], deadline))
    finally:
        try:
            proc.wait(timeout=exit_grace)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _collect(
    ws_url: str, url: str, until: str, deadline: float, headers: dict[str, str], expression: str, frames: bool = True
) -> list[str]:
    import websockets

    async with websockets.connect(ws_url, max_size=None) as ws:
        ids = iter(range(1, 1 << 30))
        sessions: list[str | None] = [None]  # None: the page itself; then each frame target
        pending: dict[int, int] = {}  # request id -> index in texts
        texts: list[str] = [""]

        async def send(method: str, session: str | None = None, **params) -> int:
            i = next(ids)
            msg = {"id": i, "method": method, "params": params}
            if session:
                msg["sessionId"] = session
            await ws.send(json.dumps(msg))
            return i

        if frames:
            await send("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
        if headers:
            await send("Network.enable")
            await send("Network.setExtraHTTPHeaders", headers=headers)
        await send("Page.navigate", url=url)
        next_probe = time.monotonic() + 2
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 2
                for k, sid in enumerate(sessions):
                    pending[await send("Runtime.evaluate", sid, expression=expression)] = k
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.5))
            except TimeoutError:
                continue
            if msg.get("method") == "Target.attachedToTarget":
                sessions.append(msg["params"]["sessionId"])
                texts.append("")
            elif msg.get("id") in pending:
                k = pending.pop(msg["id"])
                texts[k] = str(msg.get("result", {}).get("result", {}).get("value") or "")
                if until in texts[k]:
                    return texts
        return texts


def seed_local_storage(profile: Path, origin: str, items: dict[str, str], timeout: float = 60) -> None:
    """Open `origin` once in a Chromium profile and store `items` in its localStorage,
    then close the browser cleanly so the profile keeps them (how the Prefect
    dashboard remembers its sign-in: `prefect-password`)."""
    script = ";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in items.items())

    async def run(ws_url: str, deadline: float) -> None:
        import websockets

        async with websockets.connect(ws_url, max_size=None) as ws:

            async def call(i, method, **params):
                await ws.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))
                    if msg.get("id") == i:
                        return msg

            await call(1, "Page.enable")
            await call(2, "Page.navigate", url=origin)
            for i in range(3, 300):
                r = await call(i, "Runtime.evaluate", expression="document.readyState")
                if r.get("result", {}).get("result", {}).get("value") == "complete":
                    break
                await asyncio.sleep(0.2)
            await call(300, "Runtime.evaluate", expression=script)
            check = await call(
                301, "Runtime.evaluate", expression=f"localStorage.getItem({json.dumps(next(iter(items)))})"
            )
            assert check["result"]["result"].get("value") == next(iter(items.values())), check
            await ws.send(json.dumps({"id": 302, "method": "Browser.close", "params": {}}))

    # the browser closes itself; waiting for that is what writes the profile to disk
    _with_chromium(profile, timeout, run, exit_grace=30)
