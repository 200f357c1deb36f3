"""`lepton monitor [check|accepted|reject]` and `lepton simulate-drift`: new data
checked for drift, the labelled batches the next retrain folds in, and synthetic
drift to try it on."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from lepton.cli import render
from lepton.cli.options import (
    ParamsOpt,
    SetOpt,
    echo_json,
    echo_lines,
    load_params,
    sections,
    setup,
    wait_for_server,
)
from lepton_core.errors import LeptonError


def simulate_drift(
    kind: str = typer.Option(..., "--kind", help="rotate | noise | brightness | class-prior"),
    strength: str = typer.Option("high", "--strength", help="low | medium | high, or a number in [0, 1]"),
    out: Path = typer.Option(..., "--out", help="new folder for the batch (e.g. .lepton/monitor/inbox/batch-1)"),
    seed: int = typer.Option(0, help="seed of the random drift"),
):
    """Write a labelled batch of held-out digits with synthetic drift."""
    from effects.runtime.settings import configure_environment

    configure_environment()
    from effects.monitoring.monitor import write_drift_batch

    typer.echo(render.drift_batch_line(write_drift_batch(kind, strength, out, seed)))


class _MonitorGroup(TyperGroup):
    """`lepton monitor [BATCH] [OPTIONS]` checks (as it always did); `lepton monitor
    accepted` and `lepton monitor reject BATCH` manage the accepted batches. Anything
    that is not one of those sub-command names goes to `check`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["check", *args]
        return super().parse_args(ctx, args)


monitor_app = typer.Typer(
    cls=_MonitorGroup,
    no_args_is_help=False,
    help="Check new data for drift: `lepton monitor [BATCH] [--format F] [--set k=v] [--json]` runs "
    "`check` (see `lepton monitor check --help`). `accepted` lists the labelled batches the next "
    "retrain folds in; `reject BATCH` takes one off that list.",
)


@monitor_app.command("check")
def monitor(
    batch: str | None = typer.Argument(
        None, help="a batch folder or file, or s3://bucket/prefix (default: new batches in the inbox)"
    ),
    fmt: str | None = typer.Option(None, "--format", help="batch format (default: detected)"),
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """Check new data for drift against the champion; print each verdict and report."""
    from effects.runtime.settings import configure_environment

    if batch is not None and not batch.startswith("s3://"):
        if not Path(batch).exists():
            raise LeptonError(f"{batch}: no such file or folder")
        batch = str(Path(batch).resolve())
    s = configure_environment()
    params = load_params(params_file, list(set_), s)
    setup()
    from flows.monitor import monitor as monitor_flow

    wait_for_server()
    r = monitor_flow(batch=batch, batch_format=fmt, **sections(monitor_flow, params))
    if as_json:
        echo_json(r)
        return
    echo_lines(render.monitor_results(r))


@monitor_app.command("accepted")
def monitor_accepted(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")):
    """List the labelled batches the monitor accepted, which the next retrain folds in."""
    from effects.runtime.settings import configure_environment
    from effects.state import monitor_state

    batches = monitor_state.accepted_batches(configure_environment(use_stack=False))
    if as_json:
        echo_json(batches)
        return
    echo_lines(render.accepted_table(batches))


@monitor_app.command("reject")
def monitor_reject(batch: str = typer.Argument(..., help="batch id (or name) from `lepton monitor accepted`")):
    """Take an accepted batch off the list, so no retrain folds it in (it is not accepted again)."""
    from effects.runtime.settings import configure_environment
    from effects.state import monitor_state

    typer.echo(render.rejected_line(monitor_state.reject_batch(configure_environment(use_stack=False), batch)))
