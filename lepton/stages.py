"""The commands `dvc.yaml` runs: `python -m lepton.stages prepare|train|evaluate`.

Each calls the same plain stage function as the matching Prefect task, with the
params of `params.yaml`, and writes to the paths dvc.yaml declares. No tracking
server, no orchestrator: `dvc repro` works on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lepton_core.errors import LeptonError

PREPARED = Path("data/prepared")
MODEL = Path("models/model.pt")
METRICS_DIR = Path("metrics")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lepton.stages", description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["prepare", "train", "evaluate"])
    ap.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = ap.parse_args(argv)
    try:
        from lepton_core.params import load_params

        params = load_params(args.params)
        if args.stage == "prepare":
            from effects.data.data_source import local_data_path
            from effects.runtime.settings import get_settings
            from effects.state import monitor_state
            from lepton_core.data.prepare import prepare_from_params

            # the same accepted monitor batches the Prefect path folds in
            extra = monitor_state.accepted_batches(get_settings()) if params.data.include_monitored else []
            data = params.data.model_copy(update={"path": local_data_path(params.data.path)})  # s3:// -> mirror
            report = prepare_from_params(data, PREPARED, base_dir=Path.cwd(), extra=extra)
            print(
                f"prepared {report['kept']} samples ({report['quarantined']} quarantined, "
                f"{report['duplicates_dropped']} duplicates dropped, {len(extra)} monitor batches "
                f"folded in) -> {PREPARED}"
            )
        elif args.stage == "train":
            from effects.training.stages import train_stage
            from lepton_core.data.prepare import read_prepared

            result = train_stage(read_prepared(PREPARED), params.train, MODEL)
            best = (
                f"best val RMSE {result.best_val_rmse:.4g}"
                if result.best_val_rmse is not None
                else f"best val accuracy {result.best_val_accuracy:.4f}"
            )
            print(f"trained {result.epochs_run} epochs, {best} -> {MODEL}")
        else:
            from effects.training.stages import evaluate_stage
            from lepton_core.data.prepare import read_prepared

            m = evaluate_stage(read_prepared(PREPARED), MODEL, METRICS_DIR)
            if m.get("task") == "regression":
                print(f"test RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f} -> {METRICS_DIR}/")
            else:
                print(f"test accuracy {m['accuracy']:.4f}, macro-F1 {m['f1_macro']:.4f} -> {METRICS_DIR}/")
    except LeptonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
