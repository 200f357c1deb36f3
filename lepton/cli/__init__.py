"""The `lepton` command line (console script `lepton = "lepton.cli:main"`).

One module per group of commands: training (demo, retrain, sweep), registry
(promote, rollback, optimize), platform (up, down, status, env, deploy),
monitoring (monitor, simulate-drift), serving (serve, predict), data (data
restore), alerts (alerts test). `options` holds what they share (params, --set, --json, the setup before
a flow, how the process ends), `render` every line they print for a person,
`services` the quick check that a needed service answers.

Heavy imports (Prefect, MLflow, torch) happen inside the commands, after the
environment is configured, so `lepton --help` is instant and settings apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from lepton.cli import alerts, data, explain, monitoring, platform, registry, reproduce, serving, training, versions
from lepton.cli.options import run_main

app = typer.Typer(
    name="lepton",
    help="Lepton: versioned data -> PyTorch training -> MLflow registry -> promotion gate, as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# In the order `lepton --help` lists them.
_COMMANDS: list[tuple[str, Callable[..., Any]]] = [
    ("demo", training.demo),
    ("retrain", training.retrain),
    ("sweep", training.sweep),
    ("reproduce", reproduce.reproduce),
    ("status", platform.status),
    ("versions", versions.versions),
    ("compare", versions.compare),
    ("promote", registry.promote),
    ("rollback", registry.rollback),
    ("optimize", registry.optimize),
    ("up", platform.up),
    ("down", platform.down),
    ("env", platform.env),
    ("certs", platform.certs),
    ("deploy", platform.deploy),
    ("simulate-drift", monitoring.simulate_drift),
    ("serve", serving.serve),
    ("predict", serving.predict),
    ("explain", explain.explain),
]
for _name, _command in _COMMANDS:
    app.command(_name)(_command)
app.add_typer(data.data_app, name="data")
app.add_typer(monitoring.monitor_app, name="monitor")
app.add_typer(alerts.alerts_app, name="alerts")


def main() -> None:
    """Entry point: user errors end in one line on stderr and a non-zero exit."""
    run_main(app)


if __name__ == "__main__":
    main()
