"""`lepton data restore`: a past data version back from the DVC remote."""

from __future__ import annotations

from pathlib import Path

import typer

from lepton.cli import render

data_app = typer.Typer(help="Work with DVC-versioned datasets.", no_args_is_help=True)


@data_app.command("restore")
def data_restore(
    version: str = typer.Argument(..., help="data version (DVC md5, from `lepton status`)"),
    to: Path = typer.Option(..., "--to", help="folder to restore into (new or empty)"),
):
    """Restore a past data version from the DVC remote."""
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    if s.dvc_remote.startswith("s3://"):
        require(s, ("s3",))
    from effects.data.dvc_store import restore_dataset

    path = restore_dataset(version, to, s)
    n = sum(1 for p in path.rglob("*") if p.is_file())
    typer.echo(render.restored_line(version, path, n))
