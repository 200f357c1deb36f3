"""Summary tasks: a short markdown artifact on each flow run in the Prefect UI."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from effects.tracking.summaries import registry_markdown, retrain_markdown


@task(name="publish-summary", retries=2, retry_delay_seconds=[2, 5])
def publish_retrain_summary(result: dict, model_name: str) -> str:
    md = retrain_markdown(result, model_name)
    create_markdown_artifact(
        markdown=md, key="lepton-retrain-summary", description=f"{model_name} v{result['version']}"
    )
    return md


@task(name="publish-registry-change", retries=2, retry_delay_seconds=[2, 5])
def publish_registry_summary(action: str, result: dict, model_name: str) -> str:
    md = registry_markdown(action, result, model_name)
    create_markdown_artifact(markdown=md, key=f"lepton-{action}-summary", description=f"{model_name} {action}")
    return md
