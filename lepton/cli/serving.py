"""`lepton serve` (the model behind an alias over HTTP) and `lepton predict` (offline
scoring of a file or folder)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
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
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="address to listen on; one beyond loopback (0.0.0.0, a LAN address) needs a token or --no-auth",
    ),
    port: int = typer.Option(8000, "--port", help="port to listen on", min=1, max=65535),
    token: str | None = typer.Option(
        None,
        "--token",
        help="require this bearer token on /v1/*, /v2/* and /invocations (other local users can read it in the "
        "process list: prefer LEPTON_SERVE_TOKEN or --token-file)",
        show_default=False,
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="read the bearer token from this file (default: LEPTON_SERVE_TOKEN; none = open)"
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="serve without a token even on an address beyond loopback (ignores LEPTON_SERVE_TOKEN)"
    ),
    variant: str = typer.Option(
        "torch",
        "--variant",
        help="torch | onnx | int8: serve the alias's PyTorch model or its ONNX variant "
        "(@ALIAS-onnx, @ALIAS-int8, made by `lepton optimize`) through ONNX Runtime",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="server processes behind the one port, each with its own batcher and model (default: serve.workers)",
        min=1,
        max=256,
        show_default=False,
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
    auth_token = _bearer_token(token, token_file, s.serve_token, host, no_auth)
    if not port_free(port) and host in ("127.0.0.1", "localhost"):
        raise LeptonError(f"port {port} is already in use; choose another with --port")
    # no check that MLflow answers: the server starts without it (/readyz says 503 until
    # a model loads) and keeps polling, as a pod started before MLflow must
    import uvicorn

    from lepton.serving.app import create_app
    from lepton.serving.http_limits import uvicorn_options
    from lepton.serving.server import ModelServer

    alias = alias if variant == "torch" else f"{alias}-{variant}"
    serve_params = params.serve.model_copy(update={"workers": workers or params.serve.workers})
    if serve_params.workers > 1:
        _serve_workers(model or params.registry.model_name, alias, serve_params, s, auth_token, host, port)
        return
    server = ModelServer(model or params.registry.model_name, alias, serve_params, s, auth_token)
    typer.echo(
        render.serving_line(server.model_name, alias, host, port, bool(server.token), server.log.folder), err=True
    )
    uvicorn.run(
        create_app(server), host=host, port=port, log_level="warning", workers=1, **uvicorn_options(serve_params)
    )


def _bearer_token(
    token: str | None, token_file: Path | None, env_token: str | None, host: str, no_auth: bool
) -> str | None:
    """The server's token: --token, --token-file, else LEPTON_SERVE_TOKEN. None (an open
    server) only on a loopback address or with --no-auth."""
    if token_file is not None:
        if token:
            raise ParamsError("give --token or --token-file, not both")
        try:
            token = token_file.read_text().strip()
        except OSError as e:
            raise ParamsError(f"cannot read --token-file {token_file}: {e.strerror or e}") from None
        if not token:
            raise ParamsError(f"--token-file {token_file} is empty")
    if no_auth:
        if token:
            raise ParamsError("--no-auth serves without a token: drop --token/--token-file, or --no-auth")
        return None
    token = token or env_token
    if not token and not _loopback(host):
        raise ParamsError(
            f"--host {host} is reachable beyond this machine and no token is set: set LEPTON_SERVE_TOKEN "
            "(or --token-file), or pass --no-auth to serve it open"
        )
    return token or None


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


@contextmanager
def _metrics_dir(home: Path) -> Iterator[str]:
    """A private folder for the workers' metrics, `<home>/serve/metrics/<pid>`: removed
    when `lepton serve` ends; one a killed server left is removed by the next start."""
    import shutil

    from effects.runtime.procs import pid_alive

    base = home / "serve" / "metrics"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in base.iterdir():
        if not (old.name.isdigit() and pid_alive(int(old.name))):
            shutil.rmtree(old, ignore_errors=True)
    mine = base / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir(mode=0o700)
    try:
        yield str(mine)
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def _serve_workers(model: str, alias: str, params, s, token: str | None, host: str, port: int) -> None:
    """`serve.workers` processes behind one port: uvicorn's supervisor binds the port,
    starts each worker afresh (`lepton.serving.app.app_from_env`, told what to serve through the
    environment) and replaces one that dies. Their metrics meet in a fresh private folder
    that a scrape of any worker sums (prometheus_client's multiprocess mode)."""
    import json

    import uvicorn

    from effects.serving.prediction_log import open_store
    from lepton.serving.app import WORKER_ENV
    from lepton.serving.core import serve_device
    from lepton.serving.http_limits import uvicorn_options

    serve_device(params.device)  # serve.device=cuda without a GPU: one line here, not N tracebacks
    folder = str(open_store(str(s.prediction_log), s))
    typer.echo(render.serving_line(model, alias, host, port, bool(token), folder), err=True)
    typer.echo(f"{params.workers} workers", err=True)
    with _metrics_dir(s.home) as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus_client
        os.environ[WORKER_ENV] = json.dumps(
            {
                "model": model,
                "alias": alias,
                "params": params.model_dump(mode="json"),
                "token": token,
                "supervisor": os.getpid(),  # a worker ends when this process does, even killed
            }
        )
        uvicorn.run(
            "lepton.serving.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            workers=params.workers,
            **uvicorn_options(params),
        )


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
