"""The `lepton` command line.

Heavy imports (Prefect, MLflow, torch) happen inside the commands, after the
environment is configured, so `lepton --help` is instant and settings apply.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import List, NoReturn, Optional

import click
import typer
from typer.core import TyperGroup

from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import FORMATS, check_device

app = typer.Typer(
    name="lepton",
    help="Lepton: versioned data -> PyTorch training -> MLflow registry -> promotion gate, as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Work with DVC-versioned datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


_SERVER = None  # lepton.local_server.LocalPrefectServer, when this command started one


def _wait_for_server() -> None:
    if _SERVER is not None:
        _SERVER.wait_healthy()


class _HideUserErrorTracebacks(logging.Filter):
    """Prefect logs task failures with their traceback; for a user's mistake the
    one-line message is enough (the CLI prints it again at the end)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LeptonError):
            record.exc_info, record.exc_text = None, None
        return True


def _setup(runs_flows: bool = True):
    from effects.runtime.settings import configure_environment

    s = configure_environment()
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


def _params(params_file: Optional[Path], overrides: List[str], settings=None):
    from lepton_core.params import load_params

    path = params_file
    if path is None and settings is not None and settings.params_file.exists():
        path = settings.params_file
    if params_file is not None and not params_file.exists():
        raise ParamsError(f"{params_file}: no such params file")
    return load_params(path, overrides)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


ParamsOpt = typer.Option(None, "--params", help="params file (default: params.yaml of the project)")
SetOpt = typer.Option([], "--set", "-s", help="override a param: section.key=value (repeatable)")


def _run_retrain(params, progress: bool) -> dict:
    from flows.retrain import retrain

    _wait_for_server()
    return retrain(
        data=params.data, train=params.train, promote=params.promote, registry=params.registry,
        deploy=params.deploy, monitor=params.monitor, serve=params.serve, optimize=params.optimize,
        progress=progress,
    )


def _summary(result: dict, status: dict, settings) -> None:
    d = result["decision"]
    verdict = "promoted to @champion" if d["promoted"] else "registered, not promoted"
    typer.echo("")
    typer.echo(f"model version   {status['registered_model']} v{result['version']}: {verdict}")
    typer.echo(f"gate            {d['reason']}")
    champ = status["champion"]
    if champ:
        m = champ["metrics"]
        typer.echo(f"champion        v{champ['version']}  test accuracy {m.get('accuracy', float('nan')):.4f}"
                   f"  macro-F1 {m.get('f1_macro', float('nan')):.4f}")
    typer.echo(f"this run        test accuracy {result['metrics']['test_accuracy']:.4f}"
               f"  macro-F1 {result['metrics']['test_f1_macro']:.4f}")
    typer.echo(f"data version    {result['data_version']}")
    typer.echo(f"MLflow run      {result['run_id']}")
    from effects.runtime.settings import registry_label

    typer.echo(f"registry        {registry_label(settings)}")
    uri = status["tracking_uri"]
    from effects.tracking import runs

    exp = runs.client(settings).get_run(result["run_id"]).info.experiment_id
    if uri.startswith("sqlite:"):
        typer.echo(f"browse          mlflow ui --backend-store-uri {uri}")
        typer.echo(f"                then {runs.run_url('http://127.0.0.1:5000', exp, result['run_id'])}")
    else:
        typer.echo(f"browse          {runs.run_url(uri, exp, result['run_id']) or uri}")


@app.command()
def demo(
    progress: bool = typer.Option(True, help="show a progress bar while training"),
):
    """Run the retraining loop on scikit-learn's bundled digits with default params."""
    s = _setup()
    params = _params(None, ["data.format=digits", "data.path=null"], s)
    check_device(params.train)
    result = _run_retrain(params, progress)
    from effects.tracking.registry import registry_status

    _summary(result, registry_status(params.registry.model_name, s), s)


@app.command()
def retrain(
    data: Optional[str] = typer.Option(
        None, "--data", help="raw data file or folder, or an S3 prefix (s3://bucket/prefix)"),
    fmt: Optional[str] = typer.Option(
        None, "--format", help=f"raw data format: {'|'.join(FORMATS)}", show_default=False
    ),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
    progress: bool = typer.Option(True, help="show a progress bar while training"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
):
    """Prepare, train, evaluate, register and (if it passes the gate) promote."""
    overrides = list(set_)
    if fmt is not None:
        if fmt not in FORMATS:
            raise ParamsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        overrides.append(f"data.format={fmt}")
    if data is not None and data.startswith("s3://"):
        overrides.append(f"data.path={data}")  # listed and fetched by the prepare step
    elif data is not None:
        if not Path(data).expanduser().exists():
            raise LeptonError(f"{data}: no such file or folder")
        overrides.append(f"data.path={Path(data).expanduser().resolve()}")
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    params = _params(params_file, overrides, s)
    if (params.data.path and not params.data.path.startswith("s3://")
            and not (s.project_dir / params.data.path).exists() and not Path(params.data.path).exists()):
        raise LeptonError(f"{params.data.path}: no such file or folder")
    check_device(params.train)  # before any work: no temporary server, no run
    _setup()
    result = _run_retrain(params, progress)
    from effects.tracking.registry import registry_status

    status = registry_status(params.registry.model_name, s)
    if as_json:
        _echo_json({"result": result, "status": status})
    else:
        _summary(result, status, s)


@app.command()
def sweep(
    trials: Optional[int] = typer.Option(None, "--trials", help="trials in all (default: sweep.trials)"),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="trials at once (default: sweep.parallel)"),
    dask: Optional[str] = typer.Option(
        None, "--dask", metavar="ADDRESS|local",
        help="run the trials on the Dask scheduler at ADDRESS (tcp://HOST:8786), or on a temporary "
             "LocalCluster of --parallel worker processes with 'local' (default: threads)"),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
    progress: bool = typer.Option(False, help="show each trial's progress bar"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
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
    params = _params(params_file, overrides, s)
    search_space(params.sweep, params)  # a bad path or value: one line, before any work
    dask = check_dask_address(dask)
    if (params.data.path and not params.data.path.startswith("s3://")
            and not (s.project_dir / params.data.path).exists() and not Path(params.data.path).exists()):
        raise LeptonError(f"{params.data.path}: no such file or folder")
    check_device(params.train)
    _setup()
    from flows.sweep import sweep as sweep_flow

    _wait_for_server()
    result = sweep_flow(
        data=params.data, train=params.train, promote=params.promote, registry=params.registry,
        deploy=params.deploy, monitor=params.monitor, serve=params.serve, optimize=params.optimize,
        sweep=params.sweep, dask=dask, progress=progress,
    )
    if as_json:
        _echo_json(result)
        return
    failed = result["failed"]
    best, d = result["best"], result["decision"]
    typer.echo("")
    typer.echo(f"sweep           {len(result['trials'])} trials ({failed} failed) on {result['runner']}; "
               f"parent MLflow run {result['parent_run_id']}")
    for t in result["trials"]:
        value = "failed" if t["value"] is None else f"{result['metric']} {t['value']:.4f}"
        values = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["values"].items())
        mark = "*" if t["number"] == best["number"] else " "
        typer.echo(f"  {mark} trial {t['number']:<3} {value:<24} {values}")
    verdict = "promoted to @champion" if d["promoted"] else "registered, not promoted"
    typer.echo(f"model version   {params.registry.model_name} v{result['version']} (trial {best['number']}): {verdict}")
    typer.echo(f"gate            {d['reason']}")
    typer.echo(f"best trial      test accuracy {result['metrics']['test_accuracy']:.4f}  run {best['run_id']}")
    from effects.tracking import runs

    exp = runs.client(s).get_run(result["parent_run_id"]).info.experiment_id
    uri = s.tracking_uri
    if uri.startswith("sqlite:"):
        typer.echo(f"browse          mlflow ui --backend-store-uri {uri}")
    else:
        typer.echo(f"browse          {runs.run_url(uri, exp, result['parent_run_id']) or uri}")


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="one JSON object (for scripts and CI)"),
    model: Optional[str] = typer.Option(None, help="registered model (default: registry.model_name)"),
    params_file: Optional[Path] = ParamsOpt,
):
    """Show the champion and previous versions of the registered model."""
    from lepton import stack
    from effects.runtime.settings import StackDown, configure_environment, registry_label

    s = configure_environment(allow_down=True)
    name = model or _params(params_file, [], s).registry.model_name
    services = stack.health(s)
    sick = [svc for svc, h in services.items() if not h["healthy"]] if s.stack else []
    if sick:  # a configured stack with a service down: say which, never show local state
        if as_json:
            _echo_json({"services": services, "registry": None})
        else:
            for svc, h in services.items():
                word = "healthy" if h["healthy"] else ("running, not healthy" if h["running"] else "down")
                typer.echo(f"{svc:<17} {word:<22} {h['url']}")
        h = services[sick[0]]
        raise StackDown(f"the stack's {sick[0]} is {'not healthy' if h['running'] else 'down'} ({h['url']}); "
                        "run `lepton up` to start it again")
    from effects.tracking.registry import registry_status

    st = registry_status(name, s)
    if as_json:
        _echo_json({**st, "registry": registry_label(s), **({"services": services} if services else {})})
        return
    for svc, h in services.items():
        word = "healthy" if h["healthy"] else ("running, not healthy" if h["running"] else "down")
        typer.echo(f"{svc:<17} {word:<22} {h['url']}")
    typer.echo(f"registered model  {st['registered_model']}")
    typer.echo(f"registry          {registry_label(s)}")
    for alias in ("champion", "previous"):
        v = st[alias]
        if v is None:
            typer.echo(f"@{alias:<9}        none")
            continue
        m = ", ".join(f"{k} {val:.4f}" for k, val in sorted(v["metrics"].items()))
        typer.echo(f"@{alias:<9}        v{v['version']}  {m}  data {str(v['data_version'])[:12]}  run {v['run_id']}")


@app.command()
def promote(
    version: str = typer.Argument(..., help="model version number"),
    force: bool = typer.Option(False, "--force", help="promote even if the gate says no (recorded in tags)"),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
):
    """Run the promotion gate for VERSION against the current champion."""
    if not version.isdigit():
        raise LeptonError(f"{version!r} is not a model version number")
    from effects.runtime.settings import configure_environment

    params = _params(params_file, list(set_), configure_environment())
    _setup()
    from flows.registry import promote_flow

    _wait_for_server()
    r = promote_flow(version=version, force=force, promote=params.promote, registry=params.registry)
    word = "promoted" if r["promoted"] else "not promoted"
    typer.echo(f"v{r['version']} {word}: {r['reason']}")
    if not r["promoted"] and r["reason"] != "already the champion":
        raise typer.Exit(3)


@app.command()
def rollback(params_file: Optional[Path] = ParamsOpt):
    """Make @previous the champion again."""
    from effects.runtime.settings import configure_environment

    params = _params(params_file, [], configure_environment())
    _setup()
    from flows.registry import rollback_flow

    _wait_for_server()
    r = rollback_flow(registry=params.registry)
    typer.echo(f"@champion is v{r['champion']} again (v{r['demoted']} demoted)")


@app.command()
def optimize(
    version: Optional[str] = typer.Argument(None, help="model version number (default: the champion)"),
    variant: List[str] = typer.Option(
        [], "--variant", help="onnx | int8 (repeatable; default: optimize.variants from params)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
):
    """Build ONNX and int8 variants of VERSION, check each on its test split, and register
    those within optimize.max_accuracy_drop (exit 3 when one is refused)."""
    if version is not None and not version.isdigit():
        raise LeptonError(f"{version!r} is not a model version number")
    bad = [v for v in variant if v not in ("onnx", "int8")]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not one of onnx, int8", param_hint="--variant")
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    params = _params(params_file, list(set_), s)
    opt = params.optimize.model_copy(update={"variants": tuple(variant)}) if variant else params.optimize
    from effects.tracking.variants import optimize_version

    r = optimize_version(params.registry.model_name, version, opt, s,
                         echo=(lambda line: None) if as_json else typer.echo)
    if as_json:
        _echo_json(r)
    if not all(v["registered"] for v in r["variants"]):
        raise typer.Exit(3)


PortOpt = lambda name, default: typer.Option(  # noqa: E731
    None, f"--{name}-port", help=f"{name} port (default {default}, or LEPTON_{name.upper()}_PORT)", show_default=False,
    min=1, max=65535)


@app.command()
def up(
    db: Optional[str] = typer.Option(
        None, "--db", help="postgresql://USER@HOST:PORT/NAME for both servers (default: SQLite; or LEPTON_DB_URL)"),
    prefect_port: Optional[int] = PortOpt("prefect", 4200),
    mlflow_port: Optional[int] = PortOpt("mlflow", 5000),
    s3_port: Optional[int] = PortOpt("s3", 8333),
    serve_port: Optional[int] = PortOpt("serve", 8000),
    sse: Optional[str] = typer.Option(
        None, "--sse", metavar="AES256|aws:kms|none",
        help="server-side encryption asked for on every S3 write (default: LEPTON_S3_SSE, else as at the last up)"),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="no authentication on S3's filer, MLflow and Prefect (default: on, "
                                 "credentials in <home>/stack/credentials.json)"),
):
    """Start the live stack: S3 store, MLflow server, Prefect server, a worker and the model server."""
    from effects.runtime.settings import configure_environment, redact_uri
    from lepton import stack

    s = configure_environment(use_stack=False)
    state = stack.up(s, db, {
        "prefect": prefect_port or s.ports.get("prefect"),
        "mlflow": mlflow_port or s.ports.get("mlflow"),
        "s3": s3_port or s.ports.get("s3"),
        "serve": serve_port or s.ports.get("serve"),
    }, echo=lambda m: typer.echo(m, err=True), sse=sse, auth=False if no_auth else None)
    u = stack.urls(state)
    typer.echo(f"Prefect dashboard  {u.prefect}")
    typer.echo(f"MLflow UI          {u.mlflow}")
    typer.echo(f"S3 (SeaweedFS)     {u.s3}  bucket {state['bucket']}")
    typer.echo(f"model server       {u.serve}  (@champion; bearer token in {stack.stack_dir(s.home)}/credentials.json)")
    typer.echo(f"work pool          {state['pool']}")
    typer.echo(f"S3 encryption      {state.get('sse') or 'none requested'}")
    typer.echo(f"authentication     {'on (credentials in ' + str(stack.stack_dir(s.home)) + '/credentials.json)' if state.get('auth') else 'off (--no-auth)'}")
    typer.echo(f"backend            {redact_uri(state['db_url']) if state['db_url'] else 'SQLite under ' + str(stack.stack_dir(s.home))}")
    typer.echo("every lepton command now uses this stack; `lepton deploy` registers the deployments")


@app.command()
def down():
    """Stop what `lepton up` started (by PID). Data, runs and models stay."""
    from lepton import stack
    from effects.runtime.settings import configure_environment

    stopped = stack.down(configure_environment(use_stack=False))
    typer.echo("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@app.command()
def deploy(
    params_file: Optional[Path] = ParamsOpt,
    set_: List[str] = SetOpt,
    write_prefect_yaml: Optional[Path] = typer.Option(
        None, "--write-prefect-yaml", metavar="FILE",
        help="write the same deployments as a prefect.yaml (for `prefect deploy --all`) and stop"),
    pool_type: str = typer.Option(
        "process", "--pool-type", metavar="TYPE",
        help="process, or kubernetes: flow runs as Jobs; retrain asks for params.deploy's gpus, memory, cpu"),
    pool: Optional[str] = typer.Option(None, "--pool", help="work pool name (default: LEPTON_WORK_POOL or lepton)"),
    base_job_template: Optional[Path] = typer.Option(
        None, "--base-job-template", metavar="FILE",
        help="template of a new kubernetes pool (default: infra/work-pools/kubernetes.json)"),
):
    """Register the retrain (scheduled), promote, rollback and monitor deployments and the drift trigger."""
    from effects.runtime.settings import configure_environment
    from lepton.deploy import POOL_TYPES

    if pool_type not in POOL_TYPES:
        raise LeptonError(f"--pool-type {pool_type!r}: one of {', '.join(POOL_TYPES)}")
    if write_prefect_yaml is not None:
        from lepton.deploy import render_prefect_yaml
        from lepton_core.fileio import atomic_write

        s = configure_environment(use_stack=False)
        atomic_write(write_prefect_yaml, render_prefect_yaml(_params(params_file, list(set_), s),
                                                             pool or s.work_pool, pool_type))
        typer.echo(f"wrote {write_prefect_yaml}")
        return
    s = configure_environment()
    if not s.prefect_api_url:
        raise LeptonError("no Prefect server: run `lepton up` first (or set PREFECT_API_URL)")
    params = _params(params_file, list(set_), s)
    import prefect  # noqa: F401

    from lepton.deploy import (
        CRASH_RETRIES, LOST_RUNS_AUTOMATION, RETRY_CRASHED_AUTOMATION, deploy_all, load_base_job_template,
    )

    template = load_base_job_template(base_job_template) if pool_type == "kubernetes" else None
    ids = deploy_all(params, str(s.project_dir), pool or s.work_pool, pool_type, template)
    automation = ids.pop("automation")
    recovery = [k for k in (LOST_RUNS_AUTOMATION, RETRY_CRASHED_AUTOMATION) if ids.pop(k, None)]
    for flow_name, dep_id in ids.items():
        typer.echo(f"deployed {flow_name}/lepton  ({dep_id})")
    typer.echo(f"retrain runs on cron '{params.deploy.retrain_cron}', monitor on '{params.monitor.cron}' "
               f"({params.deploy.timezone})")
    typer.echo(f"trigger lepton-retrain-on-drift ({automation}): lepton.drift.detected -> retrain/lepton")
    if recovery:
        typer.echo(f"automations {' and '.join(recovery)}: a run whose process died is marked crashed and "
                   f"run again (at most {CRASH_RETRIES} times), resuming from its checkpoint")
    if pool_type == "kubernetes":
        d = params.deploy
        typer.echo(f"work pool {pool or s.work_pool} (kubernetes): retrain runs as a Job with {d.gpus} GPU(s), "
                   f"{d.memory} memory, {d.cpu} CPU(s)")


@app.command("simulate-drift")
def simulate_drift_cmd(
    kind: str = typer.Option(..., "--kind", help="rotate | noise | brightness | class-prior"),
    strength: str = typer.Option("high", "--strength", help="low | medium | high, or a number in [0, 1]"),
    out: Path = typer.Option(..., "--out", help="new folder for the batch (e.g. .lepton/monitor/inbox/batch-1)"),
    seed: int = typer.Option(0, help="seed of the random drift"),
):
    """Write a labelled batch of held-out digits with synthetic drift."""
    from effects.runtime.settings import configure_environment

    configure_environment()
    from effects.monitoring.monitor import write_drift_batch

    r = write_drift_batch(kind, strength, out, seed)
    typer.echo(f"wrote {r['samples']} images ({r['kind']}, strength {r['strength']}) to {r['path']}")


class _MonitorGroup(TyperGroup):
    """`lepton monitor [BATCH] [OPTIONS]` checks (as it always did); `lepton monitor
    accepted` and `lepton monitor reject BATCH` manage the accepted batches. Anything
    that is not one of those sub-command names goes to `check`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["check", *args]
        return super().parse_args(ctx, args)


monitor_app = typer.Typer(
    cls=_MonitorGroup, no_args_is_help=False,
    help="Check new data for drift: `lepton monitor [BATCH] [--format F] [--set k=v] [--json]` runs "
         "`check` (see `lepton monitor check --help`). `accepted` lists the labelled batches the next "
         "retrain folds in; `reject BATCH` takes one off that list.")
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("check")
def monitor(
    batch: Optional[str] = typer.Argument(
        None, help="a batch folder or file, or s3://bucket/prefix (default: new batches in the inbox)"),
    fmt: Optional[str] = typer.Option(None, "--format", help="batch format (default: detected)"),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
):
    """Check new data for drift against the champion; print each verdict and report."""
    from effects.runtime.settings import configure_environment

    if batch is not None and not batch.startswith("s3://"):
        if not Path(batch).exists():
            raise LeptonError(f"{batch}: no such file or folder")
        batch = str(Path(batch).resolve())
    s = configure_environment()
    params = _params(params_file, list(set_), s)
    _setup()
    from flows.monitor import monitor as monitor_flow

    _wait_for_server()
    r = monitor_flow(batch=batch, batch_format=fmt,
                     monitor=params.monitor, registry=params.registry)
    if as_json:
        _echo_json(r)
        return
    if not r["results"]:
        typer.echo("no new batches")
    for res in r["results"]:
        typer.echo(f"{res['batch_id']}: {res['verdict']}")
        if res["report_html"]:
            typer.echo(f"  report  {res['report_html']}")
        if res.get("report_url"):
            typer.echo(f"  in MLflow  {res['report_url']}")
        typer.echo(f"  MLflow monitoring run  {res['mlflow_run_id']}")
        if res.get("accepted_for_training"):
            typer.echo(f"  accepted for the next retrain (`lepton monitor reject {res['batch_id']}` to refuse it)")
    if r["event_emitted"]:
        typer.echo("drift event emitted")
    elif r.get("event_suppressed"):
        typer.echo(f"drift event {r['event_suppressed']}")
    else:
        typer.echo("no drift event")


@monitor_app.command("accepted")
def monitor_accepted(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")):
    """List the labelled batches the monitor accepted, which the next retrain folds in."""
    from effects.state import monitor_state
    from effects.runtime.settings import configure_environment

    batches = monitor_state.accepted_batches(configure_environment(use_stack=False))
    if as_json:
        _echo_json(batches)
        return
    if not batches:
        typer.echo("no accepted batches")
        return
    import time

    typer.echo(f"{'batch':<28} {'accepted (UTC)':<17} {'rows':>6}  path")
    for b in batches:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["accepted_at"])) if b.get("accepted_at") else "-"
        rows = "-" if b.get("rows") is None else str(b["rows"])
        typer.echo(f"{b['id']:<28} {when:<17} {rows:>6}  {b['path']}")


@monitor_app.command("reject")
def monitor_reject(batch: str = typer.Argument(..., help="batch id (or name) from `lepton monitor accepted`")):
    """Take an accepted batch off the list, so no retrain folds it in (it is not accepted again)."""
    from effects.state import monitor_state
    from effects.runtime.settings import configure_environment

    b = monitor_state.reject_batch(configure_environment(use_stack=False), batch)
    typer.echo(f"rejected {b['id']}: the next retrain will not fold it in ({b['path']})")


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    alias: str = typer.Option("champion", "--alias", help="the alias to serve; the server follows it as it moves"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8000, "--port", help="port to listen on", min=1, max=65535),
    token: Optional[str] = typer.Option(
        None, "--token", help="require this bearer token on /v1/* (default: LEPTON_SERVE_TOKEN; none = open)",
        show_default=False),
    variant: str = typer.Option(
        "torch", "--variant", help="torch | onnx | int8: serve the alias's PyTorch model or its ONNX variant "
        "(@ALIAS-onnx, @ALIAS-int8, made by `lepton optimize`) through ONNX Runtime"),
    set_: List[str] = SetOpt,
    params_file: Optional[Path] = ParamsOpt,
):
    """Serve the model version behind an alias over HTTP (batched; hot-swaps when the alias moves)."""
    if variant not in ("torch", "onnx", "int8"):
        raise typer.BadParameter(f"{variant!r} is not one of torch, onnx, int8", param_hint="--variant")
    from effects.runtime.settings import configure_environment
    from effects.runtime.procs import port_free

    s = configure_environment()
    params = _params(params_file, list(set_), s)
    if not port_free(port) and host in ("127.0.0.1", "localhost"):
        raise LeptonError(f"port {port} is already in use; choose another with --port")
    import uvicorn

    from lepton.serve import ModelServer, create_app

    alias = alias if variant == "torch" else f"{alias}-{variant}"
    server = ModelServer(model or params.registry.model_name, alias, params.serve, s, token or s.serve_token)
    typer.echo(f"serving {server.model_name}@{alias} on http://{host}:{port}  (POST /v1/predict; "
               f"auth {'on' if server.token else 'off'}; prediction log {server.log.folder})", err=True)
    uvicorn.run(create_app(server), host=host, port=port, log_level="warning", workers=1)


@app.command()
def predict(
    data: Path = typer.Argument(..., help="a file or folder of raw samples (any format the loaders read)"),
    out: Path = typer.Option(..., "--out", help="parquet file for the predictions"),
    fmt: Optional[str] = typer.Option(None, "--format", help=f"{'|'.join(FORMATS)} (default: detected)"),
    model: Optional[str] = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    alias: str = typer.Option("champion", "--alias", help="the alias whose version scores"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    params_file: Optional[Path] = ParamsOpt,
):
    """Score a file or folder offline with the champion (labels, class names, probabilities)."""
    if fmt is not None and fmt not in FORMATS:
        raise ParamsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    params = _params(params_file, [], s)
    from effects.serving.batch_scoring import score_data

    r = score_data(data.resolve(), fmt, out.resolve(), model or params.registry.model_name, alias,
                   progress=progress, settings=s)
    acc = f", accuracy {r['accuracy']:.4f} against the labels in the data" if "accuracy" in r else ""
    typer.echo(f"scored {r['rows']} samples with {r['model']} v{r['version']} ({r['quarantined']} quarantined)"
               f"{acc} -> {r['out']}")


@data_app.command("restore")
def data_restore(
    version: str = typer.Argument(..., help="data version (DVC md5, from `lepton status`)"),
    to: Path = typer.Option(..., "--to", help="folder to restore into (new or empty)"),
):
    """Restore a past data version from the DVC remote."""
    from effects.runtime.settings import configure_environment

    s = configure_environment()
    from effects.data.dvc_store import restore_dataset

    path = restore_dataset(version, to, s)
    n = sum(1 for p in path.rglob("*") if p.is_file())
    typer.echo(f"restored data version {version} to {path} ({n} files)")


def _exit_now(code: int | str | None) -> NoReturn:
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


def main() -> None:
    """Entry point: user errors end in one line on stderr and a non-zero exit."""
    try:
        _dispatch()
    except SystemExit as e:
        _exit_now(e.code)
    _exit_now(0)


def _dispatch() -> None:
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
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # a usage error from typer's own copy of click (e.g. a port out of range)
            sys.exit(e.exit_code)
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


if __name__ == "__main__":
    main()
