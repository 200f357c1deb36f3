"""The search space of `lepton sweep`, read from params (pure: no search library here).

`sweep.space` maps params paths (`train.lr`) to choices or ranges. `search_space`
checks every path and every value against the params models before any work and
returns one `Dimension` per path (int, float or categorical, as the param's own
type says); `with_values` makes one trial's params from the base params and the
values a search picked.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lepton_core.errors import ParamsError
from lepton_core.params import Params, SweepParams, SweepRange, TrainParams

if TYPE_CHECKING:  # the training loop (torch) is not needed to check a space
    from lepton_core.train import TrainResult

LOCAL = "local"  # `--dask local`: a temporary LocalCluster
# tcp://host:8786, tls://..., [::1]:8786 or host:port (Dask's default scheme is tcp)
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+]*://)?(?:[^\s/:\[\]]+|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")
# Trials share one prepared dataset, so only the training can vary between them.
SEARCHABLE: tuple[str, ...] = ("train",)
GOALS: dict[str, Literal["maximize", "minimize"]] = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "val_rmse": "minimize",  # regression, in the target's units
}


@dataclass(frozen=True)
class Dimension:
    """One searched param."""

    path: str  # "train.lr"
    kind: Literal["int", "float", "categorical"]
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    @property
    def section(self) -> str:
        return self.path.partition(".")[0]

    @property
    def name(self) -> str:
        return self.path.partition(".")[2]

    def describe(self) -> str:
        """`one of [16, 32, 64]`, `log-uniform float in [0.0003, 0.03]`, ..."""
        if self.kind == "categorical":
            return "one of [" + ", ".join("null" if c is None else str(c) for c in self.choices) + "]"
        scale = "log-uniform" if self.log else "uniform"
        grid = f" step {self.step}" if self.step is not None else ""
        return f"{scale} {self.kind} in [{self.low}, {self.high}]{grid}"


def goal(sweep: SweepParams) -> Literal["maximize", "minimize"]:
    return GOALS[sweep.metric]


def objective(result: TrainResult, metric: str) -> float:
    """A trial's value of the sweep's metric at its best epoch: val_accuracy, val_loss,
    or val_rmse (regression, in the target's units)."""
    if metric == "val_accuracy":
        return float(result.best_val_accuracy)
    if metric == "val_rmse" and result.best_val_rmse is not None:
        return float(result.best_val_rmse)
    best = next((h for h in result.history if int(h["epoch"]) == result.best_epoch), {})
    if metric not in best:  # check_metric refuses a metric the task has not before any trial
        raise ParamsError(f"sweep.metric={metric}: the training recorded no {metric}")
    return float(best[metric])


def _number_kind(annotation: Any) -> Literal["int", "float"] | None:
    """'int' or 'float' for a numeric param (`int | None` counts as int), else None."""
    args = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    kinds = {a for a in args if a is not type(None)}
    if kinds == {int}:
        return "int"
    if kinds == {float}:
        return "float"
    return None


def _one_line(err: ValidationError) -> str:
    return "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())


def _check_value(base: TrainParams, path: str, name: str, value: Any) -> None:
    try:
        TrainParams.model_validate({**base.model_dump(), name: value})
    except ValidationError as e:
        raise ParamsError(f"sweep.space: {path}={value!r} is not a valid value ({_one_line(e)})") from None


def _dimension(path: str, rng: SweepRange, base: TrainParams) -> Dimension:
    section, dot, name = path.partition(".")
    if not dot or section not in Params.model_fields:
        raise ParamsError(f"sweep.space: {path!r} is not a params path (expected train.KEY, e.g. train.lr)")
    if section not in SEARCHABLE:
        raise ParamsError(
            f"sweep.space: {path!r}: only {', '.join(s + '.*' for s in SEARCHABLE)} params can be "
            "searched (every trial trains on the one prepared dataset)"
        )
    field = TrainParams.model_fields.get(name)
    if field is None:
        raise ParamsError(
            f"sweep.space: unknown params path {path!r} (train has {', '.join(TrainParams.model_fields)})"
        )
    if rng.choices is not None:
        for c in rng.choices:
            _check_value(base, path, name, c)
        return Dimension(path, "categorical", choices=tuple(rng.choices))
    kind = _number_kind(field.annotation)
    if kind is None:
        raise ParamsError(f"sweep.space: {path} is not a number: give its choices instead of low/high")
    low, high = rng.low, rng.high
    if low is None or high is None:  # SweepRange itself refuses that; kept for the types
        raise ParamsError(f"sweep.space: {path}: a range needs both low and high")
    if kind == "int":
        for v in (rng.low, rng.high, rng.step):
            if v is not None and float(v) != int(v):
                raise ParamsError(f"sweep.space: {path} is an int param: low, high and step must be whole numbers")
    for v in (low, high):
        _check_value(base, path, name, int(v) if kind == "int" else float(v))
    cast = int if kind == "int" else float
    return Dimension(
        path,
        kind,
        low=cast(low),
        high=cast(high),
        log=rng.log,
        step=None if rng.step is None else cast(rng.step),
    )


def check_metric(sweep: SweepParams, task: str) -> None:
    """The sweep's metric must exist for the task: a regression model has no accuracy,
    a classifier no RMSE (one-line ParamsError naming the one to use)."""
    if task == "regression" and sweep.metric == "val_accuracy":
        raise ParamsError(
            "sweep.metric=val_accuracy: a regression model (data.task=regression) has no accuracy; "
            "set sweep.metric=val_rmse (or val_loss)"
        )
    if task != "regression" and sweep.metric == "val_rmse":
        raise ParamsError(
            "sweep.metric=val_rmse is for regression (data.task=regression); "
            "set sweep.metric=val_accuracy (or val_loss) for a classifier"
        )


def search_space(sweep: SweepParams, base: Params | None = None) -> tuple[Dimension, ...]:
    """The checked search space, one Dimension per path (sorted by path); a
    ParamsError (one line) names the first path or value that cannot be searched,
    or a metric the task has not (`check_metric`)."""
    params = base or Params()
    check_metric(sweep, params.data.task)
    if not sweep.space:
        raise ParamsError("sweep.space is empty: give at least one params path to search (e.g. train.lr)")
    return tuple(_dimension(path, sweep.space[path], params.train) for path in sorted(sweep.space))


def with_values(base: Params, values: dict[str, Any]) -> Params:
    """The params of one trial: `base` with the searched paths set to `values`."""
    raw = base.model_dump()
    for path, value in values.items():
        section, _, name = path.partition(".")
        raw[section][name] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(f"trial params {values}: {_one_line(e)}") from None


def space_record(dims: tuple[Dimension, ...]) -> dict[str, dict[str, Any]]:
    """The space as plain data (for the parent run's search_space.json)."""
    out = {}
    for d in dims:
        entry: dict[str, Any] = {"kind": d.kind, "describe": d.describe()}
        if d.kind == "categorical":
            entry["choices"] = list(d.choices)
        else:
            entry.update(low=d.low, high=d.high, log=d.log, step=d.step)
        out[d.path] = entry
    return out


def check_dask_address(address: str | None) -> str | None:
    """None (threads; also for an empty form field), 'local' (a temporary
    LocalCluster) or a scheduler address."""
    address = (address or "").strip()
    if not address or address == LOCAL:
        return address or None
    if not _ADDRESS.match(address):
        raise ParamsError(f"--dask {address!r}: expected 'local' or a scheduler address such as tcp://HOST:8786")
    return address
