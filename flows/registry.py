"""On-demand registry flows: promote a version through the gate, roll back."""

from __future__ import annotations

from prefect import flow

from lepton_core.params import PromoteParams, RegistryParams
from tasks.registry import promote as promote_task
from tasks.registry import rollback
from tasks.report import publish_registry_summary


@flow(name="promote")
def promote_flow(
    version: str | None = None,
    force: bool = False,
    promote: PromoteParams = PromoteParams(),
    registry: RegistryParams = RegistryParams(),
) -> dict:
    """Run the promotion gate for one model version (None: the @challenger), on its test
    split and, for the @challenger or in promote.mode shadow, on the live traffic it
    scored beside the champion (`force` overrides it, tagged as such)."""
    result = promote_task(registry.model_name, version, promote, force)
    publish_registry_summary("promote", result, registry.model_name)
    return result


@flow(name="rollback")
def rollback_flow(registry: RegistryParams = RegistryParams()) -> dict:
    """Make @previous the champion again."""
    result = rollback(registry.model_name)
    publish_registry_summary("rollback", result, registry.model_name)
    return result
