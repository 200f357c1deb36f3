"""What a notification says (lepton_core.alerts): the drift and gate texts, and a
webhook URL as it may be shown."""

from __future__ import annotations

import pytest

from lepton_core.alerts import (
    GATE_PROMOTED_EVENT,
    GATE_REJECTED_EVENT,
    MAX_LISTED,
    drift_summary,
    gate_event,
    redact_url,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/XYZsecret", "https://hooks.slack.com/…"),
        ("http://127.0.0.1:8099/hook?token=abc", "http://127.0.0.1:8099/…"),
        ("https://user:pw@alerts.example.com/", "https://alerts.example.com"),
        ("https://alerts.example.com?key=1", "https://alerts.example.com/…"),
        ("http://[::1]:9000/x", "http://[::1]:9000/…"),
    ],
)
def test_a_webhook_url_is_shown_without_its_secret_parts(url, shown):
    assert redact_url(url) == shown
    assert "secret" not in shown and "token" not in shown and "pw" not in shown


def _drifted(bid: str, url: str | None = "http://mlflow/#/experiments/1/runs/r/artifactPath/monitoring/report.html"):
    return {
        "batch_id": bid,
        "verdict": "drift: 78% of features drifted (threshold 50%)",
        "status": "drift",
        "scores": {"share_drifted": 0.777, "prediction_drifted": 1.0},
        "mlflow_run_id": f"run-{bid}",
        "report_url": url,
    }


def test_the_drift_text_names_each_batch_its_scores_and_report():
    text = drift_summary("lepton-digits", "3", [_drifted("b1"), _drifted("b2", None)])
    assert text.startswith("2 drifted batches on lepton-digits v3:")
    assert "- b1: drift: 78% of features drifted" in text and "share_drifted 0.777" in text
    assert "report: http://mlflow/#/experiments/1/runs/r/artifactPath/monitoring/report.html" in text
    assert "report: MLflow run run-b2" in text  # no tracking server to link to: the run says where
    assert text.endswith("A retrain starts (retrain/lepton, trigger lepton-retrain-on-drift).")


def test_a_suppressed_drift_says_why_no_retrain_and_long_lists_are_cut():
    many = [_drifted(f"b{i}") for i in range(MAX_LISTED + 3)]
    text = drift_summary("m", "1", many, "suppressed: cool-down until 10:00 UTC (the last event was at 09:00 UTC)")
    assert f"- b{MAX_LISTED - 1}:" in text and f"- b{MAX_LISTED}:" not in text
    assert "… and 3 more" in text
    assert text.endswith(
        "No retrain: drift event suppressed: cool-down until 10:00 UTC (the last event was at 09:00 UTC)."
    )


def test_a_rejection_carries_both_scores_and_the_p_value():
    result = {
        "version": "5",
        "promoted": False,
        "forced": False,
        "reason": "accuracy 0.9100 < champion 0.9500 - tolerance 0.005",
        "challenger_accuracy": 0.91,
        "champion_accuracy": 0.95,
        "p_value": 0.0123,
        "champion": "3",
        "previous": None,
    }
    name, payload = gate_event("lepton-digits", result)
    assert name == GATE_REJECTED_EVENT
    assert payload["version"] == "5" and payload["champion_version"] == "3" and payload["p_value"] == 0.0123
    assert payload["summary"].splitlines() == [
        "lepton-digits v5 rejected by the promotion gate: accuracy 0.9100 < champion 0.9500 - tolerance 0.005",
        "challenger accuracy 0.91, champion accuracy 0.95, p-value 0.0123; champion before: v3",
    ]


def test_a_promotion_and_a_regression_gate_and_nothing_for_the_champion_itself():
    result = {
        "version": "2",
        "promoted": True,
        "forced": True,
        "reason": "forced over the gate: RMSE too high",
        "challenger_rmse": 51.2,
        "challenger_r2": 0.4,
        "champion_rmse": 50.0,
        "mean_sq_err_diff": 3.0,
        "p_value": None,
        "champion": "2",
        "previous": "1",
        "variant_aliases": {"champion-onnx": None},
    }
    name, payload = gate_event("diabetes", result)
    assert name == GATE_PROMOTED_EVENT and "variant_aliases" not in payload
    assert payload["summary"].startswith("diabetes v2 promoted to champion (forced over the gate): forced over")
    assert "challenger rmse 51.2, champion rmse 50, p-value —; champion before: v1" in payload["summary"]
    already = {"version": "2", "promoted": False, "reason": "already the champion", "champion": "2", "previous": "1"}
    assert gate_event("m", already) is None
