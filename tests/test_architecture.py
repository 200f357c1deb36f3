"""The layers hold: import-linter's contracts pass on the tree, and fail on an
upward import or a cycle (checked on a copy, so the tree itself is never edited)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lepton", "flows", "tasks", "effects", "lepton_core")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(exe), "--config", str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "6 kept, 0 broken" in r.stdout


@pytest.fixture()
def tree_copy(tmp_path):
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("lepton_core/evaluate.py", "import effects.runtime.settings", "Layers"),  # core -> effects: upward
        ("effects/training/stages.py", "import tasks.train", "Layers"),  # effects -> tasks: upward
        ("lepton_core/gate.py", "import mlflow", "The core imports no"),
        ("effects/tracking/plots.py", "import prefect", "Effects run without Prefect"),
        ("effects/training/stages.py", "import effects.tracking.runs", "dvc repro stages"),  # would pull in MLflow
        ("effects/runtime/locks.py", "from effects.state import monitor_state", "No import cycles"),
        ("effects/runtime/procs.py", "from effects.runtime import settings", "No import cycles"),  # inside one room
        # the rooms of effects/: runtime < state < data < tracking < training | serving < monitoring
        ("effects/runtime/locks.py", "import effects.tracking.runs", "Effects rooms point down"),
        ("effects/data/dvc_store.py", "import effects.monitoring.monitor", "Effects rooms point down"),
        ("effects/training/stages.py", "import effects.serving.prediction_log", "Effects rooms point down"),  # siblings
    ],
)
def test_a_violation_breaks_a_contract(tree_copy, module, line, broken):
    f = tree_copy / module
    f.write_text(f.read_text() + f"\n\ndef _violation():\n    {line}  # inside a function still counts\n")
    r = _lint(tree_copy)
    assert r.returncode != 0
    assert any(broken in ln and ln.endswith("BROKEN") for ln in r.stdout.splitlines()), r.stdout[-3000:]


def _decorators(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        for d in getattr(node, "decorator_list", []):
            target = d.func if isinstance(d, ast.Call) else d
            names.add(target.id if isinstance(target, ast.Name) else getattr(target, "attr", ""))
    return names


@pytest.mark.parametrize("folder, decorator", [("tasks", "task"), ("flows", "flow")])
def test_tasks_and_flows_hold_only_their_kind(folder, decorator):
    modules = [p for p in sorted((ROOT / folder).glob("*.py")) if p.name != "__init__.py"]
    assert modules
    without = [p.name for p in modules if decorator not in _decorators(p)]
    assert not without, f"{folder}/ modules without a @{decorator}: {without}"
