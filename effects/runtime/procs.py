"""Background processes and ports: start with a log, check, stop the whole group;
and the one identity of a process (host, pid, start time) that claims and run
owners record, so a reused pid is never taken for the process that is gone.

Shared by `lepton up/down` and the temporary Prefect server of one command.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from lepton_core.errors import LeptonError


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot ("?" when unknown): with the
    pid, it tells a process apart from a later one that reuses its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def process_identity(pid: int | None = None) -> str:
    """`host:pid:start-ticks` of a process (this one by default)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{start_ticks(pid)}"


def identity_alive(identity: str) -> bool | None:
    """Whether the process a `process_identity` names still runs; None when it cannot
    be told (another host, or not an identity). `host:pid` without start ticks (what
    older records hold) is judged by the pid alone."""
    host, _, rest = str(identity).partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if not pid_alive(int(pid)):
        return False
    return not ticks or ticks == "?" or start_ticks(int(pid)) == ticks


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_free(port: int, what: str, timeout: float, echo: Callable[[str], None] = print) -> bool:
    """Wait (at most `timeout` s) for `port` to be released; say so once if it is held."""
    deadline = time.monotonic() + timeout
    told = False
    while not port_free(port):
        if time.monotonic() >= deadline:
            return False
        if not told:
            echo(f"waiting up to {timeout:.0f} s for port {port} ({what}) to be released ...")
            told = True
        time.sleep(0.5)
    return True


_HANDED_OUT: set[int] = set()


def free_port(avoid=()) -> int:
    """A port on 127.0.0.1 that was free a moment ago.

    The kernel may hand the same ephemeral port to two binds in a row once the first
    socket is closed, so a port this process already handed out (or one in `avoid`,
    e.g. a stack's public ports chosen by another process) is never returned twice."""
    taken = _HANDED_OUT | {int(p) for p in avoid}
    port = 0
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in taken:
            break
    _HANDED_OUT.add(port)
    return port


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, OSError):
        return False


def spawn(
    cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None, new_session: bool = True
) -> subprocess.Popen:
    """Start `cmd` in the background, appending its output to `log_path`.

    `new_session`: its own process group, so `stop_group` ends its children too."""
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {Path(cmd[0]).name}\n".encode())
        log.flush()
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
            cwd=str(cwd) if cwd else None,
            umask=0o077,  # what a server writes (databases, objects, logs) is its user's alone
        )


def stop_group(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL what is left after `timeout`."""
    if not pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    try:  # the leader may be gone while children linger (SeaweedFS, MLflow's workers)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_leftovers(pgid: int) -> None:
    """SIGKILL what is left of the process group `pgid` after its leader died (a server
    killed with -9 can leave workers holding its port)."""
    if not pgid or pid_alive(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def wait_healthy(
    what: str, check: Callable[[], bool], pid: int, timeout: float, log: Path, interval: float = 0.3
) -> None:
    """Poll `check` until it passes; a LeptonError naming the log if the process
    exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not pid_alive(pid):
            raise LeptonError(f"{what} exited during start-up; see {log}")
        time.sleep(interval)
    raise LeptonError(f"{what} did not become healthy in {timeout:.0f} s; see {log}")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux
    PR_SET_PDEATHSIG; a no-op elsewhere). Used as a `preexec_fn`, or first thing in
    a child; the caller checks `os.getppid()` afterwards for a parent already gone."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
