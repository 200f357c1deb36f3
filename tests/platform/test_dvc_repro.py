"""`dvc repro` runs prepare -> train -> evaluate from params.yaml without Prefect,
through the same stage functions, and lands on the same data version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, lepton_env_vars, make_project, run_cli

pytestmark = pytest.mark.slow


def test_dvc_repro_on_default_params_then_restore(tmp_path):
    project = make_project(tmp_path / "project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / ".dvc", project / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    for pkg in ("lepton_core", "effects", "tasks", "flows", "lepton"):
        shutil.copytree(ROOT / pkg, project / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc"]

    # Prefect and MLflow made unimportable: shadow packages that raise on import.
    blocker = tmp_path / "blocker"
    for name in ("prefect", "mlflow"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked for dvc repro')\n")
    blocked = {**env, "PYTHONPATH": str(blocker)}
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], env=blocked, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the block works

    r = subprocess.run([*dvc, "repro"], cwd=project, env=blocked, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((project / "metrics" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.95
    assert (project / "metrics" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert lock["stages"]["prepare"]["params"]["params.yaml"]["data"]["format"] == "digits"

    # Nothing changed: a second repro reruns only prepare (always_changed: the
    # monitor's accepted batches live in LEPTON_HOME), which lands on the same bytes,
    # so train and evaluate are skipped and dvc.lock stays byte-identical.
    lock_before = (project / "dvc.lock").read_bytes()
    r = subprocess.run([*dvc, "repro"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Stage 'train' didn't change, skipping" in r.stdout, r.stdout
    assert "Stage 'evaluate' didn't change, skipping" in r.stdout, r.stdout
    assert (project / "dvc.lock").read_bytes() == lock_before
    r = subprocess.run([*dvc, "status"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "train" not in r.stdout and "evaluate" not in r.stdout, r.stdout

    # Push to the project's default remote (<project>/.lepton/dvc-remote), the same
    # remote `lepton` uses, and restore that version by its id with `lepton data restore`.
    r = subprocess.run([*dvc, "push"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lenv = {
        **lepton_env_vars(tmp_path),
        "LEPTON_HOME": str(project / ".lepton"),
        "LEPTON_DVC_REMOTE": str(project / ".lepton" / "dvc-remote"),
    }
    version = prepared_md5.removesuffix(".dir")
    r = run_cli(["data", "restore", version, "--to", str(tmp_path / "restored")], lenv, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in (project / "data" / "prepared").iterdir():
        assert (tmp_path / "restored" / f.name).read_bytes() == f.read_bytes()

    # The Prefect path versions the same bytes under the same id.
    from effects.data.dvc_store import version_dataset
    from lepton_core.params import DataParams

    old = dict(os.environ)
    try:
        os.environ.update(lenv)
        assert version_dataset(DataParams()).version == version
    finally:
        os.environ.clear()
        os.environ.update(old)
