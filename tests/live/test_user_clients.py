"""A user's own clients against the stack (auth on): after `eval "$(lepton env)"`,
Prefect's CLI runs the `retrain/lepton` deployment to completion and the MLflow SDK
lists its run. Runs last on the package's SQLite stack, so the deployment runs the
other modules count are untouched."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = """
set -euo pipefail
eval "$(lepton env)"
prefect deployment run retrain/lepton --params '{"train": {"epochs": 2, "width": 16}}' \\
  --watch --watch-timeout 900 > prefect-run.txt
python - <<'EOF'
import mlflow
runs = mlflow.search_runs(experiment_names=["lepton"], output_format="list", max_results=1000)
ids = sorted(r.data.tags.get("lepton.prefect_flow_run_id", "") for r in runs)
print("runs", len(runs), "flow-runs", " ".join(ids))
EOF
"""


def test_prefect_cli_runs_retrain_and_the_mlflow_sdk_lists_its_run(live_sqlite, tmp_path):
    live = live_sqlite
    r = live.cli("deploy")
    assert r.returncode == 0, r.stderr[-3000:]
    # a user's shell: nothing of the stack's credentials in it but what `lepton env` prints
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_", "LEPTON_"))}
    env.update({"LEPTON_HOME": live.env["LEPTON_HOME"], "LEPTON_PROJECT_DIR": str(ROOT), "PATH": live.env["PATH"]})
    r = subprocess.run(["bash", "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    watched = (tmp_path / "prefect-run.txt").read_text()
    assert "Completed" in watched, watched[-2000:]
    flow_run_id = next(ln.split()[-1] for ln in watched.splitlines() if "UUID" in ln)
    assert flow_run_id in r.stdout.split("flow-runs", 1)[1].split(), r.stdout
    # and without `lepton env` the same client is refused, saying so
    bare = subprocess.run(
        ["prefect", "deployment", "ls"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PREFECT_API_URL": live.prefect_api},
    )
    assert bare.returncode != 0
