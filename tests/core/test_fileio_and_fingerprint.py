"""Crash-safe writes, and the prepare cache key that follows the prepare code."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lepton_core.data.fingerprint import PREPARE_CODE_DIR, code_hash, prepare_code_files, prepare_fingerprint
from lepton_core.fileio import atomic_write, publish_dir
from lepton_core.params import DataParams

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_write_replaces_whole_and_cleans_up_on_error(tmp_path):
    p = atomic_write(tmp_path / "a" / "f.txt", "one")
    assert p.read_text() == "one" and oct(p.stat().st_mode & 0o777) == "0o644"
    atomic_write(p, b"two", mode=0o600)
    assert p.read_bytes() == b"two" and p.stat().st_mode & 0o777 == 0o600

    def boom(f):
        f.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_bytes() == b"two"
    assert sorted(os.listdir(p.parent)) == ["f.txt"]  # no temporary left behind


def test_publish_dir_swaps_or_keeps_and_never_leaves_half(tmp_path):
    dst = tmp_path / "v"
    publish_dir(dst, lambda t: (t / "x").write_text("1"))
    publish_dir(dst, lambda t: (t / "x").write_text("2"), replace=False)
    assert (dst / "x").read_text() == "1"
    publish_dir(dst, lambda t: (t / "y").write_text("3"))
    assert sorted(os.listdir(dst)) == ["y"]

    def boom(t):
        (t / "z").write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        publish_dir(dst, boom)
    assert sorted(os.listdir(dst)) == ["y"] and sorted(os.listdir(tmp_path)) == ["v"]


def test_cache_key_changes_when_the_prepare_code_changes(tmp_path):
    """Nothing in the tree is edited: the code files are copied, one copy changes."""
    copies = []
    for f in prepare_code_files():
        copies.append(Path(shutil.copy(f, tmp_path / f.name)))
    assert code_hash(copies) == code_hash()  # the copies hash like the originals
    p = DataParams()
    before = prepare_fingerprint(p, code=code_hash(copies))
    assert before == prepare_fingerprint(p)
    prepare = tmp_path / "prepare.py"
    prepare.write_text(prepare.read_text() + "\n# an edit to the prepare code\n")
    assert prepare_fingerprint(p, code=code_hash(copies)) != before


def test_dvc_prepare_stage_depends_on_the_code_the_key_hashes():
    import yaml

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]
    assert PREPARE_CODE_DIR.relative_to(ROOT).as_posix() in stage["deps"]
    assert "import prefect" not in (ROOT / "lepton/stages.py").read_text()
