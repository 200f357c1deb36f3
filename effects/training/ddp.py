"""Data-parallel training through torchrun (torch.distributed.run).

`train.devices` (processes per node) x `train.nodes` > 1 runs the train stage as
`torchrun ... -m effects.training.ddp_worker` instead of in-process: gloo on the CPU, NCCL on GPUs.
Every rank trains on its share of each batch of the device-resident data and DDP
all-reduces the gradients (lepton_core.train.train_model); rank 0 logs the epochs to
the MLflow run, writes the work checkpoints and the final checkpoint, and returns
the result. The result, metrics, checkpoint and registered model have the same shape
as single-process training, so the gate, registry and serving do not change. A
resumed run resumes every rank from the one work checkpoint.

One node: `--standalone` rendezvous on a free local port. Several nodes: every node
runs the same flow with `LEPTON_DDP_RDZV=host:port` naming the rendezvous (c10d) and
`LEPTON_DDP_NODE_RANK` unset (torchrun assigns ranks).

The ranks run effects/training/ddp_worker.py (a module of its own: it logs to MLflow, and the
`dvc repro` stages that reach this launcher must not import MLflow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from effects.runtime.procs import die_with_parent
from effects.runtime.settings import Settings, get_settings
from lepton_core.data.prepare import Prepared, write_prepared
from lepton_core.errors import LeptonError
from lepton_core.params import TrainParams
from lepton_core.train import TrainResult


def world_size(params: TrainParams) -> int:
    return params.devices * params.nodes


def launch(
    prepared: Prepared,
    params: TrainParams,
    model_path: str | Path,
    work_checkpoint: str | Path | None,
    *,
    prepared_dir: str | Path | None = None,
    progress: bool = True,
    extra_state: dict | None = None,
    timeout: float | None = None,
) -> TrainResult:
    """Run the training on `train.devices` x `train.nodes` processes; wait; return
    rank 0's result (the final checkpoint is at `model_path`)."""
    from lepton_core.checkpoint import load_checkpoint, model_from_checkpoint

    s = get_settings()
    with tempfile.TemporaryDirectory(prefix="lepton-ddp-") as tmp:
        d = Path(tmp)
        if prepared_dir is None:  # not versioned on disk yet: hand the ranks a copy
            prepared_dir = d / "prepared"
            write_prepared(prepared, prepared_dir)
        args = {
            "prepared": str(prepared_dir),
            "params": params.model_dump(mode="json"),
            "model_path": str(model_path),
            "work_checkpoint": str(work_checkpoint) if work_checkpoint else None,
            "progress": progress,
            "extra_state": extra_state or {},
            "result": str(d / "result.json"),
        }
        (d / "args.json").write_text(json.dumps(args))
        cmd, env = _torchrun(params, s, d / "args.json")
        log = d / "ranks.log"
        with open(log, "wb") as out:
            # rank 0's progress bar and notes reach the terminal; the ranks' logs are kept
            # torchrun dies with this process (its ranks die with torchrun: effects/training/ddp_worker.py)
            proc = subprocess.run(
                cmd,
                stdout=out,
                stderr=None if progress else out,
                env=env,
                timeout=timeout,
                cwd=s.project_dir,
                preexec_fn=die_with_parent,
            )
        if proc.returncode != 0 or not (d / "result.json").exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-12:]
            reason = next((ln for ln in reversed(tail) if "Error" in ln or "error" in ln), tail[-1] if tail else "")
            raise RuntimeError(
                f"data-parallel training on {world_size(params)} processes failed "
                f"(exit {proc.returncode}): {reason.strip()[:300]}"
            )
        r = json.loads((d / "result.json").read_text())
    state = load_checkpoint(model_path)
    model, cfg = model_from_checkpoint(state)
    return TrainResult(
        model=model,
        model_config=cfg,
        epochs_run=r["epochs_run"],
        best_epoch=r["best_epoch"],
        best_val_accuracy=r["best_val_accuracy"],
        resumed_from_epoch=r["resumed_from_epoch"],
        stopped_early=r["stopped_early"],
        history=r["history"],
        device=r["device"],
        compile_seconds=r["compile_seconds"],
        world_size=r["world_size"],
        ranks=r["ranks"],
        task=r.get("task", "classification"),
        best_val_rmse=r.get("best_val_rmse"),
    )


def _torchrun(params: TrainParams, s: Settings, args_file: Path) -> tuple[list[str], dict[str, str]]:
    """torchrun's command line and environment for the ranks of one training."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={params.devices}",
        f"--nnodes={params.nodes}",
    ]
    if params.nodes == 1:
        cmd += ["--standalone"]
    else:
        if not s.ddp_rendezvous:
            raise LeptonError("train.nodes > 1 needs LEPTON_DDP_RDZV=host:port (the c10d rendezvous) on every node")
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={s.ddp_rendezvous}", "--rdzv-id=lepton-train"]
    cmd += ["-m", "effects.training.ddp_worker", str(args_file)]
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 with more than one process; share the cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // params.devices)))
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if params.nodes == 1:
        env.setdefault("GLOO_SOCKET_IFNAME", _loopback())  # a sandbox may have no routable interface
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(s.project_dir), env.get("PYTHONPATH")]))
    return cmd, env


def _loopback() -> str:
    try:
        import socket

        return next((name for _, name in socket.if_nameindex() if name.startswith("lo")), "lo")
    except OSError:
        return "lo"
