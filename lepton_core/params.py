"""Typed parameters: one `params.yaml`, sectioned by stage, read into frozen models.

The same models are the Prefect flow's parameters (so the UI renders them as forms)
and what `dvc.yaml` stages list under `params:`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lepton_core.errors import ParamsError

DataFormat = Literal["digits", "mnist", "cifar10", "imagefolder", "csv"]
FORMATS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagefolder", "csv")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataParams(_Section):
    """Where the raw data is and how it is split."""

    format: DataFormat = "digits"
    path: str | None = Field(None, description="raw data file or folder; unused for digits")
    label_column: str = Field("label", description="label column of a CSV/Parquet table")
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    seed: int = Field(0, description="seed of the stratified split")
    include_monitored: bool = Field(
        True, description="fold labelled batches accepted by the monitor into the dataset"
    )

    @model_validator(mode="after")
    def _check(self) -> "DataParams":
        if self.format != "digits" and not self.path:
            raise ValueError(f"data.path is required for format {self.format!r}")
        return self


class TrainParams(_Section):
    """How the model is built and trained (never where things live)."""

    model: Literal["auto", "cnn", "mlp"] = "auto"
    width: int = Field(32, ge=4, le=1024, description="CNN base channels / MLP hidden units")
    depth: int = Field(2, ge=1, le=8, description="MLP hidden layers / CNN convs per block")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    schedule: Literal["cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    patience: int = Field(6, ge=0, description="early-stopping patience in epochs; 0 = off")
    max_train_samples: int | None = Field(
        None, ge=2, description="train on a stratified slice of this many samples"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = Field(False, description="torch.compile the model (compile time is reported apart)")


class PromoteParams(_Section):
    """The promotion gate."""

    min_accuracy: float = Field(0.9, ge=0, le=1, description="absolute floor on test accuracy")
    tolerance: float = Field(
        0.005, ge=0, le=1, description="largest accepted drop in accuracy vs the champion"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="McNemar significance level")


class RegistryParams(_Section):
    """Names in the tracker and the registry."""

    model_name: str = Field("lepton-digits", min_length=1)
    experiment: str = Field("lepton", min_length=1)


class MonitorParams(_Section):
    """Drift monitoring: thresholds, the batch inbox, the schedule."""

    drift_share: float = Field(0.5, gt=0, le=1, description="share of drifted features that is drift")
    prediction_drift: bool = Field(True, description="a drifted predicted-class distribution is drift")
    max_accuracy_drop: float = Field(0.1, gt=0, le=1, description="accuracy drop (labelled batches) that is drift")
    min_rows: int = Field(50, ge=1, description="fewer usable rows: insufficient data")
    cooldown_minutes: float = Field(60, ge=0, description="no second drift event within this time")
    inbox: str | None = Field(None, description="folder of new batches (default <home>/monitor/inbox)")
    prediction_log: bool = Field(
        True, description="with the default inbox, also check the model server's prediction log: "
        "the part files no run has checked, as one window")
    cron: str = Field("0 * * * *", description="schedule of the monitor deployment (hourly)")


class DeployParams(_Section):
    """Schedules of the deployments `lepton deploy` registers."""

    retrain_cron: str = Field("0 3 * * 1", description="cron of the scheduled retrain (weekly)")
    timezone: str = "UTC"


class ServeParams(_Section):
    """`lepton serve`: batching, request limits, hot swap, the prediction log."""

    max_batch: int = Field(64, ge=1, le=4096, description="most instances the server scores in one forward pass")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits to fill up")
    max_instances: int = Field(1024, ge=1, description="most instances in one request")
    max_body_mb: float = Field(16.0, gt=0, description="largest request body")
    poll_seconds: float = Field(5.0, gt=0, description="how often the server checks where the alias points")
    log_flush_seconds: float = Field(5.0, gt=0, description="prediction log: write a part file this often")
    log_flush_rows: int = Field(2048, ge=1, description="prediction log: or when this many rows wait")


class Params(_Section):
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    promote: PromoteParams = PromoteParams()
    registry: RegistryParams = RegistryParams()
    deploy: DeployParams = DeployParams()
    monitor: MonitorParams = MonitorParams()
    serve: ServeParams = ServeParams()


SECTIONS: tuple[str, ...] = tuple(Params.model_fields)


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
            raise ParamsError(
                f"bad --set {item!r}: unknown section {section!r} (one of {', '.join(SECTIONS)})"
            )
        if _is_text_field(section, name) and value.strip() not in ("null", "~", ""):
            parsed: Any = value  # a name like 123 or yes stays text
        else:
            try:
                parsed = yaml.safe_load(value) if value.strip() else None
            except yaml.YAMLError:
                parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


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
            raise ParamsError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    return parse_params(raw, overrides)


def flatten_params(params: Params) -> dict[str, str]:
    """`section.key -> str(value)` for trackers that want flat string params."""
    flat: dict[str, str] = {}
    for section, model in params:
        for key, value in model.model_dump().items():
            flat[f"{section}.{key}"] = "" if value is None else str(value)
    return flat
