"""`lepton deploy`: register Lepton's deployments on the running Prefect server.

    retrain/lepton    on the cron schedule of params.deploy (weekly by default)
    promote/lepton    on demand: the gate for one model version
    rollback/lepton   on demand: @previous becomes @champion again
    monitor/lepton    on the cron of params.monitor (hourly): new batches -> drift verdict

and the automation `lepton-retrain-on-drift`: each `lepton.drift.detected` event
runs retrain/lepton (the monitor's cool-down keeps a drifting stream from starting a
retrain storm, and retrain/lepton itself runs one at a time).

The code is pulled from the project folder (no image build, no push); the worker of
the `lepton` process pool runs them. Parameters carry their JSON schema, so the
dashboard's "Run" form shows typed fields with params.yaml's values as defaults.
"""

from __future__ import annotations

import os

from lepton_core.params import Params

DEPLOYMENT_NAME = "lepton"


def deploy_all(params: Params, project_dir: str, work_pool: str | None = None) -> dict[str, str]:
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    from tasks.registry import REGISTRY_LIMIT

    pool = work_pool or os.environ.get("LEPTON_WORK_POOL") or "lepton"
    _ensure_pool_and_limit(pool, REGISTRY_LIMIT)
    common = dict(work_pool_name=pool, build=False, push=False, print_next_steps=False,
                  tags=["lepton"], enforce_parameter_schema=True, ignore_warnings=True)
    sections = {k: getattr(params, k).model_dump(mode="json") for k in ("promote", "registry")}
    ids = {}
    retrain = flow.from_source(source=project_dir, entrypoint="flows/retrain.py:retrain")
    ids["retrain"] = str(retrain.deploy(
        name=DEPLOYMENT_NAME,
        schedule=CronSchedule(cron=params.deploy.retrain_cron, timezone=params.deploy.timezone),
        parameters={"data": params.data.model_dump(mode="json"), "train": params.train.model_dump(mode="json"),
                    **sections, "progress": True},
        description="Prepare -> train -> evaluate -> register -> promote (scheduled).",
        concurrency_limit=1, **common,
    ))
    promote = flow.from_source(source=project_dir, entrypoint="flows/registry.py:promote_flow")
    ids["promote"] = str(promote.deploy(
        name=DEPLOYMENT_NAME, parameters=sections,
        description="Run the promotion gate for one model version (force overrides it).", **common,
    ))
    rollback = flow.from_source(source=project_dir, entrypoint="flows/registry.py:rollback_flow")
    ids["rollback"] = str(rollback.deploy(
        name=DEPLOYMENT_NAME, parameters={"registry": sections["registry"]},
        description="Make @previous the champion again.", **common,
    ))
    monitor = flow.from_source(source=project_dir, entrypoint="flows/monitor.py:monitor")
    ids["monitor"] = str(monitor.deploy(
        name=DEPLOYMENT_NAME,
        schedule=CronSchedule(cron=params.monitor.cron, timezone=params.deploy.timezone),
        parameters={"monitor": params.monitor.model_dump(mode="json"), "registry": sections["registry"]},
        description="Check new batches for drift against the champion (Evidently).",
        concurrency_limit=1, **common,
    ))
    ids["automation"] = _ensure_drift_automation(ids["retrain"])
    return ids


AUTOMATION_NAME = "lepton-retrain-on-drift"


def _ensure_drift_automation(retrain_deployment_id: str) -> str:
    from uuid import UUID

    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    from tasks.monitor import EVENT

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:  # re-deploying replaces it
        for old in c.read_automations_by_name(AUTOMATION_NAME):
            c.delete_automation(old.id)
    auto = Automation(
        name=AUTOMATION_NAME,
        description="Retrain when the monitor reports drift.",
        trigger=EventTrigger(expect={EVENT}, posture=Posture.Reactive, threshold=1),
        actions=[RunDeployment(source="selected", deployment_id=UUID(retrain_deployment_id))],
    ).create()
    return str(auto.id)


def _ensure_pool_and_limit(pool: str, limit_name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            c.read_work_pool(pool)
        except ObjectNotFound:
            c.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        try:
            c.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            try:
                c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name, limit=1))
            except ObjectAlreadyExists:
                pass
