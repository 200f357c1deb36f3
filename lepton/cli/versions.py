"""`lepton versions`, `lepton compare`: the registered model's versions, listed and
compared side by side on one test split (effects/tracking/versions.py); `--html`
writes the comparison as one self-contained page."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import typer

from lepton.cli import render
from lepton.cli.options import JsonOpt, ParamsOpt, echo_json, echo_lines, load_params
from lepton_core.errors import LeptonError

REF_HELP = "a version number (3), an alias (@champion) or models:/NAME/3 for another registered model"


def versions(
    as_json: bool = JsonOpt,
    model: str | None = typer.Option(None, "--model", help="registered model (default: registry.model_name)"),
    params_file: Path | None = ParamsOpt,
):
    """List every version of the model, newest first: aliases, test metrics, data version,
    commit, creation time, the gate's decision and p-value, and what variants are variants of."""
    from effects.runtime.settings import configure_environment
    from lepton.cli.services import require

    s = configure_environment()
    name = model or load_params(params_file, [], s).registry.model_name
    require(s, ("mlflow",))
    from effects.tracking.versions import list_versions

    r = list_versions(name, s)
    if as_json:
        echo_json(r)
    else:
        echo_lines(render.versions_table(r))


def compare(
    a: str = typer.Argument(..., metavar="A", help="the baseline, in the gate's champion's place: " + REF_HELP),
    b: str = typer.Argument(..., metavar="B", help="the candidate, in the gate's challenger's place: " + REF_HELP),
    data_of: str = typer.Option("B", "--data-of", metavar="A|B", help="whose test split to score both on"),
    as_json: bool = JsonOpt,
    html_file: Path | None = typer.Option(
        None, "--html", metavar="FILE", help="also write the comparison as a self-contained HTML page"
    ),
    live: bool = typer.Option(
        False, "--live", help="compare on served traffic (the prediction log: a shadow, a canary), not a test split"
    ),
    since: float | None = typer.Option(
        None, "--since", metavar="HOURS", min=0, help="with --live: only the log's last HOURS hours"
    ),
    params_file: Path | None = ParamsOpt,
):
    """Score versions A and B on the same test split (B's by default) and show them side by
    side: metrics, the gate's paired test (McNemar, or for regression the paired t-test on
    squared errors) with its discordant counts, per-class differences, both confusion
    matrices and the samples one gets right and the other wrong. With --live, compare them
    on served traffic instead: agreement on the requests both scored (a shadow beside the
    champion), accuracy or RMSE on those with feedback and the same paired test, and each
    version on all its own labelled requests (a canary)."""
    if data_of.upper() not in ("A", "B"):
        raise typer.BadParameter(f"{data_of!r} is not A or B", param_hint="--data-of")
    if live:
        return _compare_live(a, b, since, as_json, html_file, params_file)
    if since is not None:
        raise typer.BadParameter("--since goes with --live", param_hint="--since")
    if html_file is not None and html_file.is_dir():
        raise LeptonError(f"{html_file}: is a folder; --html takes a file name")
    from effects.runtime.settings import configure_environment
    from effects.tracking.versions import compare_versions, parse_pair
    from lepton.cli.services import require

    s = configure_environment()
    ra, rb = parse_pair(a, b, load_params(params_file, [], s).registry.model_name)
    require(s, ("mlflow", "s3"))
    result, x = compare_versions(ra, rb, data_of.lower(), s)
    if html_file is not None:
        from lepton_core.fileio import atomic_write

        atomic_write(html_file, comparison_html(result, x))
        result["html"] = str(html_file)
    if as_json:
        echo_json(result)
        return
    echo_lines(render.compare_summary(result))
    if html_file is not None:
        typer.echo(render.wrote_line(html_file))


def _compare_live(a: str, b: str, since: float | None, as_json: bool, html_file: Path | None, params_file) -> None:
    if html_file is not None:
        raise typer.BadParameter("--html compares on a test split; it does not go with --live", param_hint="--html")
    from effects.runtime.settings import configure_environment
    from effects.serving.live_log import compare_live
    from effects.tracking.versions import parse_pair
    from lepton.cli.services import require

    s = configure_environment()
    ra, rb = parse_pair(a, b, load_params(params_file, [], s).registry.model_name)
    require(s, ("mlflow", "s3") if s.prediction_log.startswith("s3://") else ("mlflow",))
    result = compare_live(ra, rb, since, s)
    if as_json:
        echo_json(result)
    else:
        echo_lines(render.live_compare_summary(result))


# ---------------------------------------------------------------- the HTML page
SHOWN = 24  # samples pictured per side
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: .2em .6em; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; } td.l, th.l { text-align: left; }
.up { color: #17692e; } .down { color: #a3231f; }
.pair { display: flex; gap: 3em; flex-wrap: wrap; }
.cm td { min-width: 2.2em; } .grid { display: flex; flex-wrap: wrap; gap: .8em; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; }
"""


def _e(v) -> str:
    return html.escape(str(v))


def _signed(d: float, digits: int = 4) -> str:
    cls = "up" if d > 0 else "down" if d < 0 else ""
    return f'<td class="{cls}">{d:+.{digits}f}</td>'


def _metrics_table(r: dict) -> str:
    a, b = r["a"]["metrics"], r["b"]["metrics"]
    lower_better = {"rmse", "mae"}
    rows = "".join(
        f'<tr><td class="l">{_e(k)}</td><td>{a[k]:.4f}</td><td>{b[k]:.4f}</td>'
        + _signed((a[k] - b[k]) if k in lower_better else (b[k] - a[k]))
        + "</tr>"
        for k in a
    )
    head = f'<tr><th class="l">metric</th><th>A v{_e(r["a"]["version"])}</th><th>B v{_e(r["b"]["version"])}</th>'
    return f"<table>{head}<th>better by (B)</th></tr>{rows}</table>"


def _per_class_table(per_class: dict) -> str:
    head = (
        '<tr><th class="l">class</th><th>precision A</th><th>precision B</th><th>recall A</th><th>recall B</th>'
        "<th>F1 A</th><th>F1 B</th><th>F1 B − A</th><th>support</th></tr>"
    )
    rows = "".join(
        f'<tr><td class="l">{_e(name)}</td><td>{d["a"]["precision"]:.3f}</td><td>{d["b"]["precision"]:.3f}</td>'
        f"<td>{d['a']['recall']:.3f}</td><td>{d['b']['recall']:.3f}</td><td>{d['a']['f1']:.3f}</td>"
        f"<td>{d['b']['f1']:.3f}</td>{_signed(d['f1_diff'], 3)}<td>{d['a']['support']}</td></tr>"
        for name, d in per_class.items()
    )
    return f"<table>{head}{rows}</table>"


def _confusion(cm: list[list[int]], classes: list[str], title: str) -> str:
    """Rows true classes, columns predictions; each cell shaded by its share of the row."""
    head = '<tr><th class="l">true \\ predicted</th>' + "".join(f"<th>{_e(c)}</th>" for c in classes) + "</tr>"
    rows = []
    for name, row in zip(classes, cm, strict=True):
        total = max(sum(row), 1)
        cells = "".join(
            f'<td style="background: rgba(31, 100, 180, {0.85 * v / total:.2f})">{v}</td>' if v else "<td></td>"
            for v in row
        )
        rows.append(f'<tr><th class="l">{_e(name)}</th>{cells}</tr>')
    return f'<div><h3>{_e(title)}</h3><table class="cm">{head}{"".join(rows)}</table></div>'


def _png(image) -> str:
    """A raw image sample ((C, H, W) or (H, W)) as a PNG data URI, scaled up to ~64 px."""
    import numpy as np
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 3:
        a = np.moveaxis(a[:3], 0, -1) if a.shape[0] >= 3 else a[0]
    if a.dtype != np.uint8:
        lo, hi = float(a.min()), float(a.max())
        a = ((a - lo) / (hi - lo if hi > lo else 1.0) * 255).astype(np.uint8)
    im = Image.fromarray(a)
    scale = max(1, 64 // max(im.size))
    im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _samples(r: dict, rows: list[dict], x) -> str:
    """The first samples of one side: pictures for images, the rows for tables."""
    if not rows:
        return "<p>none</p>"
    fmt = (lambda v: f"{v:.4g}") if r["task"] == "regression" else str
    if r["input_kind"] == "image":
        figs = "".join(
            f'<figure><img src="{_png(x[s["index"]])}" alt="sample {s["index"]}"><figcaption>#{s["index"]} '
            f"true {_e(fmt(s['true']))}<br>A {_e(fmt(s['a']))} · B {_e(fmt(s['b']))}</figcaption></figure>"
            for s in rows[:SHOWN]
        )
        return f'<div class="grid">{figs}</div>'
    names = r.get("feature_names") or [str(i) for i in range(x.shape[1])]
    head = '<tr><th>#</th><th class="l">true</th><th class="l">A</th><th class="l">B</th>'
    head += "".join(f"<th>{_e(n)}</th>" for n in names[:10]) + "</tr>"
    body = "".join(
        f'<tr><td>{s["index"]}</td><td class="l">{_e(fmt(s["true"]))}</td><td class="l">{_e(fmt(s["a"]))}</td>'
        f'<td class="l">{_e(fmt(s["b"]))}</td>'
        + "".join(f"<td>{float(v):.4g}</td>" for v in x[s["index"]][:10])
        + "</tr>"
        for s in rows[:SHOWN]
    )
    return f"<table>{head}{body}</table>"


def _disagreements(r: dict, x) -> str:
    t = r["paired_test"]
    if r["task"] == "regression":
        parts = [
            ("A much closer", "a_closer", "rows where A's squared error is the smaller, largest difference first"),
            ("B much closer", "b_closer", "rows where B's squared error is the smaller, largest difference first"),
        ]
    else:
        parts = [
            ("Only A right", "only_a_right", "samples A labels right and B wrong"),
            ("Only B right", "only_b_right", "samples B labels right and A wrong"),
        ]
    out = []
    for title, key, what in parts:
        count = t[key]
        shown = min(count, SHOWN)
        out.append(f"<h2>{title}: {count}</h2><p>{what} (first {shown} of {count}; indices into the test split)</p>")
        out.append(_samples(r, r[key], x))
    return "".join(out)


def comparison_html(r: dict, x) -> str:
    """The whole comparison as one page with nothing to fetch (pictures inline)."""
    lines = render.compare_summary(r)
    header = "".join(f"<p>{_e(line)}</p>" for line in lines[:3])
    test = f"<p>{_e(render.paired_test_text(r))}</p><p>The gate {_e(render.gate_text(r))}.</p>"
    body = [
        f"<h1>{_e(r['registered_model'])}: v{_e(r['a']['version'])} against v{_e(r['b']['version'])}</h1>",
        header,
        "<h2>Metrics</h2>",
        _metrics_table(r),
        "<h2>The gate's paired test</h2>",
        test,
    ]
    if r["task"] == "classification":
        body += ["<h2>Per class</h2>", _per_class_table(r["per_class"]), "<h2>Confusion matrices</h2>"]
        body.append(
            '<div class="pair">'
            + "".join(
                _confusion(r[s]["confusion_matrix"], r["classes"], f"{s.upper()}: v{r[s]['version']}") for s in "ab"
            )
            + "</div>"
        )
    body.append(_disagreements(r, x))
    title = f"{r['registered_model']} v{r['a']['version']} vs v{r['b']['version']}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
