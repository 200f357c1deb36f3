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

from effects.procs import free_port

_TEXT = "document.readyState === 'complete' && document.body ? document.body.innerText : ''"



def frame_texts(url: str, profile: Path, until: str, timeout: float = 90) -> list[str]:
    """Open `url`; return the visible text of the page and of every frame in it, as
    soon as one of them contains `until` (or whatever they hold at the timeout)."""
    import websockets

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (make test installs it: apt-get install chromium)"
    port = free_port()
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        return asyncio.run(_collect(websockets, page["webSocketDebuggerUrl"], url, until, deadline))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _collect(websockets, ws_url: str, url: str, until: str, deadline: float) -> list[str]:
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

        await send("Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True)
        await send("Page.navigate", url=url)
        next_probe = time.monotonic() + 2
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + 2
                for k, sid in enumerate(sessions):
                    pending[await send("Runtime.evaluate", sid, expression=_TEXT)] = k
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=0.5))
            except asyncio.TimeoutError:
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
