"""`lepton up`, `down`, `status`, `env`, `deploy`: the live stack, what it serves, and
the Prefect deployments that run on it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import ParamsOpt, SetOpt, echo_json, echo_lines, load_params
from lepton_core.errors import LeptonError

STATUS_TIMEOUT_S = 10  # a request of `lepton status` to MLflow: it is a health check


def _port_option(name: str, default: int):
    return typer.Option(
        None,
        f"--{name}-port",
        help=f"{name} port (default {default}, or LEPTON_{name.upper()}_PORT)",
        show_default=False,
        min=1,
        max=65535,
    )


PORT_OPTS = {
    name: _port_option(name, default)
    for name, default in (("prefect", 4200), ("mlflow", 5000), ("s3", 8333), ("serve", 8000))
}


def up(
    db: str | None = typer.Option(
        None, "--db", help="postgresql://USER@HOST:PORT/NAME for both servers (default: SQLite; or LEPTON_DB_URL)"
    ),
    prefect_port: int | None = PORT_OPTS["prefect"],
    mlflow_port: int | None = PORT_OPTS["mlflow"],
    s3_port: int | None = PORT_OPTS["s3"],
    serve_port: int | None = PORT_OPTS["serve"],
    serve_workers: int | None = typer.Option(
        None,
        "--serve-workers",
        help="model server processes behind its port (default: serve.workers of params.yaml); "
        "a running model server keeps its count until it is restarted",
        min=1,
        max=256,
        show_default=False,
    ),
    sse: str | None = typer.Option(
        None,
        "--sse",
        metavar="AES256|aws:kms|none",
        help="server-side encryption asked for on every S3 write (default: LEPTON_S3_SSE, else as at the last up)",
    ),
    auth: bool | None = typer.Option(
        None,
        "--auth/--no-auth",
        help="authentication on S3, SeaweedFS's own ports, MLflow and Prefect, or none (default: as at the "
        "last up, else on; credentials in <home>/stack/credentials.json, certificates in <home>/stack/tls)",
        show_default=False,
    ),
    accept_data_loss: bool = typer.Option(
        False,
        "--accept-data-loss",
        help="go on when the store has lost what was written to it (its sentinel is gone): write a new sentinel",
    ),
    alert_webhook: str | None = typer.Option(
        None,
        "--alert-webhook",
        metavar="URL",
        help="where notifications go (Slack-compatible or generic JSON webhook; kept with the stack's secrets, "
        "default: LEPTON_ALERT_WEBHOOK, else the last one given; 'none' forgets it)",
        show_default=False,
    ),
):
    """Start the live stack: S3 store, MLflow server, Prefect server, a worker and the model server
    (and Prometheus, Alertmanager and Evidently's UI where they are installed)."""
    from effects.runtime.settings import configure_environment, redact_uri
    from effects.runtime.stack_state import set_alert_webhook
    from lepton import stack

    # bounded=False: the worker started here inherits this environment, and its flow
    # runs (long, unattended) keep the clients' own patient retries
    s = configure_environment(use_stack=False, bounded=False)
    if alert_webhook is not None:
        set_alert_webhook(s.home, _webhook_url(alert_webhook))
    state = stack.up(
        s,
        db,
        {
            "prefect": prefect_port or s.ports.get("prefect"),
            "mlflow": mlflow_port or s.ports.get("mlflow"),
            "s3": s3_port or s.ports.get("s3"),
            "serve": serve_port or s.ports.get("serve"),
        },
        echo=lambda m: typer.echo(m, err=True),
        sse=sse,
        auth=auth,
        accept_data_loss=accept_data_loss,
        serve_workers=serve_workers,
    )
    urls = dataclasses.asdict(stack.urls(state))
    backend = redact_uri(state["db_url"]) if state["db_url"] else ""
    echo_lines(render.up_summary(state, urls, str(stack.stack_dir(s.home)), backend))


def _webhook_url(url: str) -> str | None:
    """`--alert-webhook`'s value checked: an http(s) URL with a host, or 'none'."""
    from urllib.parse import urlsplit

    if url.strip().lower() == "none":
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LeptonError("--alert-webhook: give an http:// or https:// URL with a host (or 'none')")
    return url.strip()


def down():
    """Stop what `lepton up` started (by PID). Data, runs and models stay."""
    from effects.runtime.settings import configure_environment
    from lepton import stack

    typer.echo(render.down_line(stack.down(configure_environment(use_stack=False))))


def certs(
    folder: Path = typer.Argument(
        ..., metavar="DIR", help="folder for the files (made 0700 when missing; an existing one keeps its mode)"
    ),
):
    """Make a CA and the certificates of SeaweedFS's internal ports (for infra/'s Secret).

    Writes ca.crt and ca.key, and NAME.crt and NAME.key for master, volume, filer, s3
    and client: what `lepton up` makes under <home>/stack/tls (keys 0600). Valid files
    already there are kept. `lepton up` needs none of this: it makes its own."""
    from lepton import weed

    if not str(folder).strip() or folder == Path():
        raise LeptonError("DIR: name a folder of its own (for example infra/seaweedfs-tls)")
    made = weed.certs_in(folder)
    typer.echo(f"{folder}: {', '.join(p.name for pair in made.values() for p in pair)}")
    typer.echo("keep ca.key out of the cluster: the Secret needs ca.crt and the five pairs", err=True)


def status(
    as_json: bool = typer.Option(False, "--json", help="one JSON object (for scripts and CI)"),
    model: str | None = typer.Option(None, help="registered model (default: registry.model_name)"),
    params_file: Path | None = ParamsOpt,
):
    """Show the champion and previous versions of the registered model."""
    from effects.runtime.settings import StackDown, configure_environment, registry_label
    from lepton import stack
    from lepton.cli.services import require

    s = configure_environment(allow_down=True, timeout=STATUS_TIMEOUT_S)
    name = model or load_params(params_file, [], s).registry.model_name
    services = stack.health(s)
    sick = [svc for svc, h in services.items() if not h["healthy"] and not h.get("optional")] if s.stack else []
    for svc in (svc for svc, h in services.items() if h.get("optional") and h["running"] and not h["healthy"]):
        typer.echo(f"{svc} is not healthy ({services[svc]['url']}); `lepton up` restarts it", err=True)
    for svc in (svc for svc, h in services.items() if h.get("optional") and not h["running"] and h["url"]):
        typer.echo(f"{svc} is down ({services[svc]['url']}); `lepton up` starts it again", err=True)
    if sick:  # a configured stack with a service down: say which, never show local state
        if as_json:
            echo_json({"services": services, "registry": None})
        else:
            echo_lines(render.services_table(services))
        h = services[sick[0]]
        if h.get("problem"):
            raise StackDown(f"{sick[0]}: {h['problem']} ({h['url']}); `lepton up` says what to do")
        raise StackDown(
            f"the stack's {sick[0]} is {'not healthy' if h['running'] else 'down'} ({h['url']}); "
            "run `lepton up` to start it again"
        )
    require(s, ("mlflow",))
    from effects.tracking.registry import registry_status

    st = registry_status(name, s)
    alerts = _alert_failures(s, services)
    if as_json:
        extra = {**({"services": services} if services else {}), **({"alerts": alerts} if alerts else {})}
        echo_json({**st, "registry": registry_label(s), **extra})
        return
    echo_lines(render.services_table(services))
    echo_lines([render.alert_failures_line(alerts)] if alerts else [])
    echo_lines(render.registry_table(st, registry_label(s)))
    echo_lines(render.report_lines(st))


def _alert_failures(s, services: dict) -> dict | None:
    """Notifications of the last day that did not reach the alert webhook, from the
    stack's Prefect server (one quick request; None when all went through)."""
    if not (services.get("prefect") or {}).get("healthy") or not s.prefect_api_url:
        return None
    from lepton.alerts import delivery_failures

    return delivery_failures(s.prefect_api_url, os.environ.get("PREFECT_API_AUTH_STRING"))


def _local_env(s) -> dict[str, str]:
    """Without a stack: what Lepton's own commands use here, the user's variables over
    the embedded defaults (the local SQLite registry)."""
    from effects.runtime.stack_state import USER_ENV

    env = {k: os.environ[k] for k in USER_ENV if os.environ.get(k)}
    env["MLFLOW_TRACKING_URI"] = s.tracking_uri
    if s.prefect_api_url and not s.prefect_temporary:
        env["PREFECT_API_URL"] = s.prefect_api_url
    if s.s3_endpoint_url:
        env.update(LEPTON_S3_ENDPOINT_URL=s.s3_endpoint_url, AWS_ENDPOINT_URL=s.s3_endpoint_url)
    return {k: env[k] for k in USER_ENV if k in env}


def env(as_json: bool = typer.Option(False, "--json", help="print the variables as one JSON object")):
    """Print shell exports of the stack's addresses and credentials: eval "$(lepton env)".

    Your own clients then reach the stack with authentication on: mlflow and prefect
    (MLFLOW_TRACKING_*, PREFECT_API_*), the AWS CLI and SDKs (AWS_ENDPOINT_URL, AWS_*),
    curl to the model server ($LEPTON_SERVE_URL with $LEPTON_SERVE_TOKEN as bearer
    token). Without a stack: the local defaults, and a note on stderr."""
    from effects.runtime import stack_state
    from effects.runtime.settings import get_settings

    s = get_settings()
    state = stack_state.configured(s.home)
    if state is None:
        values = _local_env(s)
        notes = render.env_notes(False, differing=[k for k in values if os.environ.get(k)])
    else:
        values = stack_state.user_env(s.home, state)
        differing = [k for k, v in values.items() if os.environ.get(k) not in (None, v)]
        notes = render.env_notes(True, stack_state.dead(state), differing)
    echo_lines(notes, err=True)
    if as_json:
        echo_json(values)
    else:
        echo_lines(render.env_exports(values))


def deploy(
    params_file: Path | None = ParamsOpt,
    set_: list[str] = SetOpt,
    write_prefect_yaml: Path | None = typer.Option(
        None,
        "--write-prefect-yaml",
        metavar="FILE",
        help="write the same deployments as a prefect.yaml (for `prefect deploy --all`) and stop",
    ),
    pool_type: str = typer.Option(
        "process",
        "--pool-type",
        metavar="TYPE",
        help="process, or kubernetes: flow runs as Jobs; retrain asks for params.deploy's gpus, memory, cpu",
    ),
    pool: str | None = typer.Option(None, "--pool", help="work pool name (default: LEPTON_WORK_POOL or lepton)"),
    base_job_template: Path | None = typer.Option(
        None,
        "--base-job-template",
        metavar="FILE",
        help="template of a new kubernetes pool (default: infra/work-pools/kubernetes.json)",
    ),
):
    """Register the retrain (scheduled), promote, rollback and monitor deployments and the drift trigger."""
    from effects.runtime.settings import configure_environment
    from lepton.deploy import POOL_TYPES

    if pool_type not in POOL_TYPES:
        raise LeptonError(f"--pool-type {pool_type!r}: one of {', '.join(POOL_TYPES)}")
    if write_prefect_yaml is not None:
        _write_prefect_yaml(write_prefect_yaml, params_file, list(set_), pool, pool_type)
        return
    s = configure_environment()
    if not s.prefect_api_url:
        raise LeptonError("no Prefect server: run `lepton up` first (or set PREFECT_API_URL)")
    params = load_params(params_file, list(set_), s)
    from lepton.cli.services import require

    require(s, ("prefect",))
    import prefect  # noqa: F401

    from lepton.deploy import (
        CRASH_RETRIES,
        LOST_RUNS_AUTOMATION,
        RETRY_CRASHED_AUTOMATION,
        deploy_all,
        load_base_job_template,
    )

    template = load_base_job_template(base_job_template) if pool_type == "kubernetes" else None
    ids = deploy_all(params, str(s.project_dir), pool or s.work_pool, pool_type, template)
    automation = ids.pop("automation")
    recovery = [k for k in (LOST_RUNS_AUTOMATION, RETRY_CRASHED_AUTOMATION) if ids.pop(k, None)]
    notify = _deploy_notifications(s, list(ids.values()), CRASH_RETRIES)
    echo_lines(
        render.deploy_summary(
            ids,
            automation,
            recovery,
            CRASH_RETRIES,
            deploy=params.deploy.model_dump(),
            monitor_cron=params.monitor.cron,
            pool=pool or s.work_pool,
            pool_type=pool_type,
        )
        + notify
    )


def _deploy_notifications(s, deployment_ids: list[str], crash_retries: int) -> list[str]:
    """The alert webhook's block and notification automations (lepton.alerts),
    replaced on every deploy; none without a webhook. The lines that say so."""
    from effects.runtime.stack_state import alert_webhook
    from lepton.alerts import alert_format, ensure_notifications
    from lepton_core.alerts import redact_url

    url = alert_webhook(s.home)
    ui = (s.prefect_api_url or "").removesuffix("/api")
    names = list(ensure_notifications(url, deployment_ids, ui, crash_retries))
    return render.alert_deploy_lines(redact_url(url) if url else None, alert_format(url) if url else None, names)


def _write_prefect_yaml(
    path: Path, params_file: Path | None, overrides: list[str], pool: str | None, pool_type: str
) -> None:
    from effects.runtime.settings import configure_environment
    from lepton.deploy import render_prefect_yaml
    from lepton_core.fileio import atomic_write

    s = configure_environment(use_stack=False)
    atomic_write(path, render_prefect_yaml(load_params(params_file, overrides, s), pool or s.work_pool, pool_type))
    typer.echo(render.wrote_line(path))
