"""The shape of the `lepton` command (lepton/cli/): every command and its help, the
console script, a fast `--help` (no Prefect, MLflow or torch imported), small
functions, and params sections passed to flows by name from the Params model."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from lepton.cli import app, options
from lepton_core.params import Params

CLI = Path(__file__).resolve().parents[2] / "lepton" / "cli"
COMMANDS = [
    "demo",
    "retrain",
    "sweep",
    "reproduce",
    "status",
    "versions",
    "compare",
    "promote",
    "rollback",
    "optimize",
    "up",
    "down",
    "env",
    "certs",
    "deploy",
    "simulate-drift",
    "serve",
    "predict",
    "explain",
]
GROUPS = {"data": ["restore"], "monitor": ["check", "accepted", "reject"], "alerts": ["test"]}


def test_the_commands_in_the_order_help_lists_them():
    assert [c.name for c in app.registered_commands] == COMMANDS
    assert {g.name: [c.name for c in g.typer_instance.registered_commands] for g in app.registered_groups} == GROUPS


def test_the_console_script_is_lepton_cli_main():
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "lepton"]
    assert ep.value == "lepton.cli:main"


@pytest.mark.parametrize(
    "args", [[], *([c] for c in COMMANDS), *([g] for g in GROUPS), *([g, c] for g, cs in GROUPS.items() for c in cs)]
)
def test_help_of_every_command_imports_nothing_heavy(args):
    code = (
        "import sys\nfrom lepton.cli import app\n"
        "try:\n    app([*sys.argv[1:], '--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'prefect', 'boto3', 'dvc', 'evidently') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"


def test_no_function_over_80_lines():
    long = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.name}:{node.name} ({n} lines)")
    assert not long


def test_sections_are_what_the_flow_takes_by_name():
    params = Params()

    def a_flow(data, train, sweep=None, progress=True):
        pass

    assert options.sections(a_flow, params) == {"data": params.data, "train": params.train, "sweep": params.sweep}

    class Wrapped:  # a Prefect Flow keeps the function as .fn
        fn = staticmethod(a_flow)

    assert list(options.sections(Wrapped(), params)) == ["data", "train", "sweep"]

    def every(**kw):  # only named parameters count
        pass

    assert options.sections(every, params) == {}
