"""A temporary local Prefect API server for one command.

Without PREFECT_API_URL, Prefect would start the same kind of server itself, but
only when the first flow starts, after all our imports, and after importing its
whole server package into this process. Starting it here, first thing, lets the
server boot on the other core while this process imports torch and MLflow.
The server shares PREFECT_HOME (so its SQLite database keeps the history).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

from effects.procs import free_port, http_ok, spawn, stop_group, wait_healthy
from lepton_core.errors import LeptonError


class LocalPrefectServer:
    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "LocalPrefectServer":
        self.port = free_port()
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self.proc = spawn(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env, self.log_path,
        )
        atexit.register(self.stop)
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        if self.proc is None:
            raise RuntimeError("the local Prefect server was not started")
        try:
            wait_healthy("the local Prefect server", lambda: http_ok(self.api_url + "/health"), self.proc.pid,
                         timeout, self.log_path, interval=0.1)
        except LeptonError as e:
            raise RuntimeError(str(e)) from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            stop_group(proc.pid, timeout=10)
