"""Train the digits with a checkpoint and print the result as JSON: the process
that test_resume_after_sigkill kills and then runs again.

    python -m tests.gpu.train_child CHECKPOINT --device cuda --epochs 20 --epoch-sleep 0.5
"""

from __future__ import annotations

import argparse
import json
import time

from lepton_core.predictor import Preprocessing
from lepton_core.train import train_on_prepared
from tests.gpu.common import digits_params, digits_prepared


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument(
        "--epoch-sleep",
        type=float,
        default=0.0,
        help="seconds to wait after each epoch's checkpoint (room for the kill)",
    )
    args = ap.parse_args()
    prepared = digits_prepared()
    params = digits_params(device=args.device, epochs=args.epochs)
    res = train_on_prepared(
        prepared,
        params,
        Preprocessing.from_meta(prepared.meta),
        args.checkpoint,
        log=lambda step, metrics: time.sleep(args.epoch_sleep),
        progress=False,
    )
    print(
        json.dumps(
            {
                "device": res.device,
                "resumed_from_epoch": res.resumed_from_epoch,
                "epochs_run": res.epochs_run,
                "history_epochs": [int(h["epoch"]) for h in res.history],
                "best_val_accuracy": res.best_val_accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
