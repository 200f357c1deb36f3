"""The data task's functions with tmp_path: DVC versioning, restore from the
remote, cache keys."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from lepton_core.errors import DataError
from lepton_core.params import DataParams
from tests.conftest import lepton_env_vars, make_project


@pytest.fixture()
def settings(tmp_path, monkeypatch):
    from effects.runtime.settings import get_settings

    make_project(tmp_path / "project")
    for k, v in lepton_env_vars(tmp_path).items():
        monkeypatch.setenv(k, v)
    return get_settings()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _write_csv(path: Path, n: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + y[:, None]
    rows = ["f0,f1,f2,f3,label"] + [",".join(f"{v:.5f}" for v in r) + f",c{t}" for r, t in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_version_is_the_dvc_hash_and_is_reproducible(settings):
    from effects.data.dvc_store import version_dataset

    a = version_dataset(DataParams(), settings)
    assert len(a.version) == 32 and f"md5: {a.version}.dir" in a.dvc_file
    # pushed to the remote: DVC's content-addressed layout under files/md5/
    remote = Path(settings.dvc_remote)
    assert (remote / "files" / "md5" / a.version[:2] / (a.version[2:] + ".dir")).exists()
    b = version_dataset(DataParams(), settings)
    assert b.version == a.version  # same raw data + params -> same bytes -> same version
    c = version_dataset(DataParams(seed=1), settings)
    assert c.version != a.version
    assert a.meta["input_shape"] == [1, 8, 8] and a.meta["n_classes"] == 10
    assert a.report["kept"] == sum(a.meta["counts"].values())


def test_restore_from_remote_only_is_byte_identical(settings, tmp_path):
    from effects.data.dvc_store import restore_dataset, version_dataset

    csv = _write_csv(tmp_path / "table.csv")
    v = version_dataset(DataParams(format="csv", path=str(csv)), settings)
    original = _digest(settings.datasets_dir / v.version)
    # Lose every local copy: the DVC cache, the working copy, the read-only copy.
    shutil.rmtree(settings.data_repo)
    shutil.rmtree(settings.datasets_dir)
    out = restore_dataset(v.version, tmp_path / "back", settings)
    assert _digest(out) == original
    with pytest.raises(DataError, match="not empty"):
        restore_dataset(v.version, out, settings)


def test_restore_rejects_bad_and_unknown_versions(settings, tmp_path):
    from effects.data.dvc_store import restore_dataset, version_dataset

    version_dataset(DataParams(), settings)
    with pytest.raises(DataError, match="not a data version"):
        restore_dataset("xyz", tmp_path / "a", settings)
    with pytest.raises(DataError, match="could not be restored"):
        restore_dataset("0" * 32, tmp_path / "b", settings)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_dataset_path_restores_a_missing_copy(settings):
    from effects.data.dvc_store import dataset_path, version_dataset

    v = version_dataset(DataParams(), settings)
    original = _digest(settings.datasets_dir / v.version)
    shutil.rmtree(settings.datasets_dir / v.version)
    assert _digest(dataset_path(v.version, settings)) == original


def test_prepare_fingerprint_follows_the_bytes(settings, tmp_path):
    from lepton_core.data.fingerprint import prepare_fingerprint

    csv = _write_csv(tmp_path / "t.csv")
    p = DataParams(format="csv", path=str(csv))
    a = prepare_fingerprint(p)
    assert prepare_fingerprint(p) == a
    _write_csv(csv, seed=1)
    assert prepare_fingerprint(p) != a
    assert prepare_fingerprint(DataParams(format="csv", path=str(csv), seed=3)) != prepare_fingerprint(p)
    assert prepare_fingerprint(p, extra_ids=["batch-1"]) != prepare_fingerprint(p)
    with pytest.raises(DataError):
        prepare_fingerprint(DataParams(format="csv", path=str(tmp_path / "missing.csv")))


def test_prepare_stage_quarantines_instead_of_crashing(settings, tmp_path):
    from lepton_core.data.prepare import prepare_from_params as prepare_stage

    csv = _write_csv(tmp_path / "t.csv")
    text = csv.read_text().splitlines()
    text[3] = "nan,1,2,3,c1"
    text[4] = "inf,1,2,3,c2"
    csv.write_text("\n".join(text) + "\n")
    report = prepare_stage(DataParams(format="csv", path=str(csv)), tmp_path / "out")
    assert report["quarantined_by_reason"] == {"NaN or inf value": 2}
    assert (tmp_path / "out" / "x_train.npy").exists()
