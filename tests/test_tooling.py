"""The checks `make lint` and the git hook run, shown to catch what they are for:
each is run on a small copy of the project with an error planted in it (ruff's lint
rules and formatter, mypy's strict core), and the warning filters and the markers of
pyproject.toml / tests/conftest.py are run on planted tests. Also: the package list
that a wheel is built from, and the infra/ files an installed Lepton still finds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("lepton_core", "effects", "tasks", "flows", "lepton")


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


# ---------------------------------------------------------------- warnings
PLANTED_WARNINGS = '''
import types

import pytest

CATEGORIES = [DeprecationWarning, PendingDeprecationWarning, FutureWarning]


def warn_from(module_name, category):
    """Warn from code that belongs to `module_name` (what the filters match on)."""
    module = types.ModuleType(module_name)
    code = "import warnings\\ndef old(category):\\n    warnings.warn('deprecated', category)\\n"
    exec(compile(code, module_name.replace(".", "/") + ".py", "exec"), module.__dict__)
    module.old(category)


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("module", ["lepton.cli", "lepton_core", "lepton_core.train", "effects.tracking.runs",
                                    "tasks.train", "flows.retrain"])
def test_ours(module, category):
    warn_from(module, category)


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("module", ["prefect.flows", "mlflow.tracking", "torch.onnx"])
def test_third_party(module, category):
    warn_from(module, category)


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_name_that_only_starts_like_ours(category):
    warn_from("leptonic.x", category)
'''


def test_a_deprecation_from_leptons_own_modules_is_an_error(tmp_path):
    (tmp_path / "test_planted.py").write_text(PLANTED_WARNINGS)
    report = tmp_path / "report.xml"
    r = run(
        [
            "pytest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "test_planted.py",
        ],
        cwd=tmp_path,
    )
    failed = {
        case.get("name", "")
        for case in ET.parse(report).getroot().iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    }
    ours = {
        f"test_ours[{m}-{c}]"
        for m in (
            "lepton.cli",
            "lepton_core",
            "lepton_core.train",
            "effects.tracking.runs",
            "tasks.train",
            "flows.retrain",
        )
        for c in ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")
    }
    assert r.returncode == 1, r.stdout[-3000:]
    assert failed == ours, r.stdout[-3000:]
    assert "18 failed, 12 passed" in r.stdout
    # third-party notices are ignored (not even listed); other modules keep pytest's default
    assert "prefect/flows.py" not in r.stdout and "torch/onnx.py" not in r.stdout
    assert "leptonic/x.py" in r.stdout


# ---------------------------------------------------------------- ruff and mypy on a planted copy
@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """pyproject.toml and a few modules of the core (strict) and of tasks (not)."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel in (
        "lepton_core/__init__.py",
        "lepton_core/errors.py",
        "lepton_core/fileio.py",
        "lepton_core/progress.py",
        "tasks/__init__.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    return tmp_path


def mypy(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return run(
        ["mypy", "--config-file", "pyproject.toml", "--cache-dir", str(cache), "lepton_core", "tasks"], cwd=project
    )


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def test_the_copy_passes_every_check(project_copy, mypy_cache):
    for args in (["ruff", "check", "."], ["ruff", "format", "--check", "."]):
        r = run(args, cwd=project_copy)
        assert r.returncode == 0, r.stdout + r.stderr
    r = mypy(project_copy, mypy_cache)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_lint_error_fails_ruff_check(project_copy):
    (project_copy / "lepton_core" / "planted.py").write_text('import os\n\n\ndef name() -> str:\n    return "x"\n')
    r = run(["ruff", "check", "."], cwd=project_copy)
    assert r.returncode == 1 and "F401" in r.stdout and "planted.py" in r.stdout, r.stdout + r.stderr


def test_a_format_error_fails_ruff_format_check_alone(project_copy):
    (project_copy / "lepton_core" / "planted.py").write_text("def name() -> str:\n    return  'x'\n")
    assert run(["ruff", "check", "."], cwd=project_copy).returncode == 0  # no lint rule minds it
    r = run(["ruff", "format", "--check", "."], cwd=project_copy)
    assert r.returncode == 1 and "lepton_core/planted.py" in r.stdout, r.stdout + r.stderr


def test_a_type_error_in_the_core_fails_mypy_and_the_core_alone_is_strict(project_copy, mypy_cache):
    untyped = "def double(x):\n    return 2 * x\n"
    (project_copy / "lepton_core" / "planted.py").write_text(f'{untyped}\n\ndef answer() -> int:\n    return "42"\n')
    (project_copy / "tasks" / "planted.py").write_text(untyped)
    r = mypy(project_copy, mypy_cache)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert any(e.startswith("lepton_core/planted.py:6:") and "[return-value]" in e for e in errors), r.stdout
    assert any(e.startswith("lepton_core/planted.py:1:") and "[no-untyped-def]" in e for e in errors), r.stdout
    # strictness is the core's only: the same untyped function in tasks is accepted
    assert not [e for e in errors if e.startswith("tasks/")], r.stdout


# ---------------------------------------------------------------- markers
def test_the_fast_selection_leaves_out_postgres_live_and_browser_tests():
    """`make test-fast`'s marker expression, on the files that hold such tests."""
    expr = re.search(r'^test-fast:.*?pytest -m "([^"]+)"', (ROOT / "Makefile").read_text(), re.M | re.S)
    assert expr, "test-fast runs pytest -m EXPR"
    files = ["tests/effects/test_shared_state.py", "tests/live", "tests/faults/test_stack_faults.py"]
    r = run(["pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", expr.group(1), *files], cwd=ROOT)
    selected = [line for line in r.stdout.splitlines() if "::" in line]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert selected, "the sqlite and file-store tests of test_shared_state stay in"
    assert all(line.startswith("tests/effects/") for line in selected), selected
    assert not [line for line in selected if "postgresql" in line or "stacks_state_database" in line], selected


# ---------------------------------------------------------------- packaging
def test_every_package_folder_is_in_the_wheel_list():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in PACKAGES
        for p in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {"lepton._infra"}, sorted(listed - found)
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["lepton._infra"] == "infra"


def test_an_installed_wheel_finds_the_infra_files_deploy_reads(tmp_path):
    """Built from a copy (no build/ in the checkout), unpacked as an installer would,
    imported first on the path from another folder: infra_path finds its own copy."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in (*PACKAGES, "infra"):
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = run(
        ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lepton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lepton/_infra/work-pools/kubernetes.json" in names
    assert "lepton/deploy.py" in names and "lepton_core/train.py" in names
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    code = (
        "from lepton.deploy import KUBERNETES_TEMPLATE, infra_path, load_base_job_template\n"
        "print(infra_path(KUBERNETES_TEMPLATE))\n"
        "print(sorted(load_base_job_template()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    path, keys = out.stdout.splitlines()[-2:]
    assert Path(path) == site / "lepton" / "_infra" / "work-pools" / "kubernetes.json"
    assert keys == "['job_configuration', 'variables']"


# ---------------------------------------------------------------- dependencies
def _declared() -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = PYPROJECT["project"]
    reqs = [*project["dependencies"], *(r for group in project["optional-dependencies"].values() for r in group)]
    return {canonicalize_name(Requirement(r).name) for r in reqs} - {"lepton"}


def test_every_imported_package_is_declared():
    """pyproject.toml names the distribution of every module Lepton's code imports
    (in `dependencies` or an optional group), so an install from it is complete."""
    import ast
    import importlib.metadata

    from packaging.utils import canonicalize_name

    dists = importlib.metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    module = name.partition(".")[0]
                    if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
                        continue
                    providers = {canonicalize_name(d) for d in dists.get(module, [module])}
                    if not providers & _declared():
                        missing.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    assert not missing, f"declare these in pyproject.toml: {missing}"


def test_the_declared_versions_are_the_locked_ones():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    locked = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M))
    locked = {canonicalize_name(k): v for k, v in locked.items()}
    project = PYPROJECT["project"]
    for r in [*project["dependencies"], *(r for group in project["optional-dependencies"].values() for r in group)]:
        req = Requirement(r)
        if req.name == "lepton":
            continue
        version = locked.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(version, prereleases=True), f"{r}: the lock has {version}"
