"""`lepton reproduce`: retrain a version from its lineage (data version, params, commit)."""

from __future__ import annotations

from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import JsonOpt, ParamsOpt, echo_json, echo_lines, load_params
from lepton_core.errors import LeptonError

EXIT_DIFFERS = 3  # the reproduction's test metrics differ from the version's (docs/cli.md)


def reproduce(
    version: str = typer.Argument(..., help="model version number, or @ALIAS (@champion)"),
    at_commit: bool = typer.Option(
        False, "--at-commit", help="run the code of the commit the version was trained at (a temporary git worktree)"
    ),
    model: str | None = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    as_json: bool = JsonOpt,
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    params_file: Path | None = ParamsOpt,
):
    """Retrain VERSION from its lineage: its data version (restored from the DVC remote)
    and the params its run recorded, into a new run tagged as its reproduction; then
    compare the test metrics (exit 3 when they differ)."""
    if not (version.isdigit() or (version.startswith("@") and version[1:].replace("-", "_").isidentifier())):
        raise LeptonError(f"{version!r} is not a model version number or an @alias")
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    name = model or load_params(params_file, [], s).registry.model_name
    require(s, ("mlflow", "s3") if s.dvc_remote.startswith("s3://") else ("mlflow",))
    from lepton.reproduce import reproduce as run_reproduction

    say = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    rep = run_reproduction(name, version, s, at_commit=at_commit, echo=say, progress=not (no_progress or as_json))
    if as_json:
        echo_json(
            {
                "model": name,
                "version": rep.lineage.version,
                "run_id": rep.run_id,
                "reproduces_run_id": rep.lineage.run_id,
                "data_version": rep.lineage.data_version,
                "commit": rep.commit,
                "logged": rep.lineage.metrics,
                "reproduced": rep.metrics,
                "exact": rep.exact,
                "notes": rep.notes,
            }
        )
    else:
        echo_lines(render.reproduce_lines(rep))
    if not rep.exact:
        raise typer.Exit(EXIT_DIFFERS)
