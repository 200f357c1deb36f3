"""Where the monitor's links point: the MLflow UI page that shows the report, and the
one line it keeps in the champion version's description."""

from __future__ import annotations

from effects.monitoring.monitor import _with_report_line, report_ui_url


def test_report_url_opens_the_run_with_the_report_selected():
    url = report_ui_url("http://127.0.0.1:5000/", "7", "abc123")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs/abc123/artifactPath/monitoring/report.html"


def test_no_ui_link_without_a_tracking_server():
    assert report_ui_url("sqlite:///tmp/mlflow.db", "7", "abc") is None
    assert report_ui_url("file:///tmp/mlruns", "7", "abc") is None


def test_description_keeps_what_a_person_wrote_and_one_report_line():
    first = _with_report_line(None, "Latest drift report: [a](u1)")
    assert first == "Latest drift report: [a](u1)"
    written = _with_report_line("Trained on the spring data.\n\n" + first, "Latest drift report: [b](u2)")
    assert written == "Trained on the spring data.\n\nLatest drift report: [b](u2)"
    assert _with_report_line(written, "Latest drift report: [c](u3)").count("Latest drift report:") == 1
