"""`lepton promote`, `lepton rollback`, `lepton optimize`: the model registry's aliases
and variants."""

from __future__ import annotations

from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import (
    JsonOpt,
    ParamsOpt,
    SetOpt,
    echo_json,
    load_params,
    sections,
    setup,
    wait_for_server,
)
from lepton_core.errors import LeptonError

EXIT_GATE_SAID_NO = 3  # README, "Exit codes"


def promote(
    version: str | None = typer.Argument(None, help="model version number (default: the @challenger)"),
    force: bool = typer.Option(False, "--force", help="promote even if the gate says no (recorded in tags)"),
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
):
    """Run the promotion gate for VERSION (default: the @challenger a retrain in
    promote.mode shadow registered) against the current champion: on its test split and,
    for the @challenger or in promote.mode shadow, on the live traffic both scored (the
    prediction log, as `lepton compare --live` reads it; fewer than promote.min_live_pairs
    labelled requests refuse it unless --force)."""
    if version is not None and not version.isdigit():
        raise LeptonError(f"{version!r} is not a model version number")
    from effects.runtime.settings import configure_environment

    params = load_params(params_file, list(set_), configure_environment())
    setup()
    from flows.registry import promote_flow

    wait_for_server()
    r = promote_flow(version=version, force=force, **sections(promote_flow, params))
    typer.echo(render.promote_line(r))
    if not r["promoted"] and r["reason"] != "already the champion":
        raise typer.Exit(EXIT_GATE_SAID_NO)


def rollback(params_file: Path | None = ParamsOpt):
    """Make @previous the champion again."""
    from effects.runtime.settings import configure_environment

    params = load_params(params_file, [], configure_environment())
    setup()
    from flows.registry import rollback_flow

    wait_for_server()
    typer.echo(render.rollback_line(rollback_flow(**sections(rollback_flow, params))))


def optimize(
    version: str | None = typer.Argument(None, help="model version number (default: the champion)"),
    variant: list[str] = typer.Option(
        [], "--variant", help="onnx | int8 (repeatable; default: optimize.variants from params)"
    ),
    as_json: bool = JsonOpt,
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
):
    """Build ONNX and int8 variants of VERSION, check each on its test split, and register
    those within optimize.max_accuracy_drop (regression: optimize.max_rmse_increase); a
    variant that is refused, or that the ONNX exporter cannot make, gets its one-line
    reason (exit 3 when one is refused)."""
    if version is not None and not version.isdigit():
        raise LeptonError(f"{version!r} is not a model version number")
    bad = [v for v in variant if v not in ("onnx", "int8")]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not one of onnx, int8", param_hint="--variant")
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    params = load_params(params_file, list(set_), s)
    require(s, ("mlflow", "s3"))
    opt = params.optimize.model_copy(update={"variants": tuple(variant)}) if variant else params.optimize
    from effects.tracking.variants import optimize_version

    r = optimize_version(
        params.registry.model_name, version, opt, s, echo=(lambda line: None) if as_json else typer.echo
    )
    if as_json:
        echo_json(r)
    if not all(v["registered"] for v in r["variants"]):
        raise typer.Exit(EXIT_GATE_SAID_NO)
