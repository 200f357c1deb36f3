"""The model report (effects/tracking/model_report.py) on real, tiny trainings: the
digits (images), a CSV-like classification table and a regression table. The page
is parsed with html.parser: every section is there with its heading, every figure is
an inline PNG that is also a file beside the page, and the numbers in it are the
model's and the baselines' on the test split."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from effects.tracking.model_report import (
    CLASSIFICATION_SECTIONS,
    REGRESSION_SECTIONS,
    calibration_bins,
    error_by_decile,
    report_url,
    write_model_report,
)
from effects.training.stages import evaluate_stage, train_stage
from lepton_core.data.formats import RawDataset, load_digits
from lepton_core.data.prepare import Prepared, prepare_dataset
from lepton_core.params import TrainParams
from lepton_core.predictor import Predictor

PNG = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Sections (id -> heading, text, inline images, table rows as lists of cells)."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.current: str | None = None
        self.in_h2 = False
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = {"heading": "", "text": "", "images": [], "rows": []}
        elif tag == "h2":
            self.in_h2 = True
        elif tag == "img" and self.current:
            self.sections[self.current]["images"].append(a["src"])
        elif tag == "tr" and self.current:
            self.sections[self.current]["rows"].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "h2":
            self.in_h2 = False
        elif tag == "section":
            self.current = None
        elif tag in ("td", "th") and self.cell is not None and self.current:
            self.sections[self.current]["rows"][-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.current:
            self.sections[self.current]["heading" if self.in_h2 else "text"] += data + " "
        if self.cell is not None:
            self.cell.append(data)


def parse(path: Path) -> dict[str, dict]:
    p = Page()
    p.feed(path.read_text())
    return p.sections


def _train(tmp: Path, prepared: Prepared, **params) -> tuple[Predictor, dict, list]:
    result = train_stage(prepared, TrainParams(**params), tmp / "model.pt", progress=False)
    metrics = evaluate_stage(prepared, tmp / "model.pt", tmp / "evaluation")
    return Predictor.from_checkpoint(tmp / "model.pt"), metrics, result.history


def _inline_pngs_are_the_files(sections: dict, report) -> None:
    inline = {base64.b64decode(src.split(",", 1)[1]) for s in sections.values() for src in s["images"]}
    files = {f.read_bytes() for f in report.figures}
    assert inline == files and all(b.startswith(PNG) for b in files)
    assert {f.parent for f in report.figures} == {report.html.parent}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    prepared = prepare_dataset(load_digits(), val_fraction=0.15, test_fraction=0.2, seed=0)
    predictor, metrics, history = _train(tmp, prepared, epochs=2, width=16)
    report = write_model_report(
        prepared,
        predictor,
        metrics,
        tmp / "report",
        data_version="d1g175",
        history=history,
        explain_per_class=2,
        figures_dir=tmp / "evaluation",
        heading="MLflow run r1",
    )
    return prepared, predictor, metrics, report


def test_the_digits_report_has_every_section_with_its_figures(digits):
    prepared, predictor, metrics, report = digits
    assert report.html.name == "model.html"
    sections = parse(report.html)
    assert tuple(sections) == CLASSIFICATION_SECTIONS
    assert all(s["heading"] for s in sections.values())
    _inline_pngs_are_the_files(sections, report)
    names = {f.name for f in report.figures}
    assert {
        "class_distribution.png",
        "learning_curves.png",
        "confusion_matrix.png",
        "calibration.png",
        "explanations.png",
    } <= names
    # the evaluation's confusion matrix is reused, not drawn again
    assert (report.html.parent / "confusion_matrix.png").read_bytes() == Path(
        report.html.parent.parent / "evaluation" / "confusion_matrix.png"
    ).read_bytes()
    # data: the version and each split's count of each class
    data = sections["data"]["text"]
    assert "d1g175" in data
    test_zeros = int((prepared.y["test"] == 0).sum())
    assert [r[3] for r in sections["data"]["rows"] if r[0] == "0"][0].startswith(f"{test_zeros} (")
    assert "2 epochs" in sections["learning-curves"]["text"]
    # the explanations ran (no error in their place): 2 samples of each of the 10 digits
    assert "20 test samples" in sections["explanations"]["text"], sections["explanations"]["text"]


def test_the_digits_baselines_and_calibration_are_the_test_splits(digits):
    prepared, predictor, metrics, report = digits
    sections = parse(report.html)
    majority = np.bincount(prepared.y["train"]).argmax()
    want = float((prepared.y["test"] == majority).mean())
    assert report.metrics["baseline_majority_accuracy"] == pytest.approx(want)
    assert f"{metrics['accuracy']:.4g}" in sections["baselines"]["text"]
    assert f"{want:.4g}" in sections["baselines"]["text"]
    p = predictor.predict(prepared.x["test"])
    _, ece = calibration_bins(p.probabilities.max(1), p.labels == prepared.y["test"])
    assert report.metrics["test_ece"] == pytest.approx(ece)
    assert f"{ece:.4f}" in sections["calibration"]["text"]
    wrong = int((p.labels != prepared.y["test"]).sum())
    assert f"{wrong} of {len(p.labels)} test samples are wrong" in sections["mistakes"]["text"]
    assert sections["mistakes"]["images"]
    rows = {r[0]: r for r in sections["per-class"]["rows"][1:]}
    for name, m in metrics["per_class"].items():
        assert rows[name][3] == f"{m['f1']:.3f}" and rows[name][4] == str(m["support"]), name


def test_calibration_error_and_deciles_by_hand():
    # two bins used: 0.95 confident and right, 0.55 confident and wrong half the time
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    right = np.array([True, True, True, False])
    table, ece = calibration_bins(conf, right)
    assert table[9, 0] == 2 and table[5, 0] == 2
    assert ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.05)
    y = np.arange(100, dtype=float)
    rows = error_by_decile(y, y + np.where(y >= 90, 10.0, 0.0))  # only the top decile is off
    assert len(rows) == 10 and sum(r[2] for r in rows) == 100
    assert [r[3] for r in rows] == [0.0] * 9 + [10.0]


def _table(n: int, regression: bool, seed: int = 0) -> RawDataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    names = ["signal", "weak", "noise_a", "noise_b"]
    if regression:
        y = (50 + 20 * x[:, 0] + 3 * x[:, 1]).astype(np.float64)
        return RawDataset(x=x, y=y, classes=[], kind="tabular", feature_names=names, task="regression")
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)
    # a class name as users write them: markup and dollar signs are text, not HTML or maths
    return RawDataset(x=x, y=y, classes=["no", "<b>yes</b> $1$"], kind="tabular", feature_names=names)


@pytest.mark.parametrize("regression", [False, True], ids=["table-classes", "table-regression"])
def test_a_table_report_has_its_sections_baselines_and_importances(regression, tmp_path):
    prepared = prepare_dataset(_table(300, regression), val_fraction=0.15, test_fraction=0.2, seed=0)
    predictor, metrics, history = _train(tmp_path, prepared, epochs=4, width=16, lr=0.01)
    report = write_model_report(
        prepared, predictor, metrics, tmp_path / "report", data_version="t4b1e", history=history
    )
    sections = parse(report.html)
    assert tuple(sections) == (REGRESSION_SECTIONS if regression else CLASSIFICATION_SECTIONS)
    assert all(s["heading"] for s in sections.values())
    _inline_pngs_are_the_files(sections, report)
    # the linear baseline, fitted on train and scored on test, beside the model
    linear = "scaled_ridge" if regression else "scaled_logistic"
    lead = "rmse" if regression else "accuracy"
    assert report.metrics[f"baseline_{linear}_{lead}"] > 0
    assert linear.replace("_", " ") in sections["baselines"]["text"]
    # a linear target: the scaled linear model is all but perfect, and the page says
    # whether the network beats it
    if regression:
        assert report.metrics["baseline_scaled_ridge_r2"] > 0.99
        assert report.metrics["baseline_mean_r2"] <= 0.0
        assert sections["regression"]["heading"].strip() == "Regression errors"
        assert len(sections["regression"]["images"]) == 3  # predicted/actual, residuals, deciles
    else:
        assert report.metrics["baseline_scaled_logistic_accuracy"] > 0.9
        assert [r[0] for r in sections["per-class"]["rows"][1:]] == ["no", "<b>yes</b> $1$"]
        assert "<b>yes" not in report.html.read_text()
    verdict = sections["baselines"]["text"]
    assert ("beats every baseline" in verdict) != ("does at least as well as the model" in verdict)
    # the worst mistakes are the rows themselves (a table, no image), with the features
    assert not sections["mistakes"]["images"] and "signal" in sections["mistakes"]["text"]
    # explanations: attribution beside permutation importance, the one signal on top
    expl = sections["explanations"]["text"]
    assert "permutation" in expl and sections["explanations"]["images"], expl
    header, first, *_ = sections["explanations"]["rows"]
    assert header[0] == "feature" and first[0] == "signal", sections["explanations"]["rows"]
    assert float(first[2]) > 0  # shuffling the signal costs the model


def test_the_link_opens_in_a_browser_where_it_can():
    class Info:
        experiment_id, run_id = "3", "abc"
        artifact_uri = "s3://bucket/3/abc/artifacts"

    class Run:
        info = Info()

    url = report_url("http://user:secret@127.0.0.1:5000/", Run())
    assert url == "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifactPath/report/model.html"
    assert report_url("sqlite:///m.db", Run()) == "runs:/abc/report/model.html"
    Info.artifact_uri = "file:///srv/mlartifacts/3/abc/artifacts"
    assert report_url("sqlite:///m.db", Run()) == "file:///srv/mlartifacts/3/abc/artifacts/report/model.html"
