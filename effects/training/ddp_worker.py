"""One rank of a data-parallel training (started by torchrun; see effects/training/ddp.py).

python -m effects.training.ddp_worker ARGS.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from effects.runtime.procs import die_with_parent
from effects.runtime.settings import get_settings
from lepton_core.data.prepare import read_prepared
from lepton_core.params import TrainParams
from lepton_core.resources import own_peaks

if TYPE_CHECKING:  # torch is imported in main() only
    from lepton_core.train import LogFn


class _TrainOptions(TypedDict, total=False):
    log: LogFn  # left out: train_on_prepared's default (no metric logging)


def main(argv: list[str] | None = None) -> None:
    """One rank (started by torchrun)."""
    import torch
    import torch.distributed as dist

    from effects.tracking import runs
    from lepton_core.predictor import Preprocessing
    from lepton_core.train import distributed_rank, save_trained_model, train_on_prepared

    # torchrun starts ranks in sessions of their own: a rank whose torchrun is killed
    # must not train on as an orphan (and write the work checkpoint of a run that a
    # rerun is resuming)
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:
        sys.exit(1)
    args = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    params = TrainParams.model_validate(args["params"])
    cuda = torch.cuda.is_available() and params.device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, world, _ = distributed_rank()
        prepared = read_prepared(args["prepared"])
        pre = Preprocessing.from_meta(prepared.meta)
        extra = args["extra_state"]
        log = None
        if rank == 0 and extra.get("mlflow_run_id"):
            log = runs.BatchedMetricLogger(runs.client(get_settings()), extra["mlflow_run_id"])
        kwargs: _TrainOptions = {"log": log} if log is not None else {}
        result = train_on_prepared(
            prepared, params, pre, args["work_checkpoint"], progress=args["progress"], extra_state=extra, **kwargs
        )
        if log is not None:
            log.flush()
        # every rank's account: the rows it trained on first, a digest of its final weights
        # (the same on every rank when the gradients were all-reduced) and its peak memory
        report = {
            "rank": rank,
            "rows": result.rank_rows or [],
            "weights_sha256": _weights_digest(result.model),
            **own_peaks(),  # for the run's resources (lepton_core.resources)
        }
        Path(f"{args['result']}.rank{rank}").write_text(json.dumps(report))
        dist.barrier()
        if rank == 0:
            save_trained_model(result, params, pre, prepared.meta, args["model_path"])
            out = {
                k: getattr(result, k)
                for k in (
                    "epochs_run",
                    "best_epoch",
                    "best_val_accuracy",
                    "resumed_from_epoch",
                    "stopped_early",
                    "history",
                    "device",
                    "compile_seconds",
                    "world_size",
                    "task",
                    "best_val_rmse",
                )
            }
            out["ranks"] = [json.loads(Path(f"{args['result']}.rank{r}").read_text()) for r in range(world)]
            tmp = Path(args["result"] + ".tmp")
            tmp.write_text(json.dumps(out))
            os.replace(tmp, args["result"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _weights_digest(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    main()
