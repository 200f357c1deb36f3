"""ONNX and int8 variants of a registered model version, registered beside it.

A variant is evaluated on its source version's own test split (the data version it
was trained on) with the same raw-samples contract, and registered, as an MLflow
`onnx` model that stock MLflow loads and serves, only if its accuracy is within
`optimize.max_accuracy_drop` of the PyTorch model's. Variant versions live in the
same registered model, tagged `lepton.variant` (onnx | int8) and `lepton.variant_of`
(the source version), with their size, CPU latency at batch 1 and 64 and accuracy
delta as tags. `@champion-onnx` and `@champion-int8` follow `@champion`: they point
at the champion's own variants, and are removed while it has none, so an alias never
names another model's variant.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from effects.data.dvc_store import dataset_path
from effects.runtime.settings import Settings, get_settings
from effects.tracking import runs, tags
from effects.tracking.onnx_variants import VARIANTS, OnnxPredictor, accuracy, export_onnx, latency, quantize_int8
from effects.tracking.registry import CHAMPION, alias_version, predictor_of, source_version
from lepton_core.data.prepare import read_prepared
from lepton_core.errors import LeptonError
from lepton_core.params import OptimizeParams

if TYPE_CHECKING:  # mlflow is imported lazily; only for annotations here
    from mlflow.entities.model_registry import ModelVersion

VARIANT_ARTIFACT = "variant/model.onnx"


def variant_alias(kind: str, alias: str = CHAMPION) -> str:
    return f"{alias}-{kind}"


def _signature(pre, kind_example: np.ndarray):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    k = len(pre.classes)
    inputs = Schema([TensorSpec(np.dtype(pre.dtype), (-1, *pre.input_shape), "x")])
    outputs = Schema(
        [
            TensorSpec(np.dtype("float32"), (-1, k), "logits"),
            TensorSpec(np.dtype("float32"), (-1, k), "probabilities"),
            TensorSpec(np.dtype("int64"), (-1,), "label"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _register(
    c,
    s: Settings,
    model_name: str,
    mv,
    kind: str,
    path: Path,
    pre,
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
            signature=_signature(pre, example),
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
        tags.TEST_ACCURACY: f"{figures['test_accuracy']:.4f}",
        tags.ACCURACY_DELTA: f"{figures['accuracy_delta']:+.4f}",
        tags.SIZE_BYTES: str(int(figures["size_bytes"])),
        tags.LATENCY_B1_MS: f"{figures['latency_b1_ms']:.3f}",
        tags.LATENCY_B64_MS: f"{figures['latency_b64_ms']:.3f}",
    }
    new = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
    c.update_model_version(
        model_name,
        str(new.version),
        description=(
            f"The {kind} variant of v{mv.version} (ONNX; raw samples in; outputs logits, probabilities, label)."
            "\n\n```json\n" + json.dumps({k: round(v, 6) for k, v in figures.items()}, indent=1) + "\n```"
        ),
    )
    return str(new.version)


def optimize_version(
    model_name: str,
    version: str | None,
    params: OptimizeParams,
    settings: Settings | None = None,
    echo=lambda line: None,
) -> dict:
    """Build, check and register the variants of `version` (default: the champion).
    Returns {"version", "variants": [{"variant", "registered", "version"?, "reason", figures...}]}."""
    s = settings or get_settings()
    c = runs.client(s)
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
    base = accuracy(predictor.logits(x_test), y_test)
    echo(f"v{mv.version} (PyTorch): test accuracy {base:.4f} on {len(y_test)} samples")
    experiment_id = c.get_run(mv.run_id).info.experiment_id
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lepton-optimize-") as d:
        fp32 = export_onnx(predictor, Path(d) / "onnx.onnx", x_test[:4])
        for kind in params.variants:
            path = fp32 if kind == "onnx" else quantize_int8(fp32, Path(d) / "int8.onnx", calib)
            vp = OnnxPredictor(path, threads=params.threads)
            acc = accuracy(vp.logits(x_test), y_test)
            figures = {
                "test_accuracy": acc,
                "accuracy_delta": acc - base,
                "size_bytes": float(path.stat().st_size),
                "latency_b1_ms": latency(vp.logits, x_test[:64], 1).ms,
                "latency_b64_ms": latency(vp.logits, x_test[:64], 64).ms,
            }
            row: dict[str, Any] = {"variant": kind, **figures}
            drop = base - acc
            if drop > params.max_accuracy_drop:
                row.update(
                    registered=False,
                    reason=(
                        f"{kind} variant refused: accuracy {acc:.4f} is {drop:.4f} below the PyTorch model's "
                        f"{base:.4f} (optimize.max_accuracy_drop = {params.max_accuracy_drop:g})"
                    ),
                )
            else:
                v = _register(c, s, model_name, mv, kind, path, predictor.preprocessing, x_test, figures, experiment_id)
                row.update(
                    registered=True,
                    version=v,
                    reason=(
                        f"{kind} variant registered as v{v}: accuracy {acc:.4f} ({acc - base:+.4f}), "
                        f"{figures['size_bytes'] / 1024:.1f} KiB, {figures['latency_b1_ms']:.2f} ms at batch 1"
                    ),
                )
            echo(row["reason"])
            out.append(row)
    follow_champion(model_name, s)
    return {"version": str(mv.version), "torch_accuracy": base, "variants": out}


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


def variant_predictor(mv, settings: Settings | None = None) -> OnnxPredictor:
    """The ONNX predictor of a variant version (its run's `variant/model.onnx`)."""
    s = settings or get_settings()
    c = runs.client(s)
    local = s.home / "runs" / mv.run_id / "variant" / "model.onnx"
    path = local if local.exists() else runs.run_artifact(c, mv.run_id, VARIANT_ARTIFACT, s.home)
    return OnnxPredictor(path)
