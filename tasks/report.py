"""Prefect artifacts: a short markdown summary of each flow run, with links to the
MLflow run and model version (clickable when MLflow is a server)."""

from __future__ import annotations

from prefect import task

from tasks import tracking
from tasks.settings import get_settings


def _links(run_id: str | None, model_name: str, version: str | None) -> tuple[str, str]:
    uri = get_settings().tracking_uri
    if not uri.startswith(("http://", "https://")):
        return (f"`{run_id}` (browse with `mlflow ui --backend-store-uri {uri}`)" if run_id else "",
                f"`{model_name}` v{version}" if version else "")
    base = uri.rstrip("/")
    run_link = ""
    if run_id:
        exp = tracking.client().get_run(run_id).info.experiment_id
        run_link = f"[{run_id}]({base}/#/experiments/{exp}/runs/{run_id})"
    version_link = f"[{model_name} v{version}]({base}/#/models/{model_name}/versions/{version})" if version else ""
    return run_link, version_link


def retrain_markdown(result: dict, model_name: str) -> str:
    d = result["decision"]
    run_link, version_link = _links(result["run_id"], model_name, result["version"])
    rows = "\n".join(f"| {k.removeprefix('test_')} | {v:.4f} |" for k, v in result["metrics"].items())
    verdict = "**promoted to @champion**" if d["promoted"] else "**not promoted**"
    champ = d.get("champion_accuracy")
    return f"""# Retrain: {model_name} v{result['version']} {verdict}

Gate: {d['reason']}

| test metric | value |
|---|---|
{rows}

- challenger accuracy: {d['challenger_accuracy']:.4f}; champion accuracy: {'' if champ is None else f'{champ:.4f}'}; McNemar p: {d.get('p_value')}
- data version: `{result['data_version']}`
- MLflow run: {run_link}
- model version: {version_link}
"""


@task(name="publish-summary", retries=2, retry_delay_seconds=[2, 5])
def publish_retrain_summary(result: dict, model_name: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    md = retrain_markdown(result, model_name)
    create_markdown_artifact(markdown=md, key="lepton-retrain-summary",
                             description=f"{model_name} v{result['version']}")
    return md


@task(name="publish-registry-change", retries=2, retry_delay_seconds=[2, 5])
def publish_registry_summary(action: str, result: dict, model_name: str) -> str:
    from prefect.artifacts import create_markdown_artifact

    champion = result.get("champion")
    _, version_link = _links(None, model_name, champion)
    lines = [f"# {action.capitalize()}: {model_name}", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(result.items())]
    if version_link:
        lines.append(f"- @champion: {version_link}")
    md = "\n".join(lines) + "\n"
    create_markdown_artifact(markdown=md, key=f"lepton-{action}-summary", description=f"{model_name} {action}")
    return md
