"""`lepton serve` (the model behind an alias over HTTP) and `lepton predict` (offline
scoring of a file or folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import ParamsOpt, SetOpt, load_params
from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import FORMATS

VARIANTS = ("torch", "onnx", "int8")


def serve(
    model: str | None = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    alias: str = typer.Option("champion", "--alias", help="the alias to serve; the server follows it as it moves"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="port to listen on", min=1, max=65535),
    token: str | None = typer.Option(
        None,
        "--token",
        help="require this bearer token on /v1/* (default: LEPTON_SERVE_TOKEN; none = open)",
        show_default=False,
    ),
    variant: str = typer.Option(
        "torch",
        "--variant",
        help="torch | onnx | int8: serve the alias's PyTorch model or its ONNX variant "
        "(@ALIAS-onnx, @ALIAS-int8, made by `lepton optimize`) through ONNX Runtime",
    ),
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
):
    """Serve the model version behind an alias over HTTP (batched; hot-swaps when the alias moves)."""
    if variant not in VARIANTS:
        raise typer.BadParameter(f"{variant!r} is not one of torch, onnx, int8", param_hint="--variant")
    from effects.runtime.procs import port_free
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    params = load_params(params_file, list(set_), s)
    if not port_free(port) and host in ("127.0.0.1", "localhost"):
        raise LeptonError(f"port {port} is already in use; choose another with --port")
    # no check that MLflow answers: the server starts without it (/readyz says 503 until
    # a model loads) and keeps polling, as a pod started before MLflow must
    import uvicorn

    from lepton.serve import ModelServer, create_app

    alias = alias if variant == "torch" else f"{alias}-{variant}"
    server = ModelServer(model or params.registry.model_name, alias, params.serve, s, token or s.serve_token)
    typer.echo(
        render.serving_line(server.model_name, alias, host, port, bool(server.token), server.log.folder), err=True
    )
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning", workers=1)


def predict(
    data: Path = typer.Argument(..., help="a file or folder of raw samples (any format the loaders read)"),
    out: Path = typer.Option(..., "--out", help="parquet file for the predictions"),
    fmt: str | None = typer.Option(None, "--format", help=f"{'|'.join(FORMATS)} (default: detected)"),
    model: str | None = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    alias: str = typer.Option("champion", "--alias", help="the alias whose version scores"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    params_file: Path | None = ParamsOpt,
):
    """Score a file or folder offline with the champion (labels, class names, probabilities; or values)."""
    if fmt is not None and fmt not in FORMATS:
        raise ParamsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    params = load_params(params_file, [], s)
    require(s, ("mlflow", "s3"))
    from effects.serving.batch_scoring import score_data

    r = score_data(
        data.resolve(), fmt, out.resolve(), model or params.registry.model_name, alias, progress=progress, settings=s
    )
    typer.echo(render.predict_line(r))
