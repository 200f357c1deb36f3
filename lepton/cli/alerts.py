"""`lepton alerts test`: one test notification to the alert webhook (lepton.alerts)."""

from __future__ import annotations

import typer

from lepton.cli import render

alerts_app = typer.Typer(help="Notifications to the alert webhook (docs/alerts.md).", no_args_is_help=True)


@alerts_app.command("test")
def alerts_test():
    """Send one test notification to the alert webhook and say where it went.

    The webhook: LEPTON_ALERT_WEBHOOK, else the one `lepton up --alert-webhook URL`
    kept with the stack's secrets. Exit 2 when none is set, 1 when it refuses the
    notification, times out or cannot be reached."""
    from effects.runtime.settings import get_settings
    from effects.runtime.stack_state import alert_webhook
    from lepton.alerts import DeliveryFailed, alert_format, send_test
    from lepton_core.alerts import redact_url
    from lepton_core.errors import LeptonError

    url = alert_webhook(get_settings().home)
    if not url:
        raise LeptonError("no alert webhook: give one with `lepton up --alert-webhook URL` or set LEPTON_ALERT_WEBHOOK")
    try:
        status = send_test(url)
    except DeliveryFailed as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render.alert_test_line(redact_url(url), alert_format(url), status))
