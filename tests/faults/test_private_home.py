"""Lepton's state is its user's alone: after a local retrain (no stack), the home is
0700 and nothing under it is readable by the group or others (databases, datasets,
checkpoints, the DVC remote, logs)."""

from __future__ import annotations

import pytest

from tests.conftest import lepton_env_vars, make_project, run_cli

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_a_local_retrain_leaves_nothing_readable_by_others(tmp_path):
    make_project(tmp_path / "project")
    env = lepton_env_vars(tmp_path)
    env["LEPTON_DVC_REMOTE"] = str(tmp_path / "home" / "dvc-remote")  # inside the home, as by default
    r = run_cli(
        [
            "retrain",
            "--set",
            "data.format=digits",
            "--set",
            "data.path=null",
            "--set",
            "train.epochs=1",
            "--set",
            "train.width=8",
            "--no-progress",
        ],
        env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "registry        local sqlite " in r.stdout
    home = tmp_path / "home"
    assert (home.stat().st_mode & 0o777) == 0o700
    for name in ("mlflow.db", "datasets", "checkpoints", "dvc-remote"):
        assert (home / name).exists(), name
    open_to_others = [
        f"{oct(p.lstat().st_mode & 0o777)} {p.relative_to(home)}"
        for p in home.rglob("*")
        if not p.is_symlink()
        and p.lstat().st_mode & 0o077
        and not _kept_by_its_tool(p.relative_to(home), p.lstat().st_mode & 0o777)
    ]
    assert not open_to_others, open_to_others[:20]


def _kept_by_its_tool(rel, mode: int) -> bool:
    """Three kinds of file get their mode from their tool, not the umask; all lie
    behind the 0700 home (and 0700 folders), so no other user can reach them: DVC's
    content-addressed objects (cache and local remote), which DVC makes read-only
    (0444) to protect them; the project's source files MLflow copies into a logged
    model (code_paths, the python_model file) with the modes they have in the
    checkout; and SeaweedFS's volume info files (.vif: version and replication of a
    volume, no object data), which it writes 0644 whatever the umask (its .dat and
    .idx files, the objects, follow the umask: 0600)."""
    dvc_object = mode == 0o444 and "files" in rel.parts and "md5" in rel.parts
    source_copy = rel.parts[0] == "mlartifacts" and ("code" in rel.parts or rel.suffix == ".py")
    volume_info = rel.parts[:2] == ("stack", "seaweedfs") and rel.suffix == ".vif" and mode == 0o644
    return dvc_object or source_copy or volume_info
