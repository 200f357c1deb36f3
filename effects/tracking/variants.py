"""ONNX and int8 variants of a registered model version, registered beside it.

A variant is evaluated on its source version's own test split (the data version it
was trained on) with the same raw-samples contract, and registered, as an MLflow
`onnx` model that stock MLflow loads and serves, only if it answers like the PyTorch
model: its accuracy within `optimize.max_accuracy_drop` of the PyTorch model's, or,
for a regression version, its test RMSE at most `optimize.max_rmse_increase`
(relative) above it. Variant versions live in the same registered model, tagged
`lepton.variant` (onnx | int8) and `lepton.variant_of` (the source version), with
their size, CPU latency at batch 1 and 64 and accuracy delta (regression: test RMSE
and its relative increase) as tags. `@champion-onnx` and `@champion-int8` follow
`@champion`: they point at the champion's own variants, and are removed while it
has none, so an alias never names another model's variant.

A variant that cannot be made (a model the ONNX exporter refuses, a quantisation
that fails) or that answers too differently is refused: an outcome with its one-line
reason, in the result and as a tag on the source version (`lepton.variant_refused.
<kind>`), never an exception, so it never stops a promotion.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effects.data.dvc_store import dataset_path
from effects.runtime.settings import Settings, get_settings
from effects.tracking import runs, tags
from effects.tracking.onnx_variants import (
    VARIANTS,
    ExportRefused,
    OnnxPredictor,
    accuracy,
    export_error_line,
    export_onnx,
    latency,
    quantize_int8,
)
from effects.tracking.registry import CHAMPION, alias_version, predictor_of, source_version
from lepton_core.data.prepare import read_prepared
from lepton_core.errors import LeptonError
from lepton_core.evaluate import regression_metrics
from lepton_core.params import OptimizeParams
from lepton_core.predictor import BasePredictor, Predictor, Preprocessing

if TYPE_CHECKING:  # mlflow is imported lazily; only for annotations here
    from mlflow.entities.model_registry import ModelVersion

VARIANT_ARTIFACT = "variant/model.onnx"
# version tags of this module (kept with the keys they extend)


def variant_alias(kind: str, alias: str = CHAMPION) -> str:
    return f"{alias}-{kind}"


def _signature(pre: Preprocessing):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(pre.dtype), (-1, *pre.input_shape), "x")])
    specs: list[TensorSpec | ColSpec]
    if pre.regression:
        specs = [
            TensorSpec(np.dtype("float32"), (-1,), "value"),
            TensorSpec(np.dtype("float32"), (-1, 1), "output"),
        ]
    else:
        k = len(pre.classes)
        specs = [
            TensorSpec(np.dtype("float32"), (-1, k), "logits"),
            TensorSpec(np.dtype("float32"), (-1, k), "probabilities"),
            TensorSpec(np.dtype("int64"), (-1,), "label"),
        ]
    return ModelSignature(inputs=inputs, outputs=Schema(specs))


def _figure_tags(figures: dict[str, float]) -> dict[str, str]:
    """A variant version's headline figures as tags."""
    if "test_rmse" in figures:
        head = {
            tags.TASK: "regression",
            tags.TEST_RMSE: f"{figures['test_rmse']:.6g}",
            tags.TEST_R2: f"{figures['test_r2']:.4f}",
            tags.RMSE_INCREASE: f"{figures['rmse_increase']:+.4f}",
        }
    else:
        head = {
            tags.TEST_ACCURACY: f"{figures['test_accuracy']:.4f}",
            tags.ACCURACY_DELTA: f"{figures['accuracy_delta']:+.4f}",
        }
    return {
        **head,
        tags.SIZE_BYTES: str(int(figures["size_bytes"])),
        tags.LATENCY_B1_MS: f"{figures['latency_b1_ms']:.3f}",
        tags.LATENCY_B64_MS: f"{figures['latency_b64_ms']:.3f}",
    }


def _register(
    c,
    s: Settings,
    model_name: str,
    mv,
    kind: str,
    path: Path,
    pre: Preprocessing,
    example: np.ndarray,
    figures: dict,
    experiment_id: str,
) -> str:
    import mlflow
    import onnx

    mlflow.set_tracking_uri(s.tracking_uri)
    mlflow.set_registry_uri(s.tracking_uri)
    run = c.create_run(
        experiment_id,
        run_name=f"v{mv.version}-{kind}",
        tags={
            "mlflow.parentRunId": mv.run_id,  # nested under the training run in the UI
            tags.VARIANT: kind,
            tags.VARIANT_OF: str(mv.version),
            tags.DATA_VERSION: mv.tags.get(tags.DATA_VERSION, ""),
        },
    )
    rid = run.info.run_id
    ts = int(time.time() * 1000)
    c.log_batch(rid, metrics=[runs.Metric(k, float(v), ts, 0) for k, v in figures.items()])
    with tempfile.TemporaryDirectory(prefix="lepton-variant-") as d:
        named = Path(d) / Path(VARIANT_ARTIFACT).name
        shutil.copyfile(path, named)
        c.log_artifact(rid, str(named), str(Path(VARIANT_ARTIFACT).parent))
    with mlflow.start_run(run_id=rid):
        info = mlflow.onnx.log_model(
            onnx.load(str(path)),
            name="model",
            signature=_signature(pre),
            input_example=example[:4],
            # CPU: what the variants are for (and no warning
            # about a missing CUDA provider on every load)
            onnx_execution_providers=["CPUExecutionProvider"],
        )
    c.set_terminated(rid, "FINISHED")
    version_tags = {
        tags.VARIANT: kind,
        tags.VARIANT_OF: str(mv.version),
        tags.RUN_ID: rid,
        tags.DATA_VERSION: mv.tags.get(tags.DATA_VERSION, ""),
        **_figure_tags(figures),
    }
    new = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
    outputs = "value, output" if pre.regression else "logits, probabilities, label"
    c.update_model_version(
        model_name,
        str(new.version),
        description=(
            f"The {kind} variant of v{mv.version} (ONNX; raw samples in; outputs {outputs})."
            "\n\n```json\n" + json.dumps({k: round(v, 6) for k, v in figures.items()}, indent=1) + "\n```"
        ),
    )
    return str(new.version)


# ---------------------------------------------------------------- checking a variant
def _score(p: BasePredictor, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Test accuracy, or (regression) test RMSE and R² in the target's units."""
    if p.regression:
        m = regression_metrics(y, p.values(x))
        return {"test_rmse": float(m["rmse"]), "test_r2": float(m["r2"])}
    return {"test_accuracy": accuracy(p.logits(x), y)}


def _compare(kind: str, fig: dict[str, float], base: dict[str, float], params: OptimizeParams) -> str | None:
    """Add the variant's delta against the PyTorch model to `fig`; the refusal's
    reason when it is beyond the tolerance, else None."""
    if "test_rmse" in base:
        b, v = base["test_rmse"], fig["test_rmse"]
        fig["rmse_increase"] = (v - b) / b if b > 0 else (0.0 if v <= b else float("inf"))
        if fig["rmse_increase"] > params.max_rmse_increase:
            return (
                f"{kind} variant refused: test RMSE {v:.4g} is {fig['rmse_increase']:.2%} above the PyTorch "
                f"model's {b:.4g} (optimize.max_rmse_increase = {params.max_rmse_increase:g})"
            )
        return None
    b, acc = base["test_accuracy"], fig["test_accuracy"]
    fig["accuracy_delta"] = acc - b
    if b - acc > params.max_accuracy_drop:
        return (
            f"{kind} variant refused: accuracy {acc:.4f} is {b - acc:.4f} below the PyTorch model's "
            f"{b:.4f} (optimize.max_accuracy_drop = {params.max_accuracy_drop:g})"
        )
    return None


def _percent(x: float) -> str:
    """+0.04%; a change too small to show is +0.00% (never -0.00%)."""
    shown = f"{x:+.2%}"
    return "+0.00%" if shown == "-0.00%" else shown


def _registered_line(kind: str, v: str, fig: dict[str, float]) -> str:
    if "test_rmse" in fig:
        score = f"test RMSE {fig['test_rmse']:.4g} ({_percent(fig['rmse_increase'])})"
    else:
        score = f"accuracy {fig['test_accuracy']:.4f} ({fig['accuracy_delta']:+.4f})"
    return (
        f"{kind} variant registered as v{v}: {score}, "
        f"{fig['size_bytes'] / 1024:.1f} KiB, {fig['latency_b1_ms']:.2f} ms at batch 1"
    )


@dataclass
class _Source:
    """The version the variants are made from, and what they are checked on."""

    mv: Any
    predictor: Predictor
    x_test: np.ndarray
    y_test: np.ndarray
    calibration: np.ndarray
    base: dict[str, float]


def _source(c, s: Settings, model_name: str, version: str | None, params: OptimizeParams) -> _Source:
    mv = source_version(c, model_name, version, "optimize {source}")
    data_version = mv.tags.get(tags.DATA_VERSION)
    if not data_version:
        raise LeptonError(f"v{mv.version} has no {tags.DATA_VERSION} tag: its test split is unknown")
    predictor = predictor_of(mv, s)
    prepared = read_prepared(dataset_path(data_version, s))
    x_test, y_test = prepared.x["test"], prepared.y["test"]
    rng = np.random.default_rng(0)
    train = prepared.x["train"]
    calib = train[rng.choice(len(train), size=min(params.calibration_samples, len(train)), replace=False)]
    return _Source(mv, predictor, x_test, y_test, calib, _score(predictor, x_test, y_test))


def _build(kind: str, src: _Source, fp32: Path | ExportRefused, folder: Path, params: OptimizeParams):
    """The variant's file and its figures on the test split; or, when it cannot be made
    or run, the refusal's one-line reason."""
    if isinstance(fp32, ExportRefused):
        what = "the ONNX exporter cannot export this model" if kind == "onnx" else "no ONNX graph to quantise"
        return f"{kind} variant refused: {what} ({fp32})"
    try:
        path = fp32 if kind == "onnx" else quantize_int8(fp32, folder / "int8.onnx", src.calibration)
        vp = OnnxPredictor(path, threads=params.threads)
        fig = _score(vp, src.x_test, src.y_test)
    except Exception as e:  # noqa: BLE001  (a graph ONNX Runtime cannot quantise or run: that variant's refusal)
        step = "quantisation" if kind == "int8" else "ONNX Runtime"
        return f"{kind} variant refused: {step} failed ({export_error_line(e)})"
    fig.update(
        size_bytes=float(path.stat().st_size),
        latency_b1_ms=latency(vp.logits, src.x_test[:64], 1).ms,
        latency_b64_ms=latency(vp.logits, src.x_test[:64], 64).ms,
    )
    return path, fig


def _note_refusal(c, model_name: str, mv, kind: str, reason: str | None) -> None:
    """The source version records why its variant was refused (and forgets an old
    refusal once a variant of that kind is registered)."""
    key = tags.VARIANT_REFUSED_PREFIX + kind
    if reason is not None:
        c.set_model_version_tag(model_name, str(mv.version), key, reason[:5000])
    elif key in (mv.tags or {}):
        c.delete_model_version_tag(model_name, str(mv.version), key)


def optimize_version(
    model_name: str,
    version: str | None,
    params: OptimizeParams,
    settings: Settings | None = None,
    echo=lambda line: None,
) -> dict:
    """Build, check and register the variants of `version` (default: the champion).
    Returns {"version", "task", "torch_accuracy" (or "torch_rmse", "torch_r2"),
    "variants": [{"variant", "registered", "version"?, "reason", figures...}]}; a
    refused variant is a row with registered False and its one-line reason."""
    s = settings or get_settings()
    c = runs.client(s)
    src = _source(c, s, model_name, version, params)
    mv, pre = src.mv, src.predictor.preprocessing
    b = src.base
    head = (
        f"test RMSE {b['test_rmse']:.4g}, R² {b['test_r2']:.4f}"
        if pre.regression
        else f"test accuracy {b['test_accuracy']:.4f}"
    )
    echo(f"v{mv.version} (PyTorch): {head} on {len(src.y_test)} samples")
    experiment_id = c.get_run(mv.run_id).info.experiment_id
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lepton-optimize-") as d:
        fp32: Path | ExportRefused
        try:
            fp32 = export_onnx(src.predictor, Path(d) / "onnx.onnx", src.x_test[:4])
        except ExportRefused as e:
            fp32 = e
        for kind in params.variants:
            built = _build(kind, src, fp32, Path(d), params)
            row: dict[str, Any] = {"variant": kind}
            if isinstance(built, str):
                row.update(registered=False, reason=built)
            else:
                path, fig = built
                refused = _compare(kind, fig, src.base, params)
                row.update(fig)
                if refused is not None:
                    row.update(registered=False, reason=refused)
                else:
                    v = _register(c, s, model_name, mv, kind, path, pre, src.x_test, fig, experiment_id)
                    row.update(registered=True, version=v, reason=_registered_line(kind, v, fig))
            _note_refusal(c, model_name, mv, kind, None if row["registered"] else row["reason"])
            echo(row["reason"])
            out.append(row)
    follow_champion(model_name, s)
    task = "regression" if pre.regression else "classification"
    return {
        "version": str(mv.version),
        "task": task,
        **{"torch_" + k.removeprefix("test_"): v for k, v in src.base.items()},
        "variants": out,
    }


def variants_of(c, model_name: str, version: str) -> dict[str, ModelVersion]:
    """The newest registered variant of each kind for one source version."""
    found: dict[str, ModelVersion] = {}
    for mv in c.search_model_versions(f"name='{model_name}'"):
        kind = mv.tags.get(tags.VARIANT)
        if kind and mv.tags.get(tags.VARIANT_OF) == str(version):
            if kind not in found or int(mv.version) > int(found[kind].version):
                found[kind] = mv
    return found


def follow_champion(model_name: str, settings: Settings | None = None) -> dict[str, str | None]:
    """Point `@champion-<variant>` at the champion's own variants; remove the aliases
    it has no variant for. Returns {alias: version, or None for a removed alias}; an
    alias that neither exists nor should is left out (no variants: {})."""
    s = settings or get_settings()
    c = runs.client(s)
    champ = alias_version(c, model_name, CHAMPION)
    found = variants_of(c, model_name, str(champ.version)) if champ is not None else {}
    moved: dict[str, str | None] = {}
    for kind in VARIANTS:
        alias = variant_alias(kind)
        current = alias_version(c, model_name, alias)
        if kind in found:
            if current is None or str(current.version) != str(found[kind].version):
                c.set_registered_model_alias(model_name, alias, str(found[kind].version))
            moved[alias] = str(found[kind].version)
        else:
            if current is not None:
                c.delete_registered_model_alias(model_name, alias)
                moved[alias] = None
    return moved


def variant_predictor(mv, settings: Settings | None = None, threads: int | None = None) -> OnnxPredictor:
    """The ONNX predictor of a variant version (its run's `variant/model.onnx`), with
    `threads` intra-op threads (None: ONNX Runtime's default, all cores)."""
    s = settings or get_settings()
    c = runs.client(s)
    local = s.home / "runs" / mv.run_id / "variant" / "model.onnx"
    path = local if local.exists() else runs.run_artifact(c, mv.run_id, VARIANT_ARTIFACT, s.home)
    return OnnxPredictor(path, threads=threads)
