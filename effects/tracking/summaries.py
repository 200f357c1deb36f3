"""Markdown summaries of flow runs (published as Prefect artifacts by tasks/report.py),
with links to the MLflow run and model version (clickable when MLflow is a server)."""

from __future__ import annotations

from effects.runtime.settings import get_settings
from effects.tracking import runs
from effects.tracking.model_report import REPORT_ARTIFACT, has_report, report_url
from lepton_core.resources import usage_text


def _links(run_id: str | None, model_name: str, version: str | None) -> tuple[str, str]:
    """(run link, version link); the run link leads with its experiment's training runs."""
    uri = get_settings().tracking_uri
    if not uri.startswith(("http://", "https://")):
        return (
            f"`{run_id}` (browse with `mlflow ui --backend-store-uri {uri}`)" if run_id else "",
            f"`{model_name}` v{version}" if version else "",
        )
    base = uri.rstrip("/")
    run_link = ""
    if run_id:
        c = runs.client()
        exp = c.get_run(run_id).info.experiment_id
        name = c.get_experiment(exp).name
        run_link = (
            f"[{run_id}]({runs.run_url(uri, exp, run_id)}) (experiment [{name}]({runs.experiment_url(uri, exp)}))"
        )
    version_link = f"[{model_name} v{version}]({base}/#/models/{model_name}/versions/{version})" if version else ""
    return run_link, version_link


def retrain_markdown(result: dict, model_name: str) -> str:
    d = result["decision"]
    run_link, version_link = _links(result["run_id"], model_name, result["version"])
    rows = "\n".join(f"| {k.removeprefix('test_')} | {v:.4f} |" for k, v in result["metrics"].items())
    verdict = "**promoted to @champion**" if d["promoted"] else "**not promoted**"
    return f"""# Retrain: {model_name} v{result["version"]} {verdict}

Gate: {d["reason"]}

| test metric | value |
|---|---|
{rows}

- {_gate_figures(d)}
- data version: `{result["data_version"]}`
{_cost_item(result)}- MLflow run: {run_link}
- model version: {version_link}
{_report_item(result["run_id"])}"""


def _cost_item(result: dict) -> str:
    """The list item with what the training used and cost (none for a result without it)."""
    return f"- training cost: {usage_text(result['cost'])}\n" if result.get("cost") else ""


def _report_item(run_id: str | None) -> str:
    """The list item that links the run's model report (none when it was not written)."""
    if not run_id:
        return ""
    run = runs.client().get_run(run_id)
    if not has_report(run):
        return ""
    return f"- model report: [{REPORT_ARTIFACT}]({report_url(get_settings().tracking_uri, run)})\n"


def _gate_figures(d: dict) -> str:
    """The gate's figures: accuracies and McNemar's p, or RMSEs and the paired t-test's p."""

    def fmt(v: float | None, spec: str) -> str:
        return "" if v is None else format(v, spec)

    if "challenger_rmse" in d:
        return (
            f"challenger RMSE: {fmt(d['challenger_rmse'], '.4g')}; "
            f"champion RMSE: {fmt(d.get('champion_rmse'), '.4g')}; "
            f"paired t-test p: {d.get('p_value')}"
        )
    return (
        f"challenger accuracy: {fmt(d['challenger_accuracy'], '.4f')}; "
        f"champion accuracy: {fmt(d.get('champion_accuracy'), '.4f')}; McNemar p: {d.get('p_value')}"
    )


def registry_markdown(action: str, result: dict, model_name: str) -> str:
    champion = result.get("champion")
    _, version_link = _links(None, model_name, champion)
    lines = [f"# {action.capitalize()}: {model_name}", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(result.items())]
    if version_link:
        lines.append(f"- @champion: {version_link}")
    return "\n".join(lines) + "\n"


def monitor_markdown(
    results: list[dict], model_name: str, event: dict | bool, tracking_uri: str, report_artifact: str
) -> str:
    """`event`: {"emitted": bool, "suppressed": None or the cool-down line} (or a bool)."""
    if isinstance(event, bool):
        event = {"emitted": event, "suppressed": None}
    uri = tracking_uri.rstrip("/")
    lines = [f"# Drift monitor: {model_name}", ""]
    if not results:
        lines.append("No new batches.")
    for r in results:
        lines += [f"## {r['batch_id']}: {r['verdict']}", ""]
        if r.get("report_url"):
            download = f"{uri}/get-artifact?path={report_artifact}&run_uuid={r['mlflow_run_id']}"
            lines += [f"Evidently report: [open in MLflow]({r['report_url']}) ([download]({download}))", ""]
        elif r["report_html"]:
            lines += [f"Evidently report: [{r['report_html']}]({r['report_html']})", ""]
        if r["drifted_features"]:
            lines += ["| drifted feature | score | method | threshold |", "|---|---|---|---|"]
            lines += [
                f"| {d['feature']} | {d['score']:.4g} | {d['method']} | {d['threshold']} |"
                for d in r["drifted_features"]
            ]
            lines.append("")
        if r["scores"]:
            lines.append("scores: " + ", ".join(f"{k} {v:.3g}" for k, v in r["scores"].items()))
            lines.append("")
    lines.append(f"drift event emitted: {'yes' if event['emitted'] else 'no'}")
    if event.get("suppressed"):
        lines.append(f"\ndrift event {event['suppressed']}")
    return "\n".join(lines) + "\n"
