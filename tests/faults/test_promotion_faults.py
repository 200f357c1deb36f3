"""Twenty promotions at once (four processes of five threads, forced through the
gate so that each one moves the aliases): every decision is recorded, none is lost
or overwritten, and the aliases end where the sequence of moves leads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import ROOT, lepton_env_vars, make_project

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MODEL = "lepton-promo"
PROMOTER = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from effects.tracking.registry import promote_version
from lepton_core.params import PromoteParams
versions = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(versions)) as pool:
    out = list(pool.map(lambda v: promote_version(sys.argv[2], v, PromoteParams(), force=True), versions))
print(json.dumps(out))
"""


def test_twenty_concurrent_promotions_lose_no_decision_and_keep_the_aliases_consistent(tmp_path, monkeypatch):
    make_project(tmp_path / "project")
    env = lepton_env_vars(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from effects.data.dvc_store import version_dataset
    from effects.tracking import runs, tags
    from effects.tracking.registry import gate_history
    from lepton_core.params import DataParams, Params, TrainParams
    from tasks.train import train

    data = version_dataset(DataParams())
    c = runs.client()
    c.create_registered_model(MODEL)
    versions = []
    for seed in range(3):  # three trained models, each a version
        o = train.fn(
            data, Params(train=TrainParams(epochs=2, model="mlp", width=8, patience=0, seed=seed)), progress=False
        )
        mv = c.create_model_version(
            MODEL, f"runs:/{o.run_id}/checkpoint", run_id=o.run_id, tags={tags.DATA_VERSION: data.version}
        )
        versions.append(str(mv.version))

    plan = [[versions[(p * 5 + i) % 3] for i in range(5)] for p in range(4)]  # 20 promotions
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROMOTER, json.dumps(vs), MODEL],
            cwd=ROOT,
            env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for vs in plan
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results += json.loads(out.strip().splitlines()[-1])
    assert len(results) == 20

    moved = [r for r in results if r["reason"] != "already the champion"]
    assert all(r["promoted"] for r in moved)
    # every decision recorded, none lost or overwritten
    recorded = {v: gate_history(c, c.get_model_version(MODEL, v)) for v in versions}
    assert sum(len(h) for h in recorded.values()) == len(moved)
    for v in versions:
        assert len(recorded[v]) == sum(r["version"] == v for r in moved)
        assert all(d["forced"] in ("true", "false") and d["decided_at"] for d in recorded[v])

    # Serialised moves form one path: each move goes from the champion of its time
    # (its `previous`) to its version, so the moves are the edges of a trail from
    # "no champion" to the final @champion (a lost update breaks the balance).
    out_deg = Counter(str(r["previous"]) for r in moved)
    in_deg = Counter(r["version"] for r in moved)
    champ = c.get_model_version_by_alias(MODEL, "champion").version
    prev = c.get_model_version_by_alias(MODEL, "previous").version
    for node in set(out_deg) | set(in_deg):
        expected = (node == "None") - (node == str(champ))
        assert out_deg[node] - in_deg[node] == expected, (node, out_deg, in_deg)
    assert str(prev) != str(champ)
    assert any(r["version"] == str(champ) and str(r["previous"]) == str(prev) for r in moved)
    # each recorded decision names the champion it was compared with: the same trail
    assert Counter(d["champion_version"] or "None" for h in recorded.values() for d in h) == out_deg
