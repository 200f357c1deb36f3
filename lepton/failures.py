"""How a failed command ends: one `error: ...` line on stderr, the details in a log.

A user's mistake (LeptonError) is already one line. A failure of the machinery (a
remote that cannot be written, a server that does not answer, a full disk) used to
print every traceback Prefect logged on the way out, then Python's own. Now the
terminal gets one line naming what failed and what to do, and the tracebacks go to
`<home>/logs/lepton.log` (and to the terminal as well with LEPTON_DEBUG=1).
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import sys
import traceback
from pathlib import Path

LOG_NAME = "lepton.log"
_FLOW_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_file_handler: logging.Handler | None = None


class ServiceUnreachable(ConnectionError):
    """A service a command needs does not answer (found before the command's work
    starts, by a quick check): an infrastructure failure, exit code 1."""

    def __init__(self, service: str, url: str, reason: str):
        super().__init__(reason)
        self.service, self.url, self.reason = service, url, reason


# service -> (what it is, the variable that says where it is)
_SERVICES = {
    "mlflow": ("the MLflow tracking server", "MLFLOW_TRACKING_URI"),
    "prefect": ("the Prefect API", "PREFECT_API_URL"),
    "s3": ("S3", "LEPTON_S3_ENDPOINT_URL"),
}


def log_path(home: Path) -> Path:
    return home / "logs" / LOG_NAME


def _open_handler(home: Path) -> logging.Handler | None:
    """One file handler per process on `<home>/logs/lepton.log` (None if it cannot be
    opened: the error line then says so instead of naming it)."""
    global _file_handler
    if _file_handler is None:
        try:
            path = log_path(home)
            path.parent.mkdir(parents=True, exist_ok=True)
            # 5 MB, then one older file: every command appends, so it must not grow forever
            h = logging.handlers.RotatingFileHandler(
                path, maxBytes=5 << 20, backupCount=1, encoding="utf-8", delay=True
            )
        except OSError:
            return None
        h.setLevel(logging.INFO)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        h.set_name("lepton-log-file")
        _file_handler = h
        me = logging.getLogger("lepton.failures")
        me.propagate = False  # the traceback goes to the file, never to the console
        me.setLevel(logging.INFO)
        me.addHandler(h)
        # the command's name only: its options may hold a token or a database password
        me.info("--- lepton %s (pid %d)", " ".join(a for a in sys.argv[1:2] if not a.startswith("-")), os.getpid())
    return _file_handler


class _NoTracebackFormatter(logging.Formatter):
    """A console formatter's output without the traceback and with only the first
    line of the message (the file handler keeps both)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return text.split("\n", 1)[0]


class _NoFlowErrors(logging.Filter):
    """Drops, from the console only, the ERROR records of flow and task runs: every
    such failure ends the command with its own `error:` line, which they would bury
    (they are in the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(_FLOW_LOGGERS))


def _console_handlers() -> list[logging.Handler]:
    """Every handler that writes to a terminal stream (Prefect's console, DVC's)."""
    seen: list[logging.Handler] = []
    for logger in [logging.root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]:
        for h in getattr(logger, "handlers", []):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and h not in seen:
                seen.append(h)
    return seen


def quiet_console(home: Path, debug: bool) -> None:
    """Send every log record at INFO and above to the log file; keep tracebacks and
    flow/task failure records off the terminal unless `debug`. Call after Prefect
    has set up its logging (importing prefect does)."""
    h = _open_handler(home)
    if h is not None and h not in logging.root.handlers:
        logging.root.addHandler(h)
    if debug:
        return
    for ch in _console_handlers():
        if not isinstance(ch.formatter, _NoTracebackFormatter):
            ch.setFormatter(_NoTracebackFormatter(ch.formatter))
        if not any(isinstance(f, _NoFlowErrors) for f in ch.filters):
            ch.addFilter(_NoFlowErrors())


def record_failure(exc: BaseException, home: Path) -> Path | None:
    """Write the exception's traceback to the log file; its path, or None."""
    h = _open_handler(home)
    if h is None:
        return None
    logging.getLogger("lepton.failures").error("command failed", exc_info=(type(exc), exc, exc.__traceback__))
    h.flush()
    return log_path(home) if log_path(home).exists() else None


# ---------------------------------------------------------------- the one line
def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 20:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _first_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PACKAGES = ("effects", "lepton", "tasks", "flows")


def _our_file(filename: str) -> str | None:
    """`.../effects/data/dvc_store.py` -> `effects/data/dvc_store.py` (from the last of
    our packages on the path, so sub-packages count); None outside our code. In an
    installed tree only a top-level package of site-packages is ours."""
    parts = Path(filename).parts
    installed = [i for i, p in enumerate(parts) if p in ("site-packages", "dist-packages")]
    if installed:
        top = installed[-1] + 1
        return "/".join(parts[top:]) if top < len(parts) - 1 and parts[top] in _PACKAGES else None
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in _PACKAGES:
            return "/".join(parts[i:])
    return None


def _our_files(chain: list[BaseException]) -> list[str]:
    """Our modules on the traceback, innermost last (effects/data/dvc_store.py, ...)."""
    files = []
    for e in chain:
        for fr in traceback.extract_tb(e.__traceback__):
            ours = _our_file(fr.filename)
            if ours:
                files.append(ours)
    return files


def _is_connection_error(chain: list[BaseException]) -> bool:
    names = {f"{type(e).__module__}.{type(e).__name__}" for e in chain}
    text = " ".join(str(e) for e in chain)
    return (
        any(isinstance(e, (ConnectionError, TimeoutError)) for e in chain)
        or any(
            n.endswith(
                (
                    "ConnectionError",
                    "ConnectError",
                    "ConnectTimeout",
                    "ReadTimeout",
                    "EndpointConnectionError",
                    "MaxRetryError",
                    "NewConnectionError",
                )
            )
            for n in names
        )
        or "Connection refused" in text
        or "Max retries exceeded" in text
    )


def describe(exc: BaseException, settings) -> str:
    """`<what failed>: <what it said>; <what to do>` for a failure that is not the
    user's input."""
    from effects.runtime.settings import redact_uri

    chain = _chain(exc)
    mods = {type(e).__module__.split(".")[0] for e in chain}
    files = _our_files(chain)
    inner = files[-1] if files else ""
    msg = _first_line(exc)
    stack = " (`lepton status` shows each service)"
    for e in chain:
        if isinstance(e, ServiceUnreachable):
            what, var = _SERVICES[e.service]
            return f"{what} at {redact_uri(e.url)} does not answer: {e.reason}; start it or fix {var}{stack}"
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            where = f" writing {e.filename}" if e.filename else ""
            return f"no space left on the device{where}; free some space and run the command again"
    if "dvc" in mods or "dvc_data" in mods or "dvc_objects" in mods or inner == "effects/data/dvc_store.py":
        return (
            f"the DVC remote {redact_uri(settings.dvc_remote)} failed: {msg}; check that it exists, "
            f"is reachable and is writable (LEPTON_DVC_REMOTE)"
        )
    if "botocore" in mods or "boto3" in mods or "s3fs" in mods:
        return (
            f"S3 at {settings.s3_endpoint_url or 'AWS'} failed: {msg}; check that the store is "
            f"running and the credentials are right{stack}"
        )
    if "mlflow" in mods or inner in ("effects/tracking/runs.py", "effects/tracking/registry.py"):
        what = f"the MLflow tracking server at {redact_uri(settings.tracking_uri)}"
        if _is_connection_error(chain):
            return f"{what} does not answer: {msg}; start it or fix MLFLOW_TRACKING_URI{stack}"
        return f"{what} failed: {msg}{stack}"
    if "httpx" in mods or "prefect" in mods:
        api = settings.prefect_api_url or "the temporary Prefect server"
        if _is_connection_error(chain):
            return f"the Prefect API at {api} does not answer: {msg}; start it or fix PREFECT_API_URL{stack}"
        return f"Prefect failed: {msg}{stack}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or msg}; check that the path exists and is writable"
    return f"{exc.__class__.__name__}: {msg}"


def error_line(exc: BaseException, settings, debug: bool) -> str:
    """The one `error: ...` line for an infrastructure failure, its traceback logged."""
    log = record_failure(exc, settings.home) if settings is not None else None
    text = describe(exc, settings) if settings is not None else f"{exc.__class__.__name__}: {_first_line(exc)}"
    if debug:
        return f"error: {text}"
    where = f"traceback in {log}" if log else "LEPTON_DEBUG=1 shows the traceback"
    return f"error: {text} ({where})"
