"""`lepton demo`, `lepton retrain`, `lepton sweep`: the retrain flow (or the sweep
flow) in this process, then a summary."""

from __future__ import annotations

from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import (
    JsonOpt,
    ParamsOpt,
    SetOpt,
    check_data_path,
    echo_json,
    echo_lines,
    load_params,
    sections,
    setup,
    wait_for_server,
)
from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import FORMATS, check_device


def _run_retrain(params, progress: bool) -> dict:
    from flows.retrain import retrain as retrain_flow

    wait_for_server()
    return retrain_flow(**sections(retrain_flow, params), progress=progress)


def _experiment_of(settings, run_id: str) -> str:
    from effects.tracking import runs

    return runs.client(settings).get_run(run_id).info.experiment_id


def _summary(result: dict, status: dict, settings) -> None:
    from effects.runtime.settings import registry_label
    from effects.tracking import runs

    echo_lines(render.retrain_summary(result, status, registry_label(settings)))
    uri, run_id = status["tracking_uri"], result["run_id"]
    exp = _experiment_of(settings, run_id)
    echo_lines(render.browse(uri, runs.run_url(uri, exp, run_id), runs.run_url("http://127.0.0.1:5000", exp, run_id)))


def _data_overrides(data: str | None, fmt: str | None) -> list[str]:
    """--format and --data as params overrides (a local path made absolute)."""
    out = []
    if fmt is not None:
        if fmt not in FORMATS:
            raise ParamsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        out.append(f"data.format={fmt}")
    if data is not None and data.startswith("s3://"):
        out.append(f"data.path={data}")  # listed and fetched by the prepare step
    elif data is not None:
        if not Path(data).expanduser().exists():
            raise LeptonError(f"{data}: no such file or folder")
        out.append(f"data.path={Path(data).expanduser().resolve()}")
    return out


def demo(
    progress: bool = typer.Option(True, help="show a progress bar while training"),
):
    """Run the retraining loop on scikit-learn's bundled digits with default params."""
    s = setup()
    params = load_params(None, ["data.format=digits", "data.path=null"], s)
    check_device(params.train)
    result = _run_retrain(params, progress)
    from effects.tracking.registry import registry_status

    _summary(result, registry_status(params.registry.model_name, s), s)


def retrain(
    data: str | None = typer.Option(
        None, "--data", help="raw data file or folder, or an S3 prefix (s3://bucket/prefix)"
    ),
    fmt: str | None = typer.Option(None, "--format", help=f"raw data format: {'|'.join(FORMATS)}", show_default=False),
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
    progress: bool = typer.Option(True, help="show a progress bar while training"),
    as_json: bool = JsonOpt,
):
    """Prepare, train, evaluate, register and (if it passes the gate) promote."""
    overrides = [*set_, *_data_overrides(data, fmt)]
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    params = load_params(params_file, overrides, s)
    check_data_path(params, s)
    check_device(params.train)  # before any work: no temporary server, no run
    setup()
    result = _run_retrain(params, progress)
    from effects.tracking.registry import registry_status

    status = registry_status(params.registry.model_name, s)
    if as_json:
        echo_json({"result": result, "status": status})
    else:
        _summary(result, status, s)


def sweep(
    trials: int | None = typer.Option(None, "--trials", help="trials in all (default: sweep.trials)"),
    parallel: int | None = typer.Option(None, "--parallel", help="trials at once (default: sweep.parallel)"),
    dask: str | None = typer.Option(
        None,
        "--dask",
        metavar="ADDRESS|local",
        help="run the trials on the Dask scheduler at ADDRESS (tcp://HOST:8786), or on a temporary "
        "LocalCluster of --parallel worker processes with 'local' (default: threads)",
    ),
    set_: list[str] = SetOpt,
    params_file: Path | None = ParamsOpt,
    progress: bool = typer.Option(False, help="show each trial's progress bar"),
    as_json: bool = JsonOpt,
):
    """Search sweep.space with Optuna (TPE): every trial a nested MLflow run under one
    parent; the best trial is evaluated, registered and put through the gate."""
    overrides = list(set_)
    if trials is not None:
        overrides.append(f"sweep.trials={trials}")
    if parallel is not None:
        overrides.append(f"sweep.parallel={parallel}")
    from effects.runtime.settings import configure_environment
    from lepton_core.sweep import check_dask_address, search_space

    s = configure_environment()
    params = load_params(params_file, overrides, s)
    search_space(params.sweep, params)  # a bad path or value: one line, before any work
    dask = check_dask_address(dask)
    check_data_path(params, s)
    check_device(params.train)
    setup()
    from flows.sweep import sweep as sweep_flow

    wait_for_server()
    result = sweep_flow(**sections(sweep_flow, params), dask=dask, progress=progress)
    if as_json:
        echo_json(result)
        return
    echo_lines(render.sweep_summary(result, params.registry.model_name))
    from effects.tracking import runs

    exp = _experiment_of(s, result["parent_run_id"])
    echo_lines(render.browse(s.tracking_uri, runs.run_url(s.tracking_uri, exp, result["parent_run_id"])))
