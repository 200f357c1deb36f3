"""What every command shares: the common options, params loading, the setup before a
flow runs (a temporary Prefect server when none is configured, quiet logging), and
how the process ends (one `error:` line and an exit code, README "Exit codes").

Heavy imports (Prefect, MLflow, torch) happen inside functions, after the
environment is configured, so `lepton --help` stays instant and settings apply.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

import click
import typer

from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import Params

ParamsOpt = typer.Option(None, "--params", help="params file (default: params.yaml of the project)")
SetOpt = typer.Option([], "--set", "-s", help="override a param: section.key=value (repeatable)")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON")


# ---------------------------------------------------------------- params
def load_params(params_file: Path | None, overrides: list[str], settings=None) -> Params:
    """params.yaml of the project (or --params) with the --set overrides applied."""
    from lepton_core.params import load_params as _load

    path = params_file
    if path is None and settings is not None and settings.params_file.exists():
        path = settings.params_file
    if params_file is not None and not params_file.exists():
        raise ParamsError(f"{params_file}: no such params file")
    return _load(path, overrides)


def sections(flow, params: Params) -> dict:
    """The sections of `params` that `flow` takes, by name: every section of Params
    the flow declares as a parameter, so a new section needs no CLI edit."""
    taken = inspect.signature(getattr(flow, "fn", flow)).parameters
    return {name: getattr(params, name) for name in type(params).model_fields if name in taken}


def check_data_path(params: Params, settings) -> None:
    """data.path names something that exists (relative to the project, or as given)."""
    p = params.data.path
    if p and not p.startswith("s3://") and not (settings.project_dir / p).exists() and not Path(p).exists():
        raise LeptonError(f"{p}: no such file or folder")


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def echo_lines(lines: list[str], err: bool = False) -> None:
    for line in lines:
        typer.echo(line, err=err)


# ---------------------------------------------------------------- before a flow runs
_SERVER = None  # lepton.local_server.LocalPrefectServer, when this command started one


def wait_for_server() -> None:
    if _SERVER is not None:
        _SERVER.wait_healthy()


class _HideUserErrorTracebacks(logging.Filter):
    """Prefect logs task failures with their traceback; for a user's mistake the
    one-line message is enough (the CLI prints it again at the end)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LeptonError):
            record.exc_info, record.exc_text = None, None
        return True


def setup(needs: tuple[str, ...] = ("mlflow", "prefect", "s3"), runs_flows: bool = True):
    """Configure the environment, check that the services in `needs` answer, start a
    temporary Prefect server if none is configured, and quiet the logging."""
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    require(s, needs)
    global _SERVER
    if runs_flows and _SERVER is None and not s.prefect_api_url:
        # No Prefect server configured: start a temporary one for this command, before
        # Prefect is imported, so every flow below talks to it (see local_server.py).
        from lepton.local_server import LocalPrefectServer

        _SERVER = LocalPrefectServer(s.home / "logs" / "prefect-temporary-server.log").start()
        os.environ["PREFECT_API_URL"] = _SERVER.api_url
        os.environ["LEPTON_PREFECT_TEMPORARY"] = "1"  # no dashboard outlives it: no links to it
    import prefect  # noqa: F401
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's handlers exist from here on (importing prefect is lazy about it)

    quiet = _HideUserErrorTracebacks()
    for name in ["prefect.flow_runs", "prefect.task_runs", "prefect", ""]:
        logging.getLogger(name).addFilter(quiet)  # records made at these loggers
    for name in ["", *logging.root.manager.loggerDict]:
        for h in getattr(logging.getLogger(name), "handlers", []):
            h.addFilter(quiet)  # records that reach these handlers
    from lepton.failures import quiet_console

    quiet_console(s.home, s.debug)  # tracebacks to <home>/logs/lepton.log, not the terminal
    return s


# ---------------------------------------------------------------- how the process ends
def exit_now(code: int | str | None) -> NoReturn:
    """Exit as Python would, minus its final teardown of every module.

    Python's own exit first runs the threading exit hooks (Prefect drains its log and
    event queues there) and joins non-daemon threads, then runs the atexit functions
    (the temporary Prefect server is stopped there); both are done here, in that order.
    What it would do next, tearing down torch, MLflow and Prefect module by module,
    takes over 2 s and has nothing left to save, so the process ends instead."""
    import atexit
    import threading

    if isinstance(code, str):
        typer.echo(code, err=True)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)


def run_main(app: typer.Typer) -> NoReturn:
    """Run the app: user errors end in one line on stderr and a non-zero exit."""
    try:
        dispatch(app)
    except SystemExit as e:
        exit_now(e.code)
    exit_now(0)


def dispatch(app: typer.Typer) -> None:
    """Run the command; turn every way it can end into an exit code (sys.exit):
    0 done, 1 the machinery failed, 2 bad input or usage, 3 the gate said no
    (the command's own typer.Exit), 130 interrupted."""
    from effects.runtime.settings import get_settings, private_files

    private_files()  # Lepton's state is its user's alone (files 0600, folders 0700)

    debug = get_settings().debug
    try:
        # Without standalone mode click *returns* the code of a `typer.Exit(n)` (and of
        # an interrupt) instead of raising it; commands themselves return None.
        code = app(standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except LeptonError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # an infrastructure failure, not the user's input
        _infrastructure_failure(e, debug)


def _infrastructure_failure(e: Exception, debug: bool) -> NoReturn:
    """Exit 1 with one `error:` line naming what failed (lepton/failures.py)."""
    show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()  # a usage error from typer's own copy of click (e.g. a port out of range)
        sys.exit(code)
    from effects.runtime.settings import get_settings
    from lepton.failures import error_line

    try:
        s = get_settings()  # now: the command may have pointed the environment at a stack
    except Exception:  # noqa: BLE001  (the line must come out whatever else is broken)
        s = None
    line = error_line(e, s, debug)  # the traceback goes to <home>/logs/lepton.log
    if debug:
        traceback.print_exception(e)
    typer.echo(line, err=True)
    sys.exit(1)
