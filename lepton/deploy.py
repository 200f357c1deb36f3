"""`lepton deploy`: register Lepton's deployments on the running Prefect server.

    retrain/lepton    on the cron schedule of params.deploy (weekly by default)
    promote/lepton    on demand: the gate for one model version
    rollback/lepton   on demand: @previous becomes @champion again
    monitor/lepton    on the cron of params.monitor (hourly): new batches -> drift verdict
    sweep/lepton      on demand: an Optuna search over params.sweep; the best trial is gated

retrain/lepton carries the trigger `lepton-retrain-on-drift`: each
`lepton.drift.detected` event runs it (the monitor's cool-down keeps a drifting stream
from starting a retrain storm, and retrain/lepton itself runs one at a time). It is a
deployment trigger, so Prefect owns it with the deployment: re-deploying, with
`lepton deploy` or with `prefect deploy`, replaces it instead of adding a second one.

The code is pulled from the project folder (no image build, no push); the worker of
the `lepton` process pool runs them. Parameters carry their JSON schema, so the
dashboard's "Run" form shows typed fields with params.yaml's values as defaults.

`deployment_specs` is the one description of all this. `deploy_all` registers it
through Prefect's Python API; `prefect_yaml` writes the same thing as the project's
`prefect.yaml`, for `prefect --no-prompt deploy --all` (tests keep the two equal).
`deploy_all` also (re)creates two automations that rerun a flow run whose process
died (`ensure_crash_recovery`, below); prefect.yaml cannot hold them, so
`prefect deploy` alone leaves crashed runs as they are.

On a Kubernetes work pool (`pool_type="kubernetes"`) every flow run is a Job made from
the pool's base job template (infra/work-pools/kubernetes.json, installed when the pool
is created); retrain/lepton's job variables ask for params.deploy's GPUs, memory and
CPUs (`training_job_variables`). The code is then the image's own copy in the
project folder (/opt/lepton in lepton:cpu and lepton:cuda).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, cast

from lepton_core.drift import DRIFT_EVENT, RETRAIN_INIT_KEY, WARM_START
from lepton_core.errors import LeptonError
from lepton_core.params import SECTIONS, DeployParams, Params

DEPLOYMENT_NAME = "lepton"
AUTOMATION_NAME = "lepton-retrain-on-drift"
POOL_TYPES = ("process", "kubernetes")
# the base job template of Kubernetes pools, relative to infra/ (infra_path)
KUBERNETES_TEMPLATE = "work-pools/kubernetes.json"
# infra/ of a checkout (and of the images, which hold one in /opt/lepton)
CHECKOUT_INFRA = Path(__file__).resolve().parents[1] / "infra"
GPU_IMAGE = "lepton:cuda"  # infra/Dockerfile.cuda


def training_job_variables(deploy: DeployParams) -> dict:
    """retrain/lepton's job variables on a Kubernetes pool, from params.deploy: the
    template turns gpu_count into limits["nvidia.com/gpu"] and memory_* / cpu_request
    into the container's resources. Memory request = limit: a pod above its request
    is the first one evicted under pressure, and a training run should not be."""
    jv: dict = {
        "gpu_count": deploy.gpus,
        "memory_request": deploy.memory,
        "memory_limit": deploy.memory,
        "cpu_request": deploy.cpu,
    }
    image = deploy.image or (GPU_IMAGE if deploy.gpus else None)
    if image:
        jv["image"] = image
    return jv


def infra_path(relative: str) -> Path:
    """A file of infra/ that Lepton itself reads: the copy an installed package ships
    (package data under lepton/_infra, pyproject.toml), else the checkout's infra/
    (a checkout, an editable install, the images)."""
    shipped = resources.files(__package__ or "lepton") / "_infra" / relative
    if isinstance(shipped, Path) and shipped.is_file():
        return shipped
    return CHECKOUT_INFRA / relative


def load_base_job_template(path: str | Path | None = None) -> dict:
    """A work pool's base job template (`prefect work-pool create --base-job-template FILE`);
    by default infra/work-pools/kubernetes.json."""
    path = Path(path) if path is not None else infra_path(KUBERNETES_TEMPLATE)
    try:
        template = json.loads(path.read_text())
    except FileNotFoundError:
        raise LeptonError(f"{path}: no such base job template") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeptonError(f"{path}: not a JSON base job template ({e.__class__.__name__})") from None
    if not isinstance(template, dict) or not {"job_configuration", "variables"} <= set(template):
        raise LeptonError(f"{path}: a base job template has `job_configuration` and `variables`")
    return template


def drift_trigger(params: Params) -> dict:
    """The retrain deployment's trigger, as prefect.yaml spells it: a drift event
    starts a retrain, warm-started from the champion when the monitor that saw the
    drift says so (`monitor.retrain_init`, in the event's payload)."""
    return {
        "type": "event",
        "name": AUTOMATION_NAME,
        "description": "Retrain when the monitor reports drift.",
        "enabled": True,
        "expect": [DRIFT_EVENT],
        "posture": "Reactive",
        "threshold": 1,
        "within": 0,
        "parameters": drift_trigger_parameters(params.train.model_dump(mode="json")),
    }


def drift_trigger_parameters(train: dict[str, Any]) -> dict[str, Any]:
    """The parameters of the retrain deployment's drift trigger: its `train` section
    (`train`, as deployed) with init_from taken from the event, as `retrain_init_from`
    says, when the trigger fires. Prefect lays a trigger's parameters over the
    deployment's key by key at the top level only, so the whole section goes. A Jinja
    template (of the event) renders a string; the "json" kind around it parses that,
    so a scratch retrain's init_from stays null rather than becoming "None"."""
    deployed = json.dumps(train.get("init_from"))
    template = (
        f"{{% if event.payload.{RETRAIN_INIT_KEY} == {json.dumps(WARM_START)} %}}{json.dumps(WARM_START)}"
        f"{{% else %}}{{% raw %}}{deployed}{{% endraw %}}{{% endif %}}"
    )
    init_from = {"__prefect_kind": "json", "value": {"__prefect_kind": "jinja", "template": template}}
    return {"train": {**train, "init_from": init_from}}


def deployment_specs(params: Params) -> list[dict]:
    """Every deployment, in prefect.yaml's own terms."""
    sections = {k: getattr(params, k).model_dump(mode="json") for k in ("promote", "registry")}
    tz = params.deploy.timezone
    common = {"tags": ["lepton"], "enforce_parameter_schema": True}
    return [
        {
            "name": DEPLOYMENT_NAME,
            "entrypoint": "flows/retrain.py:retrain",
            "description": "Prepare -> train -> evaluate -> register -> promote (scheduled).",
            "schedules": [{"cron": params.deploy.retrain_cron, "timezone": tz}],
            # every section, so the run records (and the dashboard form shows) all of params.yaml
            "parameters": {
                **{k: getattr(params, k).model_dump(mode="json") for k in SECTIONS if k != "sweep"},
                "progress": True,
            },
            "concurrency_limit": 1,
            "triggers": [drift_trigger(params)],
            **common,
        },
        {
            "name": DEPLOYMENT_NAME,
            "entrypoint": "flows/registry.py:promote_flow",
            "description": "Run the promotion gate for one model version (force overrides it).",
            "schedules": [],
            "parameters": sections,
            "concurrency_limit": None,
            "triggers": [],
            **common,
        },
        {
            "name": DEPLOYMENT_NAME,
            "entrypoint": "flows/registry.py:rollback_flow",
            "description": "Make @previous the champion again.",
            "schedules": [],
            "parameters": {"registry": sections["registry"]},
            "concurrency_limit": None,
            "triggers": [],
            **common,
        },
        {
            "name": DEPLOYMENT_NAME,
            "entrypoint": "flows/sweep.py:sweep",
            "description": "Search sweep.space (Optuna TPE; threads, or Dask with `dask`: 'local' or a "
            "scheduler address); register and gate the best trial.",
            "schedules": [],
            "parameters": {
                **{k: getattr(params, k).model_dump(mode="json") for k in SECTIONS},
                "dask": None,
                "progress": False,
            },
            "concurrency_limit": 1,
            "triggers": [],
            **common,
        },
        {
            "name": DEPLOYMENT_NAME,
            "entrypoint": "flows/monitor.py:monitor",
            "description": "Check new batches for drift against the champion (Evidently).",
            "schedules": [{"cron": params.monitor.cron, "timezone": tz}],
            "parameters": {"monitor": params.monitor.model_dump(mode="json"), "registry": sections["registry"]},
            "concurrency_limit": 1,
            "triggers": [],
            **common,
        },
    ]


# the deployments that train: their pods get params.deploy's GPUs, memory and CPUs (a
# sweep's trials run in its own pod unless it is given a Dask cluster)
TRAINING_ENTRYPOINTS = ("flows/retrain.py:retrain", "flows/sweep.py:sweep")


def _job_variables(spec: dict, params: Params, pool_type: str) -> dict:
    if pool_type == "kubernetes" and spec["entrypoint"] in TRAINING_ENTRYPOINTS:
        return training_job_variables(params.deploy)
    return {}


def prefect_yaml(params: Params, work_pool: str = "lepton", pool_type: str = "process") -> dict:
    """The project's prefect.yaml, as data. No build, no push; no pull either, so
    `prefect deploy` pulls from the folder it runs in, as `lepton deploy` does."""
    deployments = []
    for spec in deployment_specs(params):
        d = {k: v for k, v in spec.items() if v not in (None, [])}
        d["work_pool"] = {
            "name": work_pool,
            "work_queue_name": None,
            "job_variables": _job_variables(spec, params, pool_type),
        }
        deployments.append(d)
    return {"name": "lepton", "prefect-version": ">=3", "build": None, "push": None, "deployments": deployments}


def render_prefect_yaml(params: Params, work_pool: str = "lepton", pool_type: str = "process") -> str:
    import yaml

    data = json.loads(json.dumps(prefect_yaml(params, work_pool, pool_type)))  # no shared objects, so no YAML anchors
    head = (
        "# Generated by `lepton deploy --write-prefect-yaml prefect.yaml` from params.yaml;\n"
        "# the tests check that it matches. Deploy with, from the project root and with the\n"
        "# stack up (`lepton up`):  prefect --no-prompt deploy --all\n"
        "# `lepton deploy` registers the same deployments, plus the work pool and the\n"
        "# `lepton-registry` concurrency limit when they are missing.\n"
    )
    return head + yaml.safe_dump(data, sort_keys=False, width=100)


def deploy_all(
    params: Params,
    project_dir: str,
    work_pool: str = "lepton",
    pool_type: str = "process",
    base_job_template: dict | None = None,
) -> dict[str, str]:
    """Register every deployment on `work_pool`, creating the pool (of `pool_type`; a
    Kubernetes pool with `base_job_template`, by default infra/work-pools/kubernetes.json) and the
    registry's concurrency limit when they are missing."""
    from prefect import Flow, flow
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from tasks.registry import REGISTRY_LIMIT

    if pool_type not in POOL_TYPES:
        raise LeptonError(f"unknown work pool type {pool_type!r} (one of {', '.join(POOL_TYPES)})")
    if pool_type == "kubernetes" and base_job_template is None:
        base_job_template = load_base_job_template()
    pool = work_pool
    _ensure_pool_and_limit(pool, REGISTRY_LIMIT, pool_type, base_job_template)
    if pool_type == "kubernetes":
        _check_job_variables_fit(pool, training_job_variables(params.deploy))
    _drop_named_automations()
    ids = {}
    for spec in deployment_specs(params):
        # from_source is sync_compatible: outside an event loop it returns the Flow itself
        f = cast("Flow[..., Any]", flow.from_source(source=project_dir, entrypoint=spec["entrypoint"]))
        # deploy() hands `schedules` to to_deployment(), which takes CronSchedule (prefect
        # runs it so); deploy's own annotation names only prefect.schedules.Schedule
        schedules: Any = [CronSchedule(cron=s["cron"], timezone=s["timezone"]) for s in spec["schedules"]] or None
        ids[f.name] = str(
            f.deploy(
                name=spec["name"],
                work_pool_name=pool,
                build=False,
                push=False,
                print_next_steps=False,
                ignore_warnings=True,
                tags=spec["tags"],
                enforce_parameter_schema=spec["enforce_parameter_schema"],
                description=spec["description"],
                parameters=spec["parameters"],
                schedules=schedules,
                concurrency_limit=spec["concurrency_limit"],
                job_variables=_job_variables(spec, params, pool_type) or None,
                triggers=[
                    DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"}) for t in spec["triggers"]
                ]
                or None,
            )
        )
    ids["automation"] = _automation_id(ids["retrain"])
    ids.update(ensure_crash_recovery([v for k, v in ids.items() if k != "automation"]))
    return ids


# ---------------------------------------------------------------- runs whose process died
# A flow run whose process dies (its worker killed, the machine gone) reports
# nothing: it would stay RUNNING for ever. Its heartbeats stop (every flow run of a
# lepton worker sends one every HEARTBEAT_SECONDS, worker_env), so one automation
# marks it CRASHED after LOST_AFTER_SECONDS of silence, and another sets each
# CRASHED run of Lepton's deployments back to Scheduled, at most CRASH_RETRIES times
# (the run count is on the event). The same flow run then runs again on whichever
# worker is up, with its parameters; the train task resumes from its work
# checkpoint, in the same MLflow run.
LOST_RUNS_AUTOMATION = "lepton-crash-lost-runs"
RETRY_CRASHED_AUTOMATION = "lepton-retry-crashed"
HEARTBEAT_SECONDS = 30  # Prefect's minimum
LOST_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
CRASH_RETRIES = 3
_RUN_ENDS = [
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Crashed",
]


def worker_env() -> dict[str, str]:
    """What a Lepton worker's environment needs (its flow runs inherit it): heartbeats."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


def crash_recovery_automations(deployment_ids: list[str]) -> list:
    """The two automations, for the flow runs of these deployments."""
    from datetime import timedelta

    from prefect.automations import AutomationCore
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    ours: dict[str, str | list[str]] = {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{d}" for d in deployment_ids],
    }
    lost = AutomationCore(
        name=LOST_RUNS_AUTOMATION,
        description=f"A Lepton flow run with no heartbeat for {LOST_AFTER_SECONDS} s lost its process: crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *_RUN_ENDS},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=ours,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=LOST_AFTER_SECONDS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"no heartbeat for {LOST_AFTER_SECONDS} s: its process is gone"
            )
        ],
    )
    retry = AutomationCore(
        name=RETRY_CRASHED_AUTOMATION,
        description=f"Run a crashed Lepton flow run again (at most {CRASH_RETRIES} times); it resumes "
        "from its checkpoint.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match={
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.run-count": [str(n) for n in range(1, CRASH_RETRIES + 1)],
            },
            match_related=ours,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                message=f"rerun after a crash ({RETRY_CRASHED_AUTOMATION})",
            )
        ],
    )
    return [lost, retry]


def ensure_crash_recovery(deployment_ids: list[str]) -> dict[str, str]:
    """Replace the two automations (by name) with ones for these deployments."""
    from prefect.client.orchestration import get_client

    out = {}
    with get_client(sync_client=True) as c:
        for a in crash_recovery_automations(deployment_ids):
            for old in c.read_automations_by_name(a.name):
                c.delete_automation(old.id)
            out[a.name] = str(c.create_automation(a))
    return out


def _automation_id(deployment_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        found = [
            a
            for a in c.read_automations_by_name(AUTOMATION_NAME)
            if any(str(getattr(act, "deployment_id", "")) == deployment_id for act in a.actions)
        ]
    if len(found) != 1:
        raise RuntimeError(f"expected one automation {AUTOMATION_NAME!r} for retrain/lepton, found {len(found)}")
    return str(found[0].id)


def _drop_named_automations() -> None:
    """Remove every automation with the trigger's name before deploying. Prefect
    replaces the one it owns with the deployment anyway; this also removes the
    stand-alone one that earlier Lepton versions created, which would otherwise start
    a second retrain for each drift event."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        for old in c.read_automations_by_name(AUTOMATION_NAME):
            c.delete_automation(old.id)


def _ensure_pool_and_limit(
    pool: str, limit_name: str, pool_type: str = "process", base_job_template: dict | None = None
) -> None:
    """`prefect work-pool create NAME --type TYPE [--base-job-template FILE]` when the
    pool is missing. An existing pool keeps its template (it may have been edited in
    the dashboard); asked for kubernetes, it must be a Kubernetes pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as c:
        try:
            existing = c.read_work_pool(pool)
        except ObjectNotFound:
            c.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=base_job_template or {}))
        else:
            if pool_type == "kubernetes" and existing.type != pool_type:
                raise LeptonError(
                    f"work pool {pool!r} is a {existing.type} pool, not {pool_type}: "
                    f"name another pool (--pool or LEPTON_WORK_POOL)"
                )
        try:
            c.read_global_concurrency_limit_by_name(limit_name)
        except ObjectNotFound:
            try:
                c.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name, limit=1))
            except ObjectAlreadyExists:
                pass


def _check_job_variables_fit(pool: str, job_variables: dict) -> None:
    """An existing Kubernetes pool made from another template would drop variables it
    does not declare (a GPU request silently lost): refuse, naming them."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        declared = c.read_work_pool(pool).base_job_template.get("variables", {}).get("properties", {})
    missing = sorted(set(job_variables) - set(declared))
    if missing:
        raise LeptonError(
            f"work pool {pool!r} has no job variable {', '.join(missing)}: update its template with "
            f"`prefect work-pool update {pool} --base-job-template {infra_path(KUBERNETES_TEMPLATE)}`"
        )
