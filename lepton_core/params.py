"""Typed parameters: one `params.yaml`, sectioned by stage, read into frozen models.

The same models are the Prefect flow's parameters (so the UI renders them as forms)
and what `dvc.yaml` stages list under `params:`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import posixpath
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from lepton_core.errors import ParamsError

DataFormat = Literal["digits", "mnist", "cifar10", "imagefolder", "csv", "custom"]
FORMATS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagefolder", "csv", "custom")
Task = Literal["classification", "regression"]


class _Section(BaseModel):
    # allow_inf_nan=False: `train.lr=inf` or `nan` is refused here, before any work
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit seed, as torch.manual_seed takes it


class LoaderSpec(_Section):
    """The team's own data source (`data.format: custom`): a function or class, by its
    dotted path, that returns samples and labels (see lepton_core.data.loader)."""

    class_path: str = Field(
        min_length=3,
        max_length=512,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="e.g. my_data.load_demand (from data.loader.code)",
    )
    init_args: dict[str, JsonValue] = Field(default_factory=dict, description="plain values passed to it")
    code: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="folders (or .py files) of the loader's code, relative to the project or absolute; "
        "the class path starts with one of their names",
    )


class DataParams(_Section):
    """Where the raw data is, what is learned from it, and how it is split."""

    format: DataFormat = "digits"
    path: str | None = Field(None, description="raw data file or folder; unused for digits and custom")
    label_column: str = Field("label", description="label column of a CSV/Parquet table")
    task: Task = Field(
        "classification",
        description="classification: labels are classes; regression: the label column is a number to predict",
    )
    loader: LoaderSpec | None = Field(
        None, description="format custom: {class_path, init_args, code} of the function that returns the data"
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = Field(0, ge=SEED_MIN, le=SEED_MAX, description="seed of the stratified split")
    test_split: Literal["canonical", "random"] = Field(
        "canonical",
        description="canonical: the format's own test files (MNIST t10k, CIFAR-10 test_batch) "
        "are the test split when present; random: drawn like val (test_fraction)",
    )
    include_monitored: bool = Field(True, description="fold labelled batches accepted by the monitor into the dataset")

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.format == "custom":
            if self.loader is None:
                raise ValueError("data.loader {class_path, init_args, code} is required for format 'custom'")
        elif self.loader is not None:
            raise ValueError("data.loader goes with data.format=custom")
        elif self.format != "digits" and not self.path:
            raise ValueError(f"data.path is required for format {self.format!r}")
        if self.task == "regression" and self.format not in ("csv", "custom"):
            raise ValueError(f"data.task=regression needs a table (csv) or a custom loader, not {self.format!r}")
        return self


class ModelSpec(_Section):
    """The team's own model: a class (or a function returning an nn.Module) by its
    dotted path, and its constructor's plain arguments."""

    class_path: str = Field(
        min_length=3,
        max_length=512,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$",
        description="e.g. my_models.TinyResNet (from train.code) or torchvision.models.resnet18",
    )
    init_args: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="plain values; ${input_shape}, ${in_channels} and ${n_outputs} come from the prepared data",
    )


class TrainParams(_Section):
    """How the model is built and trained (never where things live)."""

    model: Literal["auto", "cnn", "mlp", "fastcnn"] | ModelSpec = Field(
        "auto",
        description="auto: cnn for images, mlp for tables; fastcnn: the fast CIFAR-shaped network; "
        "or {class_path, init_args}: the team's own model",
    )
    code: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="folders (or .py files) of the team's code, relative to the project or absolute; "
        "shipped with every model version",
    )
    requirements: list[str] = Field(
        default_factory=list, max_length=256, description="extra pip requirements the model needs"
    )
    init_from: str | None = Field(
        None,
        max_length=4096,
        description="start from these weights: champion, models:/NAME/VERSION or a checkpoint file "
        "(the optimizer starts fresh; not a resume)",
    )
    init_strict: bool = Field(
        True, description="false: load the weights that fit and list the keys left out (a new head)"
    )
    width: int = Field(32, ge=4, le=1024, description="CNN base channels / MLP hidden units")
    depth: int = Field(2, ge=1, le=8, description="MLP hidden layers / CNN convs per block")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    lr: float = Field(3e-3, gt=0, le=10, description="peak learning rate (AdamW)")
    weight_decay: float = Field(1e-2, ge=0, le=10)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0, le=10_000)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(6, ge=0, le=10_000, description="early-stopping patience in epochs; 0 = off")
    max_train_samples: int | None = Field(
        None, ge=2, le=10**12, description="train on a stratified slice of this many samples"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of initialisation and batch order")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = Field(False, description="torch.compile the model (compile time is reported apart)")
    augment: Literal["auto", "on", "off"] = Field(
        "auto",
        description="random translation and alternating flips on the device; auto: on for colour "
        "images on CUDA, off otherwise (a flipped digit is another digit)",
    )
    translate: int = Field(2, ge=0, le=8, description="largest random shift in pixels when augmenting")
    devices: int = Field(
        1,
        ge=1,
        le=64,
        description="processes per node; > 1 trains data-parallel through "
        "torchrun (DDP: gloo on the CPU, NCCL on GPUs)",
    )
    nodes: int = Field(
        1, ge=1, le=1024, description="nodes of a data-parallel run (LEPTON_DDP_RDZV names the rendezvous when > 1)"
    )


class PromoteParams(_Section):
    """The promotion gate."""

    min_accuracy: float = Field(0.9, ge=0, le=1, description="absolute floor on test accuracy")
    tolerance: float = Field(0.005, ge=0, le=1, description="largest accepted drop in accuracy vs the champion")
    alpha: float = Field(
        0.05, gt=0, lt=1, description="significance level: McNemar (classification), paired t-test (regression)"
    )
    max_rmse: float | None = Field(None, gt=0, description="regression: absolute ceiling on test RMSE")
    min_r2: float | None = Field(None, le=1, description="regression: absolute floor on test R²")
    rmse_tolerance: float = Field(
        0.02, ge=0, le=10, description="regression: largest accepted relative RMSE increase vs the champion"
    )
    mode: Literal["gate", "shadow"] = Field(
        "gate",
        description="gate: a retrain's version that passes the gate becomes @champion; shadow: it becomes "
        "@challenger, and `lepton promote` judges it on live traffic (serve.shadow) as well",
    )
    min_live_pairs: int = Field(
        100,
        ge=1,
        le=10**9,
        description="fewest labelled live requests scored by both champion and challenger that `lepton promote` "
        "judges on (fewer: refused unless --force)",
    )


class RegistryParams(_Section):
    """Names in the tracker and the registry."""

    model_name: str = Field("lepton-digits", min_length=1, max_length=256)
    experiment: str = Field("lepton", min_length=1, max_length=500)

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        # MLflow's own rules for registered model names (mlflow.utils.validation), checked
        # here so a bad name is refused before training rather than at registration
        if not v.strip() or v != v.strip():
            raise ValueError(f"{v!r}: a model name cannot be blank or start or end with spaces")
        if "/" in v or ":" in v:
            raise ValueError(f"{v!r}: a model name cannot contain '/' or ':'")
        norm = posixpath.normpath(v)
        if norm != v or norm == "." or norm.startswith(".."):
            raise ValueError(f"{v!r}: a model name cannot be a relative path such as '.' or '..'")
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"{v!r}: a model name cannot contain control characters")
        return v

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: str) -> str:
        if not v.strip() or any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"{v!r}: an experiment name cannot be blank or contain control characters")
        return v


class MonitorParams(_Section):
    """Drift monitoring: thresholds, the batch inbox, the schedule."""

    drift_share: float = Field(0.5, gt=0, le=1, description="share of drifted features that is drift")
    prediction_drift: bool = Field(
        True, description="a drifted distribution of predicted classes (or values, for regression) is drift"
    )
    max_accuracy_drop: float = Field(0.1, gt=0, le=1, description="accuracy drop (labelled batches) that is drift")
    max_rmse_increase: float = Field(
        0.25, gt=0, le=100, description="regression: relative RMSE increase (labelled batches) that is drift"
    )
    retrain_init: Literal["scratch", "champion"] = Field(
        "scratch",
        description="the retrain a drift event triggers: scratch, or champion (a warm start from its weights)",
    )
    min_rows: int = Field(50, ge=1, le=10**9, description="fewer usable rows: insufficient data")
    cooldown_minutes: float = Field(
        60, ge=0, le=525_600, description="no second drift event within this time (at most a year)"
    )
    inbox: str | None = Field(None, description="folder of new batches (default <home>/monitor/inbox)")
    prediction_log: bool = Field(
        True,
        description="with the default inbox, also check the model server's prediction log: "
        "the part files no run has checked, as one window",
    )
    cron: str = Field("0 * * * *", description="schedule of the monitor deployment (hourly)")
    keep_snapshots: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Evidently workspace: snapshots kept for the dashboard over time (the oldest go first)",
    )


class DeployParams(_Section):
    """Schedules of the deployments `lepton deploy` registers; the training pod on Kubernetes."""

    retrain_cron: str = Field("0 3 * * 1", description="cron of the scheduled retrain (weekly)")
    timezone: str = "UTC"
    # The training flow-run pod on a Kubernetes work pool (`lepton deploy --pool-type kubernetes`)
    gpus: int = Field(0, ge=0, le=64, description='NVIDIA GPUs of the training pod: limits["nvidia.com/gpu"]')
    memory: str = Field(
        "8Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
        description="memory of the training pod, requested and its limit (Kubernetes quantity)",
    )
    cpu: str = Field("2", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPUs requested by the training pod")
    image: str | None = Field(
        None, min_length=1, description="image of the training pod; null: lepton:cuda with gpus, else the pool's"
    )


class EvaluateParams(_Section):
    """The model report of every version (`report/model.html` on the training run) and
    the explanations in it."""

    report: bool = Field(True, description="write the model report, with its explanations, on every training run")
    explain_per_class: int = Field(
        2, ge=0, le=50, description="report: test samples per class explained with Integrated Gradients (images)"
    )


class CanarySpec(_Section):
    """`serve.canary`: the alias that answers a share of the requests (sticky by the
    `X-Request-Key` header when a client sends one)."""

    alias: str = Field(min_length=1, max_length=256, description="the canary's alias")
    share: float = Field(ge=0, le=1, description="the share of requests it answers")


class ServeParams(_Section):
    """`lepton serve`: batching, request limits, hot swap, the prediction log."""

    max_batch: int = Field(64, ge=1, le=4096, description="most instances the server scores in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits to fill up")
    max_instances: int = Field(1024, ge=1, le=1_000_000, description="most instances in one request")
    max_body_mb: float = Field(16.0, gt=0, le=4096, description="largest request body")
    max_queue: int = Field(
        4096, ge=1, le=10_000_000, description="most instances waiting for the batcher; beyond it a request gets 503"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request's headers must arrive within this (else 408, connection closed)"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request's body must arrive within this (else 408, connection closed)"
    )
    metrics_auth: bool = Field(False, description="/metrics takes the bearer token too (default: open, as the probes)")
    poll_seconds: float = Field(5.0, gt=0, le=86_400, description="how often the server checks where the alias points")
    workers: int = Field(
        1, ge=1, le=256, description="server processes behind the one port, each with its own batcher and model"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model runs: auto (the GPU when there is one), cpu or cuda"
    )
    threads: int = Field(
        0, ge=0, le=1024, description="torch intra-op threads per worker (0: one; more cores: more --workers)"
    )
    log_flush_seconds: float = Field(5.0, gt=0, le=86_400, description="prediction log: write a part file this often")
    log_flush_rows: int = Field(2048, ge=1, le=10_000_000, description="prediction log: or when this many rows wait")
    log_retention_days: float = Field(
        30.0,
        ge=0,
        le=36_500,
        description="prediction log: delete parts (and feedback) older than this, locally and on S3 (0: keep all)",
    )
    log_sample_rate: float = Field(
        1.0, gt=0, le=1, description="prediction log: the share of instances logged (feedback joins those logged)"
    )
    feedback_window_hours: float = Field(
        168.0, gt=0, le=87_600, description="/v1/feedback takes labels for a request id this long after it was issued"
    )
    max_explain_instances: int = Field(16, ge=1, le=10_000, description="most instances in one /v1/explain request")
    explain_timeout_s: float = Field(10.0, gt=0, le=3600, description="an /v1/explain request gets at most this long")
    shadow: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="an alias whose version scores the answered requests again, off the answer's path (its rows: "
        "the log's shadow/ part)",
    )
    shadow_share: float = Field(1.0, gt=0, le=1, description="the share of answered requests the shadow scores")
    canary: CanarySpec | None = Field(None, description="answer a share of requests with another alias's version")


class OptimizeParams(_Section):
    """`lepton optimize` and the retrain flow's optimize step: ONNX and int8 variants."""

    enabled: bool = Field(False, description="build the variants after each promotion in the retrain flow")
    variants: tuple[Literal["onnx", "int8"], ...] = Field(
        ("onnx", "int8"), min_length=1, description="which variants to build"
    )
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="largest test-accuracy loss against the PyTorch model a variant may have"
    )
    max_rmse_increase: float = Field(
        0.02, ge=0, le=10, description="regression: largest relative test-RMSE increase a variant may have"
    )
    calibration_samples: int = Field(256, ge=1, description="training samples that calibrate int8 quantisation")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads per session (default: all cores)")


class CostParams(_Section):
    """What a run used, priced: CPU-core-hours and GPU-hours at these prices."""

    currency: str = Field("USD", min_length=1, max_length=8, description="currency of the prices below")
    cpu_core_hour: float = Field(0.04, ge=0, le=1e6, description="price of one CPU core for an hour")
    gpu_hour: float = Field(2.5, ge=0, le=1e6, description="price of one GPU for an hour")
    system_metrics_seconds: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="MLflow system metrics: sampling interval of a training run (0 = off)",
    )


class SweepRange(_Section):
    """One searched param: `choices`, or a range `low`..`high` (sampled on a log scale
    with `log: true`, on a grid with `step`). Ints or floats follow the param's type."""

    choices: tuple[bool | int | float | str | None, ...] | None = Field(
        None, min_length=1, description="the values to choose from"
    )
    low: int | float | None = Field(None, description="lower end of a range")
    high: int | float | None = Field(None, description="upper end of a range")
    log: bool = Field(False, description="sample the range on a log scale")
    step: int | float | None = Field(None, gt=0, description="grid step of a linear range")

    @model_validator(mode="after")
    def _check(self) -> SweepRange:
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError("give either choices or low and high")
        if self.choices is not None:
            if self.log or self.step is not None:
                raise ValueError("log and step go with low/high, not choices")
            if len({repr(c) for c in self.choices}) != len(self.choices):
                raise ValueError("choices repeat a value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log range needs low > 0 and no step")
        return self


def _default_space() -> dict[str, SweepRange]:
    return {
        "train.lr": SweepRange(low=3e-4, high=3e-2, log=True),
        "train.width": SweepRange(choices=(16, 32, 64)),
        "train.dropout": SweepRange(low=0.0, high=0.3),
    }


class SweepParams(_Section):
    """`lepton sweep`: the search space (params paths), the metric, the budget."""

    space: dict[str, SweepRange] = Field(
        default_factory=_default_space,
        description="params path (train.KEY) -> choices, or low/high (log: on a log scale)",
    )
    metric: Literal["val_accuracy", "val_loss", "val_rmse"] = Field(
        "val_accuracy",
        description="at each trial's best epoch: val_accuracy is maximised, val_loss and val_rmse "
        "(regression) minimised",
    )
    trials: int = Field(8, ge=1, le=10_000, description="trials in all")
    parallel: int = Field(2, ge=1, le=1024, description="trials at once (threads, or Dask workers)")
    startup_trials: int = Field(4, ge=1, le=10_000, description="random trials before TPE models the space")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the sampler")


class Params(_Section):
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    promote: PromoteParams = PromoteParams()
    registry: RegistryParams = RegistryParams()
    deploy: DeployParams = DeployParams()
    monitor: MonitorParams = MonitorParams()
    serve: ServeParams = ServeParams()
    optimize: OptimizeParams = OptimizeParams()
    cost: CostParams = CostParams()
    sweep: SweepParams = SweepParams()


SECTIONS: tuple[str, ...] = tuple(Params.model_fields)
# the retrain flow takes every section but the sweep's (the sweep flow takes them all)
RETRAIN_SECTIONS: tuple[str, ...] = tuple(k for k in SECTIONS if k != "sweep")
_R = typing.TypeVar("_R")


def takes_sections(
    sections: tuple[str, ...] = SECTIONS,
) -> Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Give `fn(params: Params, **rest)` one keyword parameter per params section (with
    its default and its model as the annotation) in place of `params`, so Prefect's
    parameter schema, the dashboard's forms and the deployments list every section of
    `Params`: a section added there reaches the flows with no other edit. The sections
    a caller passes arrive as one `Params`; the flow reads `params.<section>`."""

    def wrap(fn: Callable[..., _R]) -> Callable[..., _R]:
        hints = typing.get_type_hints(fn)
        own = inspect.signature(fn)
        rest = [
            p.replace(annotation=hints.get(name, p.annotation))
            for name, p in own.parameters.items()
            if name != "params"
        ]
        fields = Params.model_fields
        signature = own.replace(
            parameters=[
                inspect.Parameter(
                    k,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=fields[k].annotation,
                    default=fields[k].get_default(call_default_factory=True),
                )
                for k in sections
            ]
            + rest,
            return_annotation=hints.get("return", own.return_annotation),
        )

        @functools.wraps(fn)
        def with_sections(*args: Any, **kwargs: Any) -> _R:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            given = dict(bound.arguments)
            params = Params(**{k: given.pop(k) for k in sections})
            return fn(params, **given)

        with_sections.__signature__ = signature  # type: ignore[attr-defined]
        with_sections.__annotations__ = {
            **{p.name: p.annotation for p in signature.parameters.values()},
            "return": signature.return_annotation,
        }
        return with_sections

    return wrap


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid params: " + "; ".join(parts)


def _is_text_field(section: str, name: str) -> bool:
    model = Params.model_fields[section].annotation
    field = getattr(model, "model_fields", {}).get(name)
    return field is not None and field.annotation in (str, str | None)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v is not None and not isinstance(v, dict):
            raise ParamsError(f"params section {k!r} must be a mapping of key: value")
        out[k] = dict(v or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ParamsError(f"bad --set {item!r}: expected section.key=value")
        if section not in SECTIONS:
            raise ParamsError(f"bad --set {item!r}: unknown section {section!r} (one of {', '.join(SECTIONS)})")
        if _is_text_field(section, name) and value.strip() not in ("null", "~", ""):
            parsed: Any = value  # a name like 123 or yes stays text
        else:
            try:
                parsed = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                parsed = value
        _set_nested(out.setdefault(section, {}), name.split("."), parsed)
    return out


def _set_nested(d: dict[str, Any], keys: list[str], value: Any) -> None:
    """d[k1][k2]... = value (`train.model.init_args.width=32`); a level that holds a
    plain value (`model: auto`) becomes a mapping."""
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


def parse_params(raw: dict[str, Any] | None, overrides: list[str] | None = None) -> Params:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ParamsError("params must be a mapping of sections")
    merged = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(merged)
    except ValidationError as e:
        raise ParamsError(_one_line(e)) from None


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read params.yaml (or defaults when `path` is None or missing) plus overrides."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path}: {_yaml_problem(e)}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ParamsError(f"{path}: unreadable params file ({e.__class__.__name__})") from None
    return parse_params(raw, overrides)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """`not valid YAML at line L, column C: <problem>` (1-based, as editors count)."""
    mark, begun = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or e.__class__.__name__
    mark = mark or begun
    if mark is None:
        return f"not valid YAML: {problem}"
    where = f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    if begun is not None and begun.line != mark.line:
        where += f" ({getattr(e, 'context', None) or 'what is unclosed'} at line {begun.line + 1})"
    return where


def check_device(train: TrainParams) -> None:
    """`train.device=cuda` on a machine without a CUDA device: one line, before any work."""
    if train.device == "cuda":
        import torch  # only here: reading params stays light

        if not torch.cuda.is_available():
            raise ParamsError(
                "train.device=cuda but torch sees no CUDA device on this machine; "
                "use train.device=auto (the GPU when there is one) or cpu"
            )


def flatten_params(params: Params) -> dict[str, str]:
    """`section.key -> str(value)` for trackers that want flat string params (all
    but `sweep`: how a search runs is its parent run's record, not a model's param)."""
    flat: dict[str, str] = {}
    for section, model in params:
        if section == "sweep":
            continue
        for key, value in model.model_dump().items():
            flat[f"{section}.{key}"] = "" if value is None else str(value)
    return flat


def _wants_text(annotation: Any) -> bool:
    """A field that takes text: str, a path, a Literal of strings, or a union with one."""
    if annotation in (str, Path):
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(_wants_text(a) for a in typing.get_args(annotation))
    return False


def _admits_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation)


def _recorded_value(section: str, key: str, raw: str) -> Any:
    """One value as `flatten_params` wrote it (`str(value)`; None as "") back to what
    the field takes. Text stays text ("1" for a str field is "1", not 1); containers,
    numbers and booleans come back through `ast.literal_eval`."""
    sec = Params.model_fields.get(section)
    model = sec.annotation if sec is not None else None
    field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
    annotation = field.annotation if field is not None else None
    if raw == "" and (annotation is None or _admits_none(annotation)):
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw
    if annotation is not None and _wants_text(annotation) and not isinstance(value, (dict, list, tuple)):
        return raw
    return value


def nested_from_flat(flat: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """`section.key -> str(value)` (what a run records, `flatten_params`) back to
    params.yaml's shape, without checking it against this code's model (a run made
    by older code may have fields this code lacks)."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in flat.items():
        section, _, key = name.partition(".")
        if key:
            out.setdefault(section, {})[key] = _recorded_value(section, key, raw)
    return out


def params_from_flat(flat: Mapping[str, str]) -> Params:
    """The Params a run recorded (`flatten_params`'s inverse; `sweep`, which runs do
    not record, is the default). ParamsError when they do not fit this code's model."""
    return parse_params(nested_from_flat(flat))
