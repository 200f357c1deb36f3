"""`lepton explain`: attributions of a version's answers (Integrated Gradients).

Images: one PNG per sample with its attribution map over it (red pushes towards the
predicted class, blue away from it) and `attributions.npy` of every map, in the
samples' shape. Tables: `attributions.parquet`, one column per feature, one row per
sample. Everything is computed before anything is written, and the folder appears
whole or not at all."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import typer

from lepton.cli import render
from lepton.cli.options import ParamsOpt, load_params
from lepton_core.errors import LeptonError, ParamsError
from lepton_core.params import FORMATS

MAP_SIDE_PX = 128  # a map PNG is upscaled (nearest neighbour) to at least this many pixels a side
MAP_ALPHA = 0.75  # opacity of the strongest attribution over the image


def explain(
    args: list[str] = typer.Argument(
        ...,
        metavar="[VERSION] DATA",
        help="model version number (default: the champion) and a file or folder of samples: "
        "a .npy array, or any format `lepton predict` reads",
    ),
    out: Path | None = typer.Option(
        None, "--out", metavar="DIR", help="new folder for the maps or attributions (default: explain-vVERSION)"
    ),
    model: str | None = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    fmt: str | None = typer.Option(None, "--format", help=f"{'|'.join(FORMATS)} (default: detected)"),
    limit: int = typer.Option(100, "--limit", min=1, help="explain the first N samples"),
    steps: int = typer.Option(32, "--steps", min=2, max=1024, help="Integrated Gradients steps along the path"),
    params_file: Path | None = ParamsOpt,
):
    """Explain the answers of VERSION (default: the champion) on DATA: Integrated Gradients
    attributions of the input's shape, as maps over the images or one column per feature."""
    version, data = _version_and_data(args)
    if fmt is not None and fmt not in FORMATS:
        raise ParamsError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not data.exists():
        raise LeptonError(f"{data}: no such file or folder")
    if out is not None:
        _check_free(out)
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    params = load_params(params_file, [], s)
    require(s, ("mlflow", "s3"))
    from effects.tracking import runs
    from effects.tracking.registry import predictor_of, source_version

    name = model or params.registry.model_name
    mv = source_version(runs.client(s), name, version, "explain {source}")
    dest = out if out is not None else Path(f"explain-v{mv.version}")
    _check_free(dest)
    predictor = predictor_of(mv, s)
    x, total = _samples(data, fmt, predictor.preprocessing, limit)
    result = _explain(predictor, x, steps)
    result.update(model=name, version=str(mv.version), total=total, steps=steps, out=str(dest))
    from lepton_core.fileio import publish_dir

    publish_dir(dest.resolve(), lambda tmp: _write(tmp, result, x))
    for line in render.explain_lines(result):
        typer.echo(line)


def _version_and_data(args: list[str]) -> tuple[str | None, Path]:
    if len(args) > 2:
        raise LeptonError(f"expected [VERSION] DATA, got {len(args)} arguments")
    if len(args) == 1:
        return None, Path(args[0])
    if not args[0].isdigit():
        raise LeptonError(f"{args[0]!r} is not a model version number")
    return args[0], Path(args[1])


def _check_free(dest: Path) -> None:
    """Nothing is ever overwritten: the folder must be new (or empty)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise LeptonError(f"{dest} already exists; remove it or choose another --out")


def _samples(data: Path, fmt: str | None, pre: Any, limit: int) -> tuple[Any, int]:
    """The first `limit` raw samples of `data` (a table as a DataFrame of its
    feature columns) and how many the data holds."""
    if data.suffix.lower() == ".npy" and fmt is None:
        try:
            x = np.load(data, allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise LeptonError(f"{data}: not a .npy array of numbers ({str(e).splitlines()[0]})") from None
        if x.ndim == 0:
            raise LeptonError(f"{data}: a single number, not an array of samples")
        return np.asarray(x[:limit]), len(x)
    import pandas as pd

    from effects.data.data_source import detect_format
    from lepton_core.data.formats import load_raw
    from lepton_core.errors import DataError

    fmt = detect_format(data, fmt)
    if fmt == "predlog":
        raise LeptonError(f"{data}: a prediction log holds predictions already, not samples")
    try:
        raw = load_raw(fmt, data, pre.label_column, labelled=False)
    except DataError as e:
        raise DataError(str(e)) from None
    if raw.kind == "tabular":
        return pd.DataFrame(raw.x[:limit], columns=raw.feature_names), len(raw.x)
    return raw.x[:limit], len(raw.x)


def _explain(predictor: Any, x: Any, steps: int) -> dict:
    """Attributions and answers; a dict of plain values for `render.explain_lines`."""
    from lepton_core.explain import attributions

    attr = attributions(predictor, x, steps=steps)
    pred = predictor.predict(x)
    pre = predictor.preprocessing
    answers = [f"{v:.4g}" for v in pred.values] if pred.values is not None else list(pred.names)
    result: dict = {"kind": pre.kind, "n": len(attr), "attributions": attr, "answers": answers}
    if pre.kind == "tabular":
        names = list(pre.feature_names) or [f"f{i}" for i in range(attr.shape[1])]
        mean_abs = np.abs(attr).mean(0) if len(attr) else np.zeros(len(names))
        result["features"] = names
        result["top"] = sorted(zip(names, mean_abs.tolist(), strict=True), key=lambda t: -t[1])
    return result


def _write(folder: Path, result: dict, x: Any) -> None:
    attr = result["attributions"]
    if result["kind"] == "tabular":
        import pandas as pd

        pd.DataFrame(attr.astype(np.float64), columns=result["features"]).to_parquet(
            folder / "attributions.parquet", index=False
        )
        return
    np.save(folder / "attributions.npy", attr)
    pictures = np.asarray(x)
    for i, answer in enumerate(result["answers"]):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", answer)[:40]
        (folder / f"{i:04d}-{safe}.png").write_bytes(overlay_png(pictures[i], attr[i]))


def overlay_png(image: np.ndarray, attr: np.ndarray) -> bytes:
    """One sample ((H, W) or (C, H, W)) with its attributions (same shape) over it:
    the image in grey, red where the attribution is positive, blue where negative,
    more opaque where it is larger (scaled to the sample's largest)."""
    from PIL import Image

    img = np.asarray(image, np.float64)
    a = np.asarray(attr, np.float64)
    if img.ndim == 3:  # (C, H, W): channels averaged into one grey picture and one map
        img, a = img.mean(0), a.sum(0)
    span = img.max() - img.min()
    grey = (img - img.min()) / span if span > 0 else np.zeros_like(img)  # (H, W) in [0, 1]
    peak = np.abs(a).max()
    a = a / peak if peak > 0 else a  # (H, W) in [-1, 1]
    colour = np.where(a[..., None] >= 0, [1.0, 0.0, 0.0], [0.0, 0.3, 1.0])  # (H, W, 3)
    alpha = (MAP_ALPHA * np.abs(a))[..., None]
    rgb = grey[..., None] * (1 - alpha) + colour * alpha
    picture = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    scale = max(1, -(-MAP_SIDE_PX // max(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()
