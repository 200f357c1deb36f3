"""The model report through the live stack and a browser: the champion's description
in the MLflow UI links the report, `lepton status` gives the same link, and headless
Chromium following it sees every section of the page inside MLflow's artifact view."""

from __future__ import annotations

import json
import re
import urllib.parse

import pytest

from tests.live.conftest import FAST_TRAIN

pytestmark = pytest.mark.slow

# what a reader sees of each section of a classification report: its heading
HEADINGS = (
    "Data",
    "Learning curves",
    "The model beside baselines",
    "Precision, recall and F1 per class",
    "Confusion matrix",
    "Calibration",
    "Worst mistakes",
    "Explanations (Integrated Gradients)",
)


@pytest.fixture(scope="module")
def live(live_sqlite):
    return live_sqlite


@pytest.fixture(scope="module")
def champion(live) -> dict:
    """The stack's champion as `lepton status --json` shows it: the one the other live
    tests trained when they ran first, else a tiny retrain of the digits here."""
    r = live.cli("status", "--json", timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if json.loads(r.stdout)["champion"] is None:
        sets = [a for k, v in FAST_TRAIN.items() for a in ("--set", f"train.{k}={v}")]
        r = live.cli("retrain", *sets, "--no-progress", timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        r = live.cli("status", "--json", timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    st = json.loads(r.stdout)
    return {**st["champion"], "model": st["registered_model"]}


def test_the_report_opens_from_the_link_in_the_versions_description(live, champion, tmp_path):
    from tests.live.browser import frame_texts, page_html

    name, version = champion["model"], champion["version"]
    query = urllib.parse.urlencode({"name": name, "version": version})
    mv = live.get(f"{live.mlflow}/api/2.0/mlflow/model-versions/get?{query}")["model_version"]
    url = re.search(r"Model report: \[report/model\.html\]\(([^)]+)\)", mv["description"]).group(1)
    assert url == champion["report_url"]  # `lepton status` gives the same link
    assert url.startswith(f"{live.mlflow}/#/experiments/")
    assert url.endswith(f"/runs/{mv['run_id']}/artifactPath/report/model.html")

    # the version's page in the MLflow UI shows the description with the link
    version_page = f"{live.mlflow}/#/models/{name}/versions/{version}"
    html = page_html(version_page, tmp_path / "p1", until=f'href="{url}"', headers=live.browser_headers(url))
    assert f'href="{url}"' in html

    # following it: MLflow's artifact view renders the report, every section in it
    texts = frame_texts(url, tmp_path / "p2", until=HEADINGS[-1], headers=live.browser_headers(url))
    report = next((t for t in texts[1:] if "Model report" in t), "")
    assert report, [t[:300] for t in texts]
    # each heading twice: in the page's contents and over its section
    missing = [h for h in HEADINGS if report.count(h) < 2]
    assert not missing, (missing, report[:3000])
    for inside in (champion["data_version"], "epochs.", "majority", "Expected calibration error", "Red pixels"):
        assert inside in report, (inside, report[:3000])
