"""Shared fixtures: an isolated Lepton project per test module, and one real
Prefect test server (Prefect's own harness) for the whole session."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- markers, applied centrally
# What a test needs beyond the machine it runs on, found from where it lives, the
# fixtures and parameters it uses and what its code (or a helper of its module that it
# calls) does, so that a new test in the same style is marked without anyone having to
# remember to (`make test-fast` deselects all three; the markers are in pyproject.toml).
# A live stack: SeaweedFS, an MLflow server and a Prefect server (`lepton up`).
LIVE_PATHS = ("tests/live/", "tests/faults/test_stack_faults.py")
# PostgreSQL at 127.0.0.1:5432: the fixture that creates a database per test, a
# parametrized backend (store_url, backend, live = "postgresql"), or a connection made
# by the test itself.
POSTGRES_FIXTURES = {"pg_url"}
POSTGRES_PARAM = "postgresql"
POSTGRES_CODE = ("psycopg2.connect(",)
# Headless Chromium: started by the test, or through tests/live/browser.py.
BROWSER_CODE = ("chromium", "tests.live.browser")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\(")


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):  # not Python source
        return ""


def _code_does(item: pytest.Item, needles: tuple[str, ...]) -> bool:
    """Whether the test function, or a function of its own module that it calls,
    contains one of `needles`."""
    fn = getattr(item, "function", None)
    src = _source(fn)
    if any(n in src for n in needles):
        return True
    module_globals = getattr(fn, "__globals__", {})
    for name in set(_CALL.findall(src)):
        helper = module_globals.get(name)
        if (
            inspect.isfunction(helper)
            and helper.__module__ == fn.__module__  # type: ignore[union-attr]
            and any(n in _source(helper) for n in needles)
        ):
            return True
    return False


def needs(item: pytest.Item) -> set[str]:
    """The markers among live, postgres and browser that this test needs."""
    path = Path(str(item.path)).resolve()
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else ""
    params = getattr(getattr(item, "callspec", None), "params", {})
    found = set()
    if rel.startswith(LIVE_PATHS):
        found.add("live")
    if (
        POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ()))
        or any(isinstance(v, str) and v == POSTGRES_PARAM for v in params.values())
        or _code_does(item, POSTGRES_CODE)
    ):
        found.add("postgres")
    if _code_does(item, BROWSER_CODE):
        found.add("browser")
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in sorted(needs(item)):
            item.add_marker(name)


_STATE: list[Path] = []  # the session's private state folder (removed when pytest ends)


def pytest_configure(config):
    # Before anything imports Prefect or MLflow: private state, no telemetry.
    state = Path(tempfile.mkdtemp(prefix="lepton-tests-"))
    _STATE.append(state)
    os.environ["PREFECT_HOME"] = str(state / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_unconfigure(config):
    # after every fixture's teardown (the session's servers are stopped by then)
    while _STATE:
        shutil.rmtree(_STATE.pop(), ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API server (subprocess, temporary SQLite) for the session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def make_project(root: Path) -> Path:
    """A project folder that is a git repository with one commit (for provenance tags)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    (root / "README.md").write_text("test project\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "add", "README.md"], check=True, env=env)
    subprocess.run(["git", "-C", str(root), "commit", "-qm", "init"], check=True, env=env)
    return root


def lepton_env_vars(base: Path) -> dict[str, str]:
    return {
        "LEPTON_PROJECT_DIR": str(base / "project"),
        "LEPTON_HOME": str(base / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{base / 'home' / 'mlflow.db'}",
        "LEPTON_DVC_REMOTE": str(base / "dvc-remote"),
        "LEPTON_ARTIFACT_ROOT": str(base / "home" / "mlartifacts"),
    }


@pytest.fixture(scope="module")
def lepton_env(tmp_path_factory):
    """Env vars that point Lepton at a fresh project, state folder and DVC remote."""
    base = tmp_path_factory.mktemp("lepton")
    make_project(base / "project")
    env = lepton_env_vars(base)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield base, env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the installed `lepton` entry point in a subprocess."""
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", "from lepton.cli import main; main()", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=env.get("LEPTON_PROJECT_DIR"),
        **kw,
    )
