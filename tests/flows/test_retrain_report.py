"""The retrain flow writes the model report on the training run (real Prefect test
server, SQLite MLflow, local DVC remote): `report/model.html` and its PNGs as run
artifacts, the report's link in the version's description, in the Prefect summary
and in `lepton status`; with `evaluate.report=false` none of them."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest

from lepton_core.params import DataParams, EvaluateParams, PromoteParams, RegistryParams, TrainParams

pytestmark = pytest.mark.slow

NAME = "report-digits"
TINY = TrainParams(epochs=2, width=16)
LINK = re.compile(r"Model report: \[report/model\.html\]\(([^)]+)\)")


@pytest.fixture(scope="module")
def two_runs(lepton_env, prefect_server):
    from flows.retrain import retrain

    reg, gate = RegistryParams(model_name=NAME, experiment="report"), PromoteParams(min_accuracy=0.0)
    with_report = retrain(data=DataParams(), train=TINY, registry=reg, promote=gate, progress=False)
    without = retrain(
        data=DataParams(),
        train=TINY.model_copy(update={"seed": 1}),
        evaluate=EvaluateParams(report=False),
        registry=reg,
        promote=gate,
        progress=False,
    )
    return with_report, without


def test_the_run_carries_the_report_and_the_version_links_it(two_runs, lepton_env):
    from effects.tracking.runs import client

    first, _ = two_runs
    c = client()
    logged = {a.path for a in c.list_artifacts(first["run_id"], "report")}
    assert {
        "report/model.html",
        "report/learning_curves.png",
        "report/confusion_matrix.png",
        "report/calibration.png",
        "report/explanations.png",
    } <= logged
    run = c.get_run(first["run_id"])
    assert 0.0 <= run.data.metrics["test_ece"] <= 1.0
    assert run.data.metrics["baseline_majority_accuracy"] < run.data.metrics["test_accuracy"]
    # the version's description links the report; locally that is the artifact file itself
    mv = c.get_model_version(NAME, first["version"])
    url = LINK.search(mv.description).group(1)
    assert url.startswith("file://") and url.endswith(f"/{first['run_id']}/artifacts/report/model.html")
    page = Path(url2pathname(urlsplit(url).path)).read_text()
    for sid in ("data", "learning-curves", "baselines", "calibration", "mistakes", "explanations"):
        assert f'<section id="{sid}">' in page
    # the learning curves were read back from the run's per-epoch metrics
    assert "2 epochs." in page
    assert first["data_version"] in page


def test_the_summary_and_status_show_the_link_only_where_there_is_a_report(two_runs, lepton_env):
    from effects.tracking.registry import registry_status
    from effects.tracking.runs import client
    from effects.tracking.summaries import retrain_markdown
    from lepton.cli import render

    first, second = two_runs
    c = client()
    url = LINK.search(c.get_model_version(NAME, first["version"]).description).group(1)
    assert f"- model report: [report/model.html]({url})" in retrain_markdown(first, NAME)
    assert "model report" not in retrain_markdown(second, NAME)
    assert not c.list_artifacts(second["run_id"], "report")
    assert "Model report:" not in (c.get_model_version(NAME, second["version"]).description or "")

    st = registry_status(NAME)
    by_version = {st[a]["version"]: st[a] for a in ("champion", "previous") if st[a]}
    assert by_version[first["version"]]["report_url"] == url
    if second["version"] in by_version:  # promoted over the first, or not: no report either way
        assert by_version[second["version"]]["report_url"] is None
    lines = render.report_lines(st)
    assert [ln for ln in lines if ln.endswith(url)], lines
    assert len(lines) == 1
