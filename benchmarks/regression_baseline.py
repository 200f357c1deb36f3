"""Regression: Lepton's MLP on the diabetes example against linear baselines.

Prepares `examples/regression/params.yaml`'s data with Lepton's own prepare (its
loader `diabetes_data.load`, the same validation, de-duplication and split the
model gets), trains with the example's train params through
`lepton_core.train.train_on_prepared` (one run per training seed), and scores the
test split through the model's own predictor. scikit-learn's LinearRegression and
RidgeCV are fitted on the same train split and scored on the same test split.

    python benchmarks/regression_baseline.py                 # the example's params, 3 training seeds
    python benchmarks/regression_baseline.py --seeds 5 --json
    python benchmarks/regression_baseline.py --set train.width=128 --set train.dropout=0.0

The test split is small (90 rows of 442), so R² moves by a few hundredths with the
split (`--set data.seed=N`); the training seeds show the model's own spread.
Nothing is asserted: the numbers are for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lepton_core.data.prepare import Prepared, prepare_from_params, read_prepared  # noqa: E402
from lepton_core.evaluate import regression_metrics  # noqa: E402
from lepton_core.params import Params, load_params  # noqa: E402

PARAMS = ROOT / "examples" / "regression" / "params.yaml"
TRAIN_KEYS = {"model", "width", "depth", "dropout", "lr", "weight_decay", "batch_size", "epochs", "patience"}


def prepare(params: Params, work: Path) -> Prepared:
    """The example's dataset, prepared as `lepton retrain` prepares it (no monitor batches)."""
    data = params.data.model_copy(update={"include_monitored": False})
    prepare_from_params(data, work / "prepared", base_dir=ROOT)
    return read_prepared(work / "prepared")


def train_lepton(prep: Prepared, params: Params, seed: int) -> dict[str, Any]:
    from lepton_core.evaluate import evaluate_predictor
    from lepton_core.predictor import Predictor, Preprocessing
    from lepton_core.train import train_on_prepared

    pre = Preprocessing.from_meta(prep.meta)
    train = params.train.model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    result = train_on_prepared(prep, train, pre, progress=False, note=lambda _: None, code_base=ROOT)
    seconds = time.perf_counter() - t0
    m = evaluate_predictor(Predictor(result.model, result.model_config, pre), prep.x["test"], prep.y["test"])
    return {
        "rmse": m["rmse"],
        "r2": m["r2"],
        "mae": m["mae"],
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": seconds,
        "device": result.device,
    }


def linear_baselines(prep: Prepared) -> dict[str, dict[str, float]]:
    from sklearn.linear_model import LinearRegression, RidgeCV

    x_tr, y_tr = prep.x["train"].astype(np.float64), prep.y["train"]
    out = {}
    for name, model in (
        ("LinearRegression", LinearRegression()),
        ("RidgeCV", RidgeCV(alphas=np.logspace(-4, 2, 25))),
    ):
        model.fit(x_tr, y_tr)
        m = regression_metrics(prep.y["test"], model.predict(prep.x["test"].astype(np.float64)))
        out[name] = {"rmse": m["rmse"], "r2": m["r2"], "mae": m["mae"]}
    out["predict the train mean"] = {
        k: regression_metrics(prep.y["test"], np.full(len(prep.y["test"]), y_tr.mean()))[k]
        for k in ("rmse", "r2", "mae")
    }
    return out


def table(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    lines = [
        f"diabetes (examples/regression), split train/val/test = {counts['train']}/{counts['val']}/{counts['test']}, "
        f"data.seed {report['data_seed']}, {report['machine']}, trained on {report['lepton']['runs'][0]['device']}",
        f"{'model':<34}{'test RMSE':>11}{'test R²':>9}{'test MAE':>10}",
    ]
    runs = report["lepton"]["runs"]
    for r in runs:
        name = f"Lepton MLP, train.seed {r['seed']} ({r['epochs']} ep)"
        lines.append(f"{name:<34}{r['rmse']:>11.2f}{r['r2']:>9.3f}{r['mae']:>10.2f}")
    if len(runs) > 1:
        s = report["lepton"]["summary"]
        name = f"Lepton MLP, mean ± sd of {len(runs)}"
        rmse, r2 = f"{s['rmse_mean']:.2f}±{s['rmse_sd']:.2f}", f"{s['r2_mean']:.3f}±{s['r2_sd']:.3f}"
        lines.append(f"{name:<34}{rmse:>11}{r2:>13}")
    for name, m in report["baselines"].items():
        lines.append(f"{name:<34}{m['rmse']:>11.2f}{m['r2']:>9.3f}{m['mae']:>10.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(PARAMS), help="params file (default: the regression example's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param (repeatable)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds of the MLP (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params, args.set)
    with tempfile.TemporaryDirectory(prefix="lepton-regression-") as tmp:
        prep = prepare(params, Path(tmp))
        runs = [{"seed": s, **train_lepton(prep, params, s)} for s in range(args.seeds)]
    r2, rmse = np.array([r["r2"] for r in runs]), np.array([r["rmse"] for r in runs])
    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "data_seed": params.data.seed,
        "counts": prep.meta["counts"],
        "train_params": params.train.model_dump(mode="json", include=TRAIN_KEYS),
        "lepton": {
            "runs": runs,
            "summary": {
                "r2_mean": float(r2.mean()),
                "r2_sd": float(r2.std()),
                "rmse_mean": float(rmse.mean()),
                "rmse_sd": float(rmse.std()),
            },
        },
        "baselines": linear_baselines(prep),
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print("\n".join(table(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
