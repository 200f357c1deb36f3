"""`lepton versions` and `lepton compare` through the real command, on a registry of
three tiny digits versions (seeds 0, 1, 2; the first promoted, the others judged
against it) and the ONNX variant of the first."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.conftest import run_cli

MODEL = "lepton-digits"


@pytest.fixture(scope="module")
def registry(lepton_env, prefect_server):
    """Versions 1-3 (tiny digits models trained with seeds 0-2; the gate's floor off, so
    v1 is promoted and v2, v3 are judged against it) and 4 (`lepton optimize`'s ONNX
    variant of v1); returns the environment for `run_cli` and each version's tags."""
    from effects.runtime.settings import get_settings
    from effects.tracking import runs
    from flows.retrain import retrain
    from lepton_core.params import DataParams, PromoteParams, TrainParams

    for seed in range(3):
        train = TrainParams(epochs=2, width=16, seed=seed)
        retrain(data=DataParams(), train=train, promote=PromoteParams(min_accuracy=0), progress=False)
    env = lepton_env[1]
    r = run_cli(["optimize", "1", "--variant", "onnx", "--json"], env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    c = runs.client(get_settings())
    return env, {str(mv.version): mv.tags for mv in c.search_model_versions(f"name='{MODEL}'")}


@pytest.fixture(scope="module")
def listed(registry):
    r = run_cli(["versions", "--json"], registry[0])
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.slow
def test_versions_lists_every_version_with_aliases_metrics_provenance_and_the_gate(registry, listed):
    _, version_tags = registry
    assert listed["registered_model"] == MODEL
    by = {v["version"]: v for v in listed["versions"]}
    assert [v["version"] for v in listed["versions"]] == ["4", "3", "2", "1"]  # newest first
    assert by["1"]["aliases"] == ["champion"] and by["4"]["aliases"] == ["champion-onnx"]
    assert by["2"]["aliases"] == by["3"]["aliases"] == []
    for v in ("1", "2", "3"):
        t = version_tags[v]
        assert f"{by[v]['metrics']['accuracy']:.4f}" == t["lepton.test_accuracy"]
        assert set(by[v]["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
        assert by[v]["data_version"] == t["lepton.data_version"] and by[v]["git_commit"] == t["lepton.git_commit"]
        assert by[v]["created_at"].endswith("+00:00") and by[v]["variant"] is None
    assert by["1"]["gate"]["decision"] == "promoted" and by["1"]["gate"]["p_value"] is None  # nothing to beat
    for v in ("2", "3"):  # judged against v1: the p-value and reason the gate recorded
        g = by[v]["gate"]
        assert g["decision"] == ("promoted" if version_tags[v]["lepton.gate.promote"] == "True" else "refused")
        assert g["champion_version"] == "1" and g["reason"] == version_tags[v]["lepton.gate.reason"]
        assert g["p_value"] == float(version_tags[v]["lepton.gate.p_value"])
    variant = by["4"]
    assert variant["variant"] == "onnx" and variant["variant_of"] == "1" and variant["gate"] is None
    assert variant["metrics"]["accuracy"] == pytest.approx(by["1"]["metrics"]["accuracy"], abs=0.01)


@pytest.mark.slow
def test_versions_table_for_people(registry, listed):
    r = run_cli(["versions"], registry[0])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"registered model  {MODEL}  (4 versions)"
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert list(rows) == ["v4", "v3", "v2", "v1"]
    assert "champion-onnx" in rows["v4"] and "onnx variant of v1" in rows["v4"]
    p2 = listed["versions"][2]["gate"]["p_value"]
    assert f"against v1, p {p2:.4g}: " in rows["v2"]
    assert re.search(r"\bchampion\b.*accuracy \d\.\d{4}  F1 \d\.\d{4}.*promoted: no champion to beat", rows["v1"])


@pytest.mark.slow
def test_compare_reports_the_p_value_the_gate_recorded(registry, tmp_path):
    env, version_tags = registry
    page = tmp_path / "out" / "compare.html"
    r = run_cli(["compare", "1", "2", "--json", "--html", str(page)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    c = json.loads(r.stdout)
    t = c["paired_test"]
    assert t["p_value"] == float(version_tags["2"]["lepton.gate.p_value"])  # the same float, not just close
    assert c["gate"]["p_value"] == t["p_value"] and c["gate"]["champion_version"] == "1"
    assert c["test_data_version"] == version_tags["2"]["lepton.data_version"] and c["test_data_of"] == "B"
    # the discordant counts are the samples listed on each side, and they are what differs
    assert t["only_a_right"] == len(c["only_a_right"]) and t["only_b_right"] == len(c["only_b_right"])
    assert t["only_a_right"] + t["only_b_right"] + t["both_right"] + t["both_wrong"] == c["n"]
    for s in c["only_a_right"]:
        assert s["a"] == s["true"] != s["b"]
    for s in c["only_b_right"]:
        assert s["b"] == s["true"] != s["a"]
    # the accuracies follow from the counts; each confusion matrix holds the test split
    assert c["b"]["metrics"]["accuracy"] - c["a"]["metrics"]["accuracy"] == pytest.approx(
        (t["only_b_right"] - t["only_a_right"]) / c["n"]
    )
    for side in ("a", "b"):
        cm = np.array(c[side]["confusion_matrix"])
        assert cm.shape == (10, 10) and cm.sum() == c["n"]
        assert np.trace(cm) / c["n"] == pytest.approx(c[side]["metrics"]["accuracy"])
        assert f"{c[side]['metrics']['accuracy']:.4f}" == version_tags[c[side]["version"]]["lepton.test_accuracy"]
    d = c["per_class"]["3"]
    assert d["f1_diff"] == pytest.approx(d["b"]["f1"] - d["a"]["f1"])
    assert c["html"] == str(page)
    _check_page(page.read_text(), c)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._in, self.headings = tag, [*self.headings, ""]
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "script") or (tag == "img" and not (a.get("src") or "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in:
            self.headings[-1] += data


def _check_page(text: str, c: dict) -> None:
    page = _Page()
    page.feed(text)
    assert page.headings[0] == f"{MODEL}: v1 against v2"
    for heading in ("Metrics", "The gate's paired test", "Per class", "Confusion matrices", "A: v1", "B: v2"):
        assert heading in page.headings
    t = c["paired_test"]
    assert f"Only A right: {t['only_a_right']}" in page.headings
    assert f"Only B right: {t['only_b_right']}" in page.headings
    assert len(page.images) == min(t["only_a_right"], 24) + min(t["only_b_right"], 24)
    assert not page.external  # self-contained
    assert f"p = {t['p_value']:.4g}" in text


@pytest.mark.slow
def test_compare_as_text_on_a_test_split_of_a_choice_and_with_a_variant(registry):
    env, _ = registry
    r = run_cli(["compare", "@champion", "4", "--data-of", "A"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"A  {MODEL} v1 @champion"
    assert lines[1] == f"B  {MODEL} v4 @champion-onnx (onnx variant of v1)"
    assert "(A's)" in lines[2]
    assert any(ln.startswith("paired test      McNemar exact (two-sided): ") for ln in lines)
    assert "the gate         did not judge v4 against v1 on this split" in lines
    assert "confusion matrix of A v1 (rows: true class, columns: predicted)" in lines
    assert "confusion matrix of B v4 (rows: true class, columns: predicted)" in lines


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", "models:/other-model/2"], "compare versions of one registered model"),
        (["1", "9"], f"model {MODEL!r} has no version 9"),
        (["1", "two"], "'two' is not a model version"),
        (["models:/other-model/1", "models:/other-model/2"], "there is no registered model 'other-model'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(registry, tmp_path, args, message):
    env, version_tags = registry
    page = tmp_path / "page.html"
    r = run_cli(["compare", *args, "--html", str(page)], env)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert not page.exists() and not list(tmp_path.iterdir())
    from effects.runtime.settings import get_settings
    from effects.tracking import runs

    after = {str(mv.version): mv.tags for mv in runs.client(get_settings()).search_model_versions(f"name='{MODEL}'")}
    assert after == version_tags


def test_regression_pairs_squared_errors_as_the_regression_gate_does():
    """The comparison of two regression versions runs the gate's one-sided paired
    t-test with A as the champion: the p-value the gate's decision carries."""
    from effects.tracking.versions import _regression, _Side
    from lepton.cli.render import compare_summary
    from lepton_core.gate import decide_regression
    from lepton_core.params import PromoteParams

    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, 200)
    a_values = y + rng.normal(0, 0.5, 200)
    b_values = y + rng.normal(0, 0.8, 200)  # B is worse
    found = _regression(_Side(None, None, a_values), _Side(None, None, b_values), y)  # type: ignore[arg-type]
    gate = decide_regression((b_values - y) ** 2, (a_values - y) ** 2, y, PromoteParams())
    t = found["paired_test"]
    assert t["p_value"] == gate.p_value < 0.05 and t["mean_sq_err_diff"] == gate.mean_sq_err_diff > 0
    d = (b_values - y) ** 2 - (a_values - y) ** 2
    assert (t["a_closer"], t["b_closer"]) == (int((d > 0).sum()), int((d < 0).sum()))
    assert [s["index"] for s in found["a_closer"]][:3] == list(np.argsort(-d)[:3])  # largest difference first
    assert [s["index"] for s in found["b_closer"]][:3] == list(np.argsort(d)[:3])
    ma, mb = found.pop("metrics")
    side = {"aliases": [], "variant": None}
    r = {
        "registered_model": "m",
        "task": "regression",
        "test_data_version": "0123456789abcdef",
        "test_data_of": "B",
        "n": 200,
        "a": {**side, "version": "1", "metrics": {k: ma[k] for k in ("rmse", "mae", "r2")}},
        "b": {**side, "version": "2", "metrics": {k: mb[k] for k in ("rmse", "mae", "r2")}},
        **found,
        "gate": None,
    }
    lines = compare_summary(r)
    assert lines[2] == "both scored on the test split of data version 0123456789ab (B's), 200 samples"
    assert f"p (B worse) = {gate.p_value:.4g}" in next(ln for ln in lines if ln.startswith("paired test"))
    assert next(ln for ln in lines if ln.startswith("A much closer")).startswith(
        f"A much closer    {t['a_closer']} samples: #"
    )
