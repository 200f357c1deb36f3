"""The `live` examples of README.md and docs/*.md (`<!-- example: live -->`), run as
written against the live stack: the SQLite stack tests/live shares for the package
(`live_sqlite`; no stack of its own), each page's blocks in order, each after
`eval "$(lepton env)"`, in the stack's project folder. How blocks are found and run:
tests/docs/test_docs_examples.py.

The examples load and call `@champion`. When the stack has none yet (this module
runs first in tests/live), one quick `lepton retrain` (the loop tests' own training
params) makes it: run by the CLI, not through a deployment, so the runs the
deployment tests count are untouched."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import replace

import pytest

from tests.conftest import ROOT
from tests.docs.test_docs_examples import blocks_of, check_ran, pages, run_block
from tests.live.conftest import FAST_TRAIN

pytestmark = pytest.mark.slow

LEPTON_ENV = 'eval "$(lepton env)"\n'


@pytest.fixture(scope="module")
def live(live_sqlite):
    return live_sqlite


def _serving(live) -> bool:
    req = urllib.request.Request(f"{live.serve}/v1/model", headers={"Authorization": f"Bearer {live.serve_token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def stack_env(live, tmp_path_factory) -> dict[str, str]:
    """The stack with a champion that its model server serves; the environment a
    user's shell has in the project folder (the stack's variables not yet set)."""
    r = live.cli("status", "--json", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if json.loads(r.stdout)["champion"] is None:
        sets = [a for k, v in FAST_TRAIN.items() for a in ("--set", f"train.{k}={v}")]
        r = live.cli("retrain", *sets, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    deadline = time.monotonic() + 90  # the server polls the alias every 5 s
    while not _serving(live):
        assert time.monotonic() < deadline, "the stack's model server loaded no champion"
        time.sleep(1)
    return {**os.environ, **live.env}


@pytest.mark.timeout(1200)  # the first test in tests/live pays for the shared stack's start
@pytest.mark.parametrize(
    "page", [p for p in pages() if any(b.kind == "live" for b in blocks_of(p))], ids=lambda p: p.name
)
def test_live_examples_run(page, stack_env, tmp_path):
    env, cwd = dict(stack_env), ROOT
    for b in blocks_of(page):
        if b.kind != "live":
            continue
        if b.lang == "python":  # Python runs in the environment of a shell that evaluated `lepton env`
            r, env, cwd = run_block(replace(b, lang="bash", text=":\n"), env, cwd, tmp_path, prelude=LEPTON_ENV)
            check_ran(b, r)
        r, env, cwd = run_block(b, env, cwd, tmp_path, prelude=LEPTON_ENV)
        check_ran(b, r)
