"""What Lepton tells a person, as plain text: the lines a drift, a suppressed drift or
a gate decision puts into its Prefect event (`summary` in the payload), which the
notification automations of `lepton deploy` send to the alert webhook. Pure
functions; the events are emitted by tasks/, the automations made by lepton.alerts."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

DRIFT_SUPPRESSED_EVENT = "lepton.drift.suppressed"  # drift inside the cool-down: told, no retrain
GATE_REJECTED_EVENT = "lepton.gate.rejected"  # the promotion gate refused a version
GATE_PROMOTED_EVENT = "lepton.gate.promoted"  # a version became the champion
MAX_LISTED = 10  # batches named one by one in a notification; the payload holds them all


def redact_url(url: str) -> str:
    """A webhook URL as it may be shown: scheme://host[:port]/… (its path and query are
    the secret; user:password is dropped too)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or "?"
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    where = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    return where + ("/…" if parts.path.strip("/") or parts.query or parts.fragment else "")


def _scores_text(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, int | float) else f"{k} {v}" for k, v in scores.items())


def drift_summary(
    model_name: str, version: str | None, drifted: list[dict[str, Any]], cooldown: str | None = None
) -> str:
    """The text of a drift notification: each drifted batch with its verdict, scores and
    report link (`drifted`: the monitor's results of the batches judged "drift");
    with `cooldown` (the cool-down line), why no retrain starts."""
    n = len(drifted)
    lines = [f"{n} drifted batch{'es' if n != 1 else ''} on {model_name} v{version}:"]
    for r in drifted[:MAX_LISTED]:
        where = r.get("report_url") or f"MLflow run {r.get('mlflow_run_id')} (artifact monitoring/report.html)"
        lines.append(f"- {r['batch_id']}: {r.get('verdict') or r.get('status')}")
        if r.get("scores"):
            lines.append(f"  scores: {_scores_text(r['scores'])}")
        lines.append(f"  report: {where}")
    if n > MAX_LISTED:
        lines.append(f"- … and {n - MAX_LISTED} more (batch_ids in the event)")
    if cooldown:
        lines.append(f"No retrain: drift event {cooldown}.")
    else:
        lines.append("A retrain starts (retrain/lepton, trigger lepton-retrain-on-drift).")
    return "\n".join(lines)


def _figure(v: Any) -> str:
    return "—" if v is None or v == "" else f"{v:.4g}" if isinstance(v, int | float) else str(v)


def gate_figures(result: dict[str, Any]) -> str:
    """Both scores and the p-value of a gate decision (`promote_version`'s result)."""
    metric = "rmse" if "challenger_rmse" in result else "accuracy"
    return (
        f"challenger {metric} {_figure(result.get(f'challenger_{metric}'))}, "
        f"champion {metric} {_figure(result.get(f'champion_{metric}'))}, p-value {_figure(result.get('p_value'))}"
    )


def gate_event(model_name: str, result: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The event of a gate decision: (name, payload); None when there was nothing to
    decide (the version is already the champion)."""
    if "forced" not in result:  # promote_version's early answer: already the champion
        return None
    version, promoted = result["version"], bool(result["promoted"])
    before = result.get("previous") if promoted else result.get("champion")
    head = f"{model_name} v{version} {'promoted to champion' if promoted else 'rejected by the promotion gate'}" + (
        " (forced over the gate)" if result.get("forced") else ""
    )
    summary = f"{head}: {result.get('reason')}\n{gate_figures(result)}; champion before: " + (
        f"v{before}" if before else "none"
    )
    payload = {
        "model_name": model_name,
        "champion_version": before,
        **{k: v for k, v in result.items() if k != "variant_aliases"},
        "summary": summary,
    }
    return (GATE_PROMOTED_EVENT if promoted else GATE_REJECTED_EVENT), payload
