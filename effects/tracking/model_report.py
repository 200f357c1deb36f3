"""The model report of a training run: one self-contained HTML page
(`report/model.html`, every figure inline as a base64 PNG) with each figure also
written beside it as a PNG, so MLflow's artifact view shows them too.

Sections, each a `<section id=...>` with an `<h2>`:
    data              the data version, rows and the class (or target) distribution per split
    learning-curves   loss and accuracy (or RMSE) per epoch, train and val
    baselines         the model beside the majority class (or the mean) and, for tables,
                      a scaled logistic (or ridge) regression fitted on the same train split
    per-class         precision, recall, F1 and support per class        (classification)
    confusion-matrix  counts, rows true, columns predicted                (classification)
    calibration       reliability diagram and expected calibration error  (classification)
    regression        predicted vs actual, residuals, error by target decile (regression)
    mistakes          the test split's worst mistakes (images: a grid; tables: the rows)
    explanations      images: Integrated Gradients maps overlaid on test samples per class;
                      tables: mean |attribution| beside permutation importance

Everything is computed on the frozen test split through the model's own predictor.
Figures are drawn on one canvas each (a mosaic of tiles, not a grid of subplots),
since the report is written on every retrain and must stay cheap.
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from lepton_core.data.plan import SPLITS
from lepton_core.data.prepare import Prepared
from lepton_core.evaluate import SUMMARY_KEYS, classification_metrics, regression_metrics
from lepton_core.fileio import atomic_write
from lepton_core.predictor import BasePredictor, softmax

REPORT_DIR = "report"
REPORT_FILE = "model.html"
REPORT_ARTIFACT = f"{REPORT_DIR}/{REPORT_FILE}"
CLASSIFICATION_SECTIONS = (
    "data",
    "learning-curves",
    "baselines",
    "per-class",
    "confusion-matrix",
    "calibration",
    "mistakes",
    "explanations",
)
REGRESSION_SECTIONS = ("data", "learning-curves", "baselines", "regression", "mistakes", "explanations")
HISTORY_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_rmse", "val_rmse")
WORST = 16  # mistakes shown
BINS = 10  # calibration bins (confidence deciles)
MAX_CLASSES_SHOWN = 20  # explanation rows (classes) at most
MAX_FEATURES_SHOWN = 20  # bars and table columns for wide tables
BASELINE_ROWS = 50_000  # train rows a baseline is fitted on, at most (seeded sample)
EXPLAIN_ROWS = 1_000  # test rows whose attributions are averaged for a table, at most
DPI = 80


@dataclass
class ModelReport:
    """What `write_model_report` wrote: the page, its PNGs, and figures worth logging
    as run metrics (expected calibration error, baseline scores)."""

    html: Path
    figures: list[Path]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Scored:
    """The test split and the model's answers on it."""

    x: np.ndarray
    y: np.ndarray
    outputs: np.ndarray  # (N, K) logits, or (N,) values (regression)
    pred: np.ndarray  # (N,) class indices, or values
    confidence: np.ndarray  # (N,) max probability; regression: |error|


class _Page:
    """Sections and figures: every figure goes both inline and to `out/<name>.png`."""

    def __init__(self, out: Path):
        self.out = out
        self.sections: list[tuple[str, str, str]] = []
        self.figures: list[Path] = []
        self.metrics: dict[str, float] = {}

    def add(self, sid: str, title: str, body: str) -> None:
        self.sections.append((sid, title, body))

    def png(self, name: str, data: bytes, alt: str) -> str:
        self.figures.append(atomic_write(self.out / name, data, fsync=False))
        src = base64.b64encode(data).decode("ascii")
        return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{src}"></figure>'

    def figure(self, name: str, fig: Any, alt: str) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        return self.png(name, buf.getvalue(), alt)


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)


def _fig(w: float, h: float, cols: int = 1, margins: tuple[float, float, float, float] = (0.8, 0.5, 0.25, 0.3)) -> Any:
    """(figure, axes) of `w` x `h` inches with fixed margins (left, bottom, right, top,
    in inches): a layout engine would measure every label again at each save."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(w, h))
    left, bottom, right, top = margins
    fig.subplots_adjust(left=left / w, bottom=bottom / h, right=1 - right / w, top=1 - top / h, wspace=0.3)
    axes = fig.subplots(1, cols)
    return fig, axes


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: object) -> str:
    if isinstance(v, float | np.floating):
        return _e(f"{float(v):.4g}")
    return _e(v)


# ---------------------------------------------------------------- the page
def write_model_report(
    prepared: Prepared,
    predictor: BasePredictor,
    metrics: dict[str, Any],
    out_dir: str | Path,
    *,
    data_version: str,
    history: Sequence[dict[str, float]] = (),
    explain_per_class: int = 2,
    figures_dir: str | Path | None = None,
    heading: str = "",
) -> ModelReport:
    """Write `out_dir/model.html` and its PNGs for `predictor` on `prepared`'s test
    split; `out_dir` is the report's own folder (files already there are removed).
    `metrics`: what lepton_core.evaluate.evaluate_predictor returned for it; `history`:
    one dict per epoch (train/val loss and accuracy or RMSE); `figures_dir`: where the
    evaluation already drew the confusion matrix (or the regression plots), which are
    reused rather than drawn again."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    for old in out.glob("*") if out.is_dir() else ():  # an earlier try's files, which may not be redrawn
        if old.is_file():
            old.unlink()
    page = _Page(out)
    scored = _score(predictor, prepared)
    drawn = Path(figures_dir) if figures_dir is not None else None
    _data_section(page, prepared, data_version)
    _curves_section(page, history, predictor.regression)
    _baselines_section(page, prepared, metrics, predictor)
    if predictor.regression:
        _regression_section(page, scored, metrics, drawn)
    else:
        _per_class_section(page, metrics)
        _confusion_section(page, metrics, predictor.classes, drawn)
        _calibration_section(page, scored)
    _mistakes_section(page, scored, predictor)
    _explanations_section(page, scored, predictor, explain_per_class)
    path = atomic_write(out / REPORT_FILE, _html(page, heading, metrics, predictor), fsync=False)
    return ModelReport(path, page.figures, page.metrics)


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}figure{margin:.6em 0}img{max-width:100%}
.warn{background:#fff4e0;border-left:4px solid #e8a33d;padding:.4em .8em}
.ok{background:#eef8ee;border-left:4px solid #4a4;padding:.4em .8em}
.muted{color:#666}.bar{background:#4a7fc1;height:.8em;display:inline-block}
"""


def _html(page: _Page, heading: str, metrics: dict[str, Any], predictor: BasePredictor) -> str:
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in page.sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{b}</section>' for sid, title, b in page.sections)
    task = "regression" if predictor.regression else f"classification into {len(predictor.classes)} classes"
    head = _headline(metrics)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Model report{_e(': ' + heading if heading else '')}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Model report</h1><p>{_e(heading)}</p>"
        f'<p class="muted">{_e(task)}; on the frozen test split: {_e(head)}</p><nav>{nav}</nav></header>'
        f"{body}</body></html>\n"
    )


def _headline(m: dict[str, Any]) -> str:
    if m.get("task") == "regression":
        return f"RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.3f} ({m['n']} rows)"
    return f"accuracy {m['accuracy']:.4f}, macro-F1 {m['f1_macro']:.4f} ({m['n']} samples)"


def _score(predictor: BasePredictor, prepared: Prepared) -> _Scored:
    x, y = prepared.x["test"], prepared.y["test"]
    outputs = predictor.logits(x)
    if predictor.regression:
        values = predictor.preprocessing.values(outputs)
        return _Scored(x, y, values, values, np.abs(values - y))
    p = softmax(outputs) if len(outputs) else np.zeros((0, len(predictor.classes)), np.float32)
    return _Scored(x, y, outputs, p.argmax(1), p.max(1) if len(p) else np.zeros(0))


# ---------------------------------------------------------------- data
def _data_section(page: _Page, prepared: Prepared, data_version: str) -> None:
    meta, report = prepared.meta, prepared.report
    n = {s: len(prepared.y[s]) for s in SPLITS}
    shape = "×".join(str(d) for d in meta.get("input_shape", []))
    dropped = report.get("duplicates_dropped", 0), report.get("quarantined", 0)
    parts = [
        f"<p>Data version <code>{_e(data_version)}</code>: {meta.get('kind', '')} samples of shape {_e(shape)}; "
        + ", ".join(f"{s} {n[s]}" for s in SPLITS)
        + f" rows (test split: {_e(meta.get('test_split', 'random'))}). Prepare dropped {dropped[0]} duplicates "
        f"and quarantined {dropped[1]} samples.</p>"
    ]
    if meta.get("task") == "regression":
        parts.append(_target_distribution(page, prepared))
    else:
        parts.append(_class_distribution(page, prepared))
    page.add("data", "Data", "".join(parts))


def _class_distribution(page: _Page, prepared: Prepared) -> str:
    classes = [str(c) for c in prepared.meta.get("classes", [])]
    k = len(classes)
    counts = {s: np.bincount(prepared.y[s].astype(np.int64), minlength=k)[:k] for s in SPLITS}
    share = {s: c / max(int(c.sum()), 1) for s, c in counts.items()}
    rows = [[c, *(f"{counts[s][i]} ({share[s][i]:.1%})" for s in SPLITS)] for i, c in enumerate(classes)]
    fig, ax = _fig(min(2.0 + 0.45 * k, 11), 2.8, margins=(0.8, 0.5, 0.25, 0.45))
    pos, w = np.arange(k), 0.8 / len(SPLITS)
    for j, s in enumerate(SPLITS):
        ax.bar(pos + (j - 1) * w, share[s], w, label=s)
    ax.set_xticks(pos, classes, rotation=45 if k > 12 else 0, fontsize=8, parse_math=False)
    ax.set_ylabel("share of the split")
    ax.legend(fontsize=8, ncols=len(SPLITS), loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    img = page.figure("class_distribution.png", fig, "class distribution per split")
    return img + _table(["class", *SPLITS], rows)


def _target_distribution(page: _Page, prepared: Prepared) -> str:
    ys = {s: np.asarray(prepared.y[s], np.float64) for s in SPLITS}
    every = np.concatenate(list(ys.values()))
    edges = np.histogram_bin_edges(every, bins=20) if len(every) else np.linspace(0, 1, 21)
    fig, ax = _fig(6, 2.6)
    for s, v in ys.items():
        if len(v):
            ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, label=s)
    ax.set_xlabel("target")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    img = page.figure("target_distribution.png", fig, "target distribution per split")
    rows = [
        [s, len(v), *((float(f(v)) for f in (np.mean, np.std, np.min, np.median, np.max)) if len(v) else [""] * 5)]
        for s, v in ys.items()
    ]
    return img + _table(["split", "rows", "mean", "std", "min", "median", "max"], rows)


# ---------------------------------------------------------------- learning curves
def _curves_section(page: _Page, history: Sequence[dict[str, float]], regression: bool) -> None:
    if not history:
        page.add("learning-curves", "Learning curves", '<p class="muted">No per-epoch metrics were logged.</p>')
        return
    epochs = np.array([h.get("epoch", i + 1) for i, h in enumerate(history)], np.float64)
    second = "rmse" if regression else "accuracy"
    fig, axes = _fig(8, 2.8, cols=2)
    for ax, name in zip(axes, ("loss", second)):
        for split in ("train", "val"):
            v = [h.get(f"{split}_{name}", np.nan) for h in history]
            ax.plot(epochs, v, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    val = np.array([h.get(f"val_{second}", np.nan) for h in history], np.float64)
    kept = ""
    if np.isfinite(val).any():
        best = int(np.nanargmin(val) if regression else np.nanargmax(val))
        for ax in axes:
            ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1)
        shown = f"{val[best]:.4g}" if regression else f"{val[best]:.4f}"
        kept = f" Dotted: epoch {epochs[best]:g}, the best val {second} ({shown}), whose weights are kept."
    img = page.figure("learning_curves.png", fig, "learning curves")
    text = f"<p>{len(history)} epochs.{_e(kept)}</p>"
    page.add("learning-curves", "Learning curves", text + img)


# ---------------------------------------------------------------- baselines
_LABELS = {
    "accuracy": "accuracy",
    "f1_macro": "macro-F1",
    "precision_macro": "macro precision",
    "recall_macro": "macro recall",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
}


def _baselines_section(page: _Page, prepared: Prepared, metrics: dict[str, Any], predictor: BasePredictor) -> None:
    rows = _baseline_rows(prepared, metrics, predictor)
    keys: tuple[str, ...] = ("rmse", "mae", "r2") if predictor.regression else SUMMARY_KEYS
    for name, m in rows[1:]:
        page.metrics.update({f"baseline_{name.replace(' ', '_')}_{k}": float(m[k]) for k in keys})
    head = [_LABELS.get(k, k) for k in keys]
    table = _table(["model", *head], [[name, *(m[k] for k in keys)] for name, m in rows])
    lead, sign = keys[0], (-1.0 if predictor.regression else 1.0)  # higher is better once signed
    said = _LABELS[lead]
    best_name, best = max(rows[1:], key=lambda r: sign * r[1][lead])
    model = rows[0][1][lead]
    verdict = (
        f'<p class="ok">The model beats every baseline on {said}: {model:.4g} against {best[lead]:.4g} '
        f"({best_name}).</p>"
        if sign * model > sign * best[lead]
        else f'<p class="warn">The {best_name} baseline does at least as well as the model on {said}: '
        f"{best[lead]:.4g} against {model:.4g}. The network does not earn its place on this split.</p>"
    )
    note = (
        '<p class="muted">Baselines are fitted on the train split and scored on the same test split as the model; '
        "the scaled one standardises each column (fitted on train) before the regression.</p>"
    )
    page.add("baselines", "The model beside baselines", verdict + table + note)


def _baseline_rows(
    prepared: Prepared, metrics: dict[str, Any], predictor: BasePredictor
) -> list[tuple[str, dict[str, float]]]:
    """[("model", metrics), (baseline name, its metrics), ...] on the test split."""
    y_train, y_test = prepared.y["train"], prepared.y["test"]
    rows: list[tuple[str, dict[str, float]]] = [("model", metrics)]
    if predictor.regression:
        mean = float(np.mean(y_train)) if len(y_train) else 0.0
        rows.append(("mean", regression_metrics(y_test, np.full(len(y_test), mean))))
    else:
        k = len(predictor.classes)
        majority = int(np.bincount(y_train.astype(np.int64), minlength=k).argmax()) if len(y_train) else 0
        rows.append(("majority", classification_metrics(y_test, np.full(len(y_test), majority), predictor.classes)))
    if predictor.preprocessing.kind == "tabular" and len(y_train) and len(y_test):
        rows.append(_linear_baseline(prepared, predictor))
    return rows


def _linear_baseline(prepared: Prepared, predictor: BasePredictor) -> tuple[str, dict[str, float]]:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = prepared.x["train"].astype(np.float64), prepared.y["train"]
    if len(y) > BASELINE_ROWS:
        keep = np.random.default_rng(0).choice(len(y), BASELINE_ROWS, replace=False)
        x, y = x[keep], y[keep]
    x_test = prepared.x["test"].astype(np.float64)
    if predictor.regression:
        reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(x, y)
        return "scaled ridge", regression_metrics(prepared.y["test"], reg.predict(x_test))
    if len(np.unique(y)) < 2:  # nothing to fit: it is the majority class
        pred = np.full(len(x_test), int(y[0]))
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
        pred = clf.predict(x_test)
    return "scaled logistic", classification_metrics(prepared.y["test"], pred, predictor.classes)


# ---------------------------------------------------------------- classification
def _per_class_section(page: _Page, metrics: dict[str, Any]) -> None:
    per = metrics.get("per_class", {})
    rows = []
    for name, m in per.items():
        bar = f'<span class="bar" style="width:{6 * m["f1"]:.2f}em"></span>'
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
            f"<td>{m['f1']:.3f} {bar}</td><td>{m['support']}</td></tr>"
        )
    weakest = min(per.items(), key=lambda kv: kv[1]["f1"] if kv[1]["support"] else 2.0, default=None)
    lead = f"<p>Weakest class: <b>{_e(weakest[0])}</b> (F1 {weakest[1]['f1']:.3f}).</p>" if weakest else ""
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    page.add("per-class", "Precision, recall and F1 per class", f"{lead}<table>{head}{''.join(rows)}</table>")


def _confusion_section(page: _Page, metrics: dict[str, Any], classes: list[str], drawn: Path | None) -> None:
    from effects.tracking.plots import save_confusion_matrix

    path = drawn / "confusion_matrix.png" if drawn is not None else None
    if path is None or not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cm = np.asarray(metrics["confusion_matrix"])
            data = save_confusion_matrix(cm, classes, Path(tmp) / "cm.png", "test split").read_bytes()
    else:
        data = path.read_bytes()
    img = page.png("confusion_matrix.png", data, "confusion matrix")
    page.add("confusion-matrix", "Confusion matrix", "<p>Rows are true classes, columns predictions.</p>" + img)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, float]:
    """(bins, 3) rows of (samples, mean confidence, accuracy) per equal-width confidence
    bin, and the expected calibration error: sum over bins of share x |accuracy -
    confidence|."""
    idx = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n = np.bincount(idx, minlength=bins).astype(np.float64)
    conf = np.bincount(idx, weights=confidence, minlength=bins)
    hits = np.bincount(idx, weights=correct.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        table = np.stack([n, conf / n, hits / n], axis=1)
    ece = float(np.nansum(n / max(n.sum(), 1) * np.abs(table[:, 2] - table[:, 1])))
    return table, ece


def _calibration_section(page: _Page, s: _Scored) -> None:
    table, ece = calibration_bins(s.confidence, s.pred == s.y)
    page.metrics["test_ece"] = ece
    centres = (np.arange(BINS) + 0.5) / BINS
    fig, axes = _fig(8, 3, cols=2)
    axes[0].bar(centres, np.nan_to_num(table[:, 2]), width=1 / BINS, edgecolor="white", label="accuracy")
    axes[0].plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)  # perfectly calibrated
    axes[0].set_xlabel("confidence (max probability)")
    axes[0].set_ylabel("accuracy")
    axes[0].set_title(f"reliability diagram (ECE {ece:.3f})", fontsize=10)
    axes[1].bar(centres, table[:, 0], width=1 / BINS, edgecolor="white", color="#888")
    axes[1].set_xlabel("confidence")
    axes[1].set_ylabel("test samples")
    img = page.figure("calibration.png", fig, "reliability diagram")
    mean_conf = float(s.confidence.mean()) if len(s.confidence) else 0.0
    acc = float((s.pred == s.y).mean()) if len(s.y) else 0.0
    lean = "over-confident" if mean_conf > acc else "under-confident" if mean_conf < acc else "calibrated"
    text = (
        f"<p>Expected calibration error <b>{ece:.4f}</b> ({BINS} confidence bins): mean confidence "
        f"{mean_conf:.4f} against accuracy {acc:.4f}, so the model is {lean} on average. Left: accuracy per "
        "confidence bin (on the dashed diagonal a model is as right as it is sure); right: test samples per bin.</p>"
    )
    page.add("calibration", "Calibration", text + img)


# ---------------------------------------------------------------- images
def image_tiles(x: np.ndarray) -> np.ndarray:
    """Raw images (N, C, H, W) or (N, H, W) -> (N, H, W, 3) float in [0, 1] for
    display: uint8 scaled, floats stretched per image; one channel as grey, three
    as RGB, others by their first channel."""
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[:, None]
    a = a.astype(np.float64)
    if np.asarray(x).dtype == np.uint8:
        a = a / 255.0
    else:
        lo = a.min(axis=(1, 2, 3), keepdims=True) if len(a) else 0.0
        hi = a.max(axis=(1, 2, 3), keepdims=True) if len(a) else 1.0
        a = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
    rgb = a[:, :3] if a.shape[1] == 3 else np.repeat(a[:, :1], 3, axis=1)
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def mosaic(tiles: np.ndarray, cols: int, side: int = 1, top: int = 1) -> np.ndarray:
    """(N, H, W, 3) tiles -> one image on white, row by row: each cell is a tile with
    `side` pixels of space to its left and `top` above it (where its label goes)."""
    n, h, w, _ = tiles.shape
    rows = max(1, -(-n // cols))
    out = np.ones((rows * (h + top), cols * (w + side) + side, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = r * (h + top) + top, c * (w + side) + side
        out[y : y + h, x : x + w] = tiles[i]
    return out


def _tile_figure(tiles: np.ndarray, labels: list[str], cols: int) -> Any:
    """One canvas, sized to the mosaic (about an inch a tile): the tiles, each one's
    label above it."""
    from matplotlib.figure import Figure

    _, h, w, _ = tiles.shape
    side, top = max(1, w // 8), max(2, h // 4)
    image = mosaic(tiles, cols, side, top)
    width = image.shape[1] / (w + side) * 1.1
    height = width * image.shape[0] / image.shape[1]
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest")
    for i, label in enumerate(labels):
        r, c = divmod(i, cols)
        x, y = c * (w + side) + side + w / 2, r * (h + top) + top * 0.9
        ax.text(x, y, label, ha="center", va="bottom", fontsize=8, parse_math=False)
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------- regression
def _regression_section(page: _Page, s: _Scored, metrics: dict[str, Any], drawn: Path | None) -> None:
    from effects.tracking.plots import save_regression_plots

    names = ("predicted_vs_actual.png", "residuals.png")
    if drawn is not None and all((drawn / n).exists() for n in names):
        data = [(drawn / n).read_bytes() for n in names]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            save_regression_plots(s.y, s.pred, tmp, f"test split: RMSE {metrics['rmse']:.4g}")
            data = [(Path(tmp) / n).read_bytes() for n in names]
    imgs = [page.png(n, d, n.removesuffix(".png").replace("_", " ")) for n, d in zip(names, data)]
    table = error_by_decile(s.y, s.pred)
    fig, ax = _fig(6, 2.6)
    pos = np.arange(len(table))
    ax.bar(pos - 0.2, [r[3] for r in table], 0.4, label="MAE")
    ax.bar(pos + 0.2, [r[4] for r in table], 0.4, label="mean error (bias)")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(pos, [str(i + 1) for i in pos])
    ax.set_xlabel("target decile (1 = lowest targets)")
    ax.legend(fontsize=8)
    dec = page.figure("error_by_decile.png", fig, "error by target decile")
    rows = [[i + 1, f"{lo:.4g} – {hi:.4g}", n, mae, bias] for i, (lo, hi, n, mae, bias) in enumerate(table)]
    body = (
        "<h3>Predicted against actual</h3>"
        + imgs[0]
        + "<h3>Residuals against predicted</h3>"
        + imgs[1]
        + "<h3>Error by target decile</h3>"
        + dec
        + _table(["decile", "targets", "rows", "MAE", "mean error"], rows)
    )
    page.add("regression", "Regression errors", body)


def error_by_decile(y: np.ndarray, pred: np.ndarray) -> list[tuple[float, float, int, float, float]]:
    """Per decile of the true target: (lowest, highest target, rows, MAE, mean error =
    predicted - actual); fewer rows than deciles where targets repeat."""
    y = np.asarray(y, np.float64)
    err = np.asarray(pred, np.float64) - y
    if not len(y):
        return []
    edges = np.unique(np.quantile(y, np.linspace(0, 1, 11)[1:-1]))
    idx = np.searchsorted(edges, y, side="right")
    out = []
    for b in np.unique(idx):
        m = idx == b
        e = err[m]
        out.append((float(y[m].min()), float(y[m].max()), int(m.sum()), float(np.abs(e).mean()), float(e.mean())))
    return out


# ---------------------------------------------------------------- mistakes
def worst_mistakes(s: _Scored, regression: bool, k: int = WORST) -> np.ndarray:
    """Indices of the k worst test mistakes: the most confident wrong answers, or the
    largest absolute errors."""
    if regression:
        order = np.argsort(-s.confidence, kind="stable")
        return order[:k]
    wrong = np.flatnonzero(s.pred != s.y)
    return wrong[np.argsort(-s.confidence[wrong], kind="stable")][:k]


def _mistakes_section(page: _Page, s: _Scored, predictor: BasePredictor) -> None:
    idx = worst_mistakes(s, predictor.regression)
    if not len(idx):
        page.add("mistakes", "Worst mistakes", "<p>The model makes no mistake on the test split.</p>")
        return
    names = predictor.classes
    if predictor.regression:
        what = [f"actual {s.y[i]:.4g}, predicted {s.pred[i]:.4g}" for i in idx]
        short = [f"{s.y[i]:.3g} → {s.pred[i]:.3g}" for i in idx]
        lead = f"<p>The {len(idx)} test rows with the largest absolute error, largest first.</p>"
    else:
        what = [f"true {names[s.y[i]]}, predicted {names[s.pred[i]]} ({s.confidence[i]:.2f})" for i in idx]
        short = [f"{names[s.y[i]]}→{names[s.pred[i]]} {s.confidence[i]:.2f}" for i in idx]
        wrong = int((s.pred != s.y).sum())
        lead = f"<p>{wrong} of {len(s.y)} test samples are wrong; the {len(idx)} most confident of them:</p>"
    if predictor.preprocessing.kind == "image":
        fig = _tile_figure(image_tiles(s.x[idx]), short, cols=min(8, len(idx)))
        img = page.figure("worst_mistakes.png", fig, "worst mistakes on the test split")
        caption = "<ol>" + "".join(f"<li>test sample {int(i)}: {_e(w)}</li>" for i, w in zip(idx, what)) + "</ol>"
        page.add("mistakes", "Worst mistakes", lead + img + caption)
        return
    features = list(predictor.preprocessing.feature_names) or [str(j) for j in range(s.x.shape[1])]
    shown = features[:MAX_FEATURES_SHOWN]
    answer = ["actual", "predicted", "abs error"] if predictor.regression else ["true", "predicted", "confidence"]
    rows = []
    for i in idx:
        tail = (
            [s.y[i], s.pred[i], s.confidence[i]]
            if predictor.regression
            else [names[s.y[i]], names[s.pred[i]], s.confidence[i]]
        )
        rows.append([int(i), *tail, *(float(v) for v in s.x[i, : len(shown)])])
    more = f" (the first {len(shown)} of {len(features)} columns)" if len(shown) < len(features) else ""
    page.add("mistakes", "Worst mistakes", lead + _table(["test row", *answer, *shown], rows) + _e(more))


# ---------------------------------------------------------------- explanations
def _explanations_section(page: _Page, s: _Scored, predictor: BasePredictor, per_class: int) -> None:
    title = "Explanations (Integrated Gradients)"
    try:
        if predictor.preprocessing.kind == "image":
            body = _image_explanations(page, s, predictor, per_class)
        else:
            body = _table_explanations(page, s, predictor)
    except Exception as e:  # a model the attribution cannot go through: say so, keep the report
        body = f'<p class="warn">No explanations for this model: {_e(type(e).__name__)}: {_e(e)}</p>'
    page.add("explanations", title, body)


def explained_samples(s: _Scored, regression: bool, classes: int, per_class: int) -> list[tuple[str, np.ndarray]]:
    """Which test samples the maps show, in groups: per class (up to MAX_CLASSES_SHOWN),
    up to `per_class` samples it gets right first, then wrong ones; regression: per
    quintile of the target. [(group label, indices)], empty groups left out."""
    if regression:
        groups = np.searchsorted(np.quantile(s.y, [0.2, 0.4, 0.6, 0.8]), s.y, side="right") if len(s.y) else s.y
        keys = [(f"q{g + 1}", g) for g in range(5)]
        right = np.ones(len(s.y), bool)
    else:
        groups, right = s.y, s.pred == s.y
        keys = [(str(i), i) for i in range(min(classes, MAX_CLASSES_SHOWN))]
    out = []
    for label, g in keys:
        mine = np.flatnonzero(groups == g)
        picked = mine[np.argsort(~right[mine], kind="stable")][:per_class]
        if len(picked):
            out.append((label, picked))
    return out


def overlay(tiles: np.ndarray, attribution: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) images, (N, H, W) attributions -> the images as light grey (one
    channel: dark ink on white) with positive attribution in red and negative in blue,
    each image scaled by its largest |attribution|."""
    grey = tiles.mean(axis=3, keepdims=True)
    mono = bool(np.allclose(tiles[..., :1], tiles)) if tiles.size else True
    base = 1.0 - 0.6 * grey if mono else 0.35 + 0.6 * grey
    top = np.abs(attribution).reshape(len(attribution), -1).max(1) if len(attribution) else np.ones(0)
    a = attribution / np.where(top > 0, top, 1.0)[:, None, None]
    weight = np.clip(np.abs(a), 0, 1)[..., None] ** 0.7 * 0.9
    colour = np.where(a[..., None] >= 0, np.array([0.85, 0.05, 0.05]), np.array([0.05, 0.25, 0.95]))
    out: np.ndarray = base * (1 - weight) + colour * weight
    return out


def _image_explanations(page: _Page, s: _Scored, predictor: BasePredictor, per_class: int) -> str:
    if per_class <= 0:
        return '<p class="muted">evaluate.explain_per_class is 0: no attribution maps.</p>'
    from lepton_core.explain import attributions

    groups = explained_samples(s, predictor.regression, len(predictor.classes), per_class)
    if not groups:
        return '<p class="muted">No test samples to explain.</p>'
    idx = np.concatenate([g for _, g in groups])
    targets = None if predictor.regression else s.pred[idx].astype(np.int64)  # scored already
    attr = np.asarray(attributions(predictor, s.x[idx], targets), np.float64)
    maps = attr.sum(axis=1) if attr.ndim == 4 else attr  # (N, H, W): summed over channels
    names = predictor.classes
    if predictor.regression:
        labels = [f"{g} → {s.pred[i]:.3g}" for g, members in groups for i in members]
    else:
        labels = [f"{names[int(s.y[i])]} → {names[int(s.pred[i])]}" for i in idx]
    cols = min(len(idx), 10 if per_class > 10 else 10 // per_class * per_class)  # whole groups a row
    fig = _tile_figure(overlay(image_tiles(s.x[idx]), maps), labels, cols=cols)
    img = page.figure("explanations.png", fig, "Integrated Gradients attribution maps")
    what = "quintile of the target" if predictor.regression else "true class"
    text = (
        "<p>Integrated Gradients (Captum, from an all-zero input) for the model's answer on "
        f"{len(idx)} test samples, up to {per_class} per {what}, each labelled "
        f"{'quintile → predicted value' if predictor.regression else 'true → predicted'}. "
        "Red pixels push towards the answer, blue ones away from it.</p>"
    )
    return text + img


def _table_explanations(page: _Page, s: _Scored, predictor: BasePredictor) -> str:
    from lepton_core.explain import attributions, permutation_importance

    x, y = s.x, s.y
    if len(x) > EXPLAIN_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(len(x), EXPLAIN_ROWS, replace=False))
        x, y = x[keep], y[keep]
    attr = np.abs(np.asarray(attributions(predictor, x), np.float64)).reshape(len(x), -1).mean(0)
    perm = np.asarray(permutation_importance(predictor, x, y), np.float64).reshape(-1)
    names = list(predictor.preprocessing.feature_names) or [str(j) for j in range(len(attr))]
    order = np.argsort(-attr, kind="stable")[:MAX_FEATURES_SHOWN]
    shown = [names[j] for j in order][::-1]  # the largest at the top of the bars
    left = min(3.0, 0.3 + 0.07 * max(len(n) for n in shown))  # inches for the feature names
    fig, axes = _fig(7 + left, 0.8 + 0.28 * len(order), cols=2, margins=(left, 0.5, 0.25, 0.15))
    pos = np.arange(len(shown))
    axes[0].barh(pos, attr[order][::-1], color="#4a7fc1")
    axes[0].set_yticks(pos, shown, parse_math=False)  # names as written, even with a $ in them
    axes[0].set_xlabel("mean |attribution| (test split)")
    axes[1].barh(pos, perm[order][::-1], color="#c17f4a")
    axes[1].set_xlabel("RMSE rise when shuffled" if predictor.regression else "accuracy drop when shuffled")
    axes[1].set_yticks(pos, [""] * len(shown))
    img = page.figure("feature_importance.png", fig, "feature importance")
    rows = [[names[j], attr[j], perm[j]] for j in order]
    drop = "RMSE rise" if predictor.regression else "accuracy drop"
    text = (
        f"<p>Each feature's mean absolute Integrated Gradients attribution on {len(x)} test rows, beside its "
        f"permutation importance (the {drop} when that column alone is shuffled); largest attribution first.</p>"
    )
    return text + img + _table(["feature", "mean |attribution|", f"permutation ({drop})"], rows)


# ---------------------------------------------------------------- where it is
def history_of(c: Any, run_id: str) -> list[dict[str, float]]:
    """The run's per-epoch metrics (train/val loss and accuracy or RMSE), one dict per
    epoch with its `epoch`, read back from MLflow."""
    logged = c.get_run(run_id).data.metrics
    by_step: dict[int, dict[str, float]] = {}
    for key in HISTORY_KEYS:
        if key not in logged:
            continue
        for m in c.get_metric_history(run_id, key):
            by_step.setdefault(int(m.step), {"epoch": float(m.step)})[key] = float(m.value)
    return [by_step[k] for k in sorted(by_step)]


def report_url(tracking_uri: str, run: Any) -> str:
    """Where a browser opens the run's report: on a tracking server, the MLflow UI's
    artifact view of the run with the report shown; with a local artifact store, the
    file itself; otherwise the artifact's `runs:/` URI (for `mlflow artifacts download`)."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):  # without any user:password@ it may hold
        base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifactPath/{REPORT_ARTIFACT}"
    root = str(run.info.artifact_uri or "")
    if root.startswith("file://"):
        return f"{root.rstrip('/')}/{REPORT_ARTIFACT}"
    if root.startswith("/"):
        return Path(root, REPORT_ARTIFACT).as_uri()
    return f"runs:/{run.info.run_id}/{REPORT_ARTIFACT}"


def has_report(run: Any) -> bool:
    """Whether the run was trained with the report on (`evaluate.report`)."""
    return str(run.data.params.get("evaluate.report", "")).lower() == "true"


def report_line(url: str) -> str:
    """The markdown line that links a report (the version's description, the summary)."""
    return f"Model report: [{REPORT_ARTIFACT}]({url})"
