"""A temporary local Prefect API server for one command.

Without PREFECT_API_URL, Prefect would start the same kind of server itself, but
only when the first flow starts, after all our imports, and after importing its
whole server package into this process. Starting it here, first thing, lets the
server boot on the other core while this process imports torch and MLflow.
The server shares PREFECT_HOME (so its SQLite database keeps the history).

It dies with the command, however the command ends (kill -9 included): the server
runs under a small watchdog (`python -m lepton.local_server watch ...`, this file),
the leader of its own process group. The kernel tells the watchdog when the
command dies (PR_SET_PDEATHSIG), and it also polls the command's pid as a fallback
(the signal comes when the *thread* that started it ends, and not at all if the
command died before the watchdog set it up); either way it ends the whole group,
the server and anything the server started. The server itself gets SIGKILL from
the kernel if the watchdog is killed.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from effects.runtime.procs import die_with_parent, free_port, http_ok, pid_alive, start_ticks, stop_group, wait_healthy
from lepton_core.errors import LeptonError

PARENT_GONE = signal.SIGUSR1  # what the kernel sends the watchdog when its starter goes
POLL_SECONDS = 0.5


class LocalPrefectServer:
    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> LocalPrefectServer:
        self.port = free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        me = os.getpid()
        cmd = [
            sys.executable,
            "-m",
            "lepton.local_server",
            "watch",
            str(me),
            start_ticks(me),
            "--",
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting the temporary server\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: the watchdog ends the whole of it
                preexec_fn=lambda: die_with_parent(PARENT_GONE),
            )
        atexit.register(self.stop)
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        if self.proc is None:
            raise RuntimeError("the local Prefect server was not started")
        try:
            wait_healthy(
                "the local Prefect server",
                lambda: http_ok(self.api_url + "/health"),
                self.proc.pid,
                timeout,
                self.log_path,
                interval=0.1,
            )
        except LeptonError as e:
            raise RuntimeError(str(e)) from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            stop_group(proc.pid, timeout=10)


# ---------------------------------------------------------------- the watchdog
def _parent_gone(parent: int, ticks: str) -> bool:
    return not pid_alive(parent) or start_ticks(parent) != ticks or os.getppid() != parent


def _end_group(child: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM our process group (the server and whatever it started), then SIGKILL."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)  # ends this watchdog too, and any straggler of the group


def watch(parent: int, ticks: str, cmd: list[str]) -> int:
    """Run `cmd` (the server) until it exits, or until `parent` dies or SIGTERM comes:
    then end the whole process group."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("term"))
    signal.signal(PARENT_GONE, lambda *_: stopping.append("parent"))
    if _parent_gone(parent, ticks):  # died before PR_SET_PDEATHSIG was in place
        return 1
    child = subprocess.Popen(cmd, preexec_fn=lambda: die_with_parent(signal.SIGKILL))
    while child.poll() is None:
        if "term" in stopping or _parent_gone(parent, ticks):
            _end_group(child)
        stopping.clear()  # a PARENT_GONE from a thread's end, the parent alive: keep going
        time.sleep(POLL_SECONDS)
    return child.returncode


if __name__ == "__main__":
    if len(sys.argv) < 6 or sys.argv[1] != "watch" or sys.argv[4] != "--":
        sys.exit("usage: python -m lepton.local_server watch PARENT_PID PARENT_START_TICKS -- COMMAND ...")
    sys.exit(watch(int(sys.argv[2]), sys.argv[3], sys.argv[5:]))
