"""What one training used, for its own process tree, and what that cost.

`Meter` measures a training in the process that runs it: CPU seconds (user + system,
of this process and of the child processes it waited for, so torchrun and its ranks
count), the peak resident memory, the wall time and, on CUDA, GPU seconds (wall time
x the GPUs in use) and the peak GPU memory. Trainings that run at once in one process
(a sweep's trials on threads) share the process's CPU seconds evenly while they
overlap, so the trials' figures add up to what the process used. `cost` prices the
figures at the `cost` params. Nothing here knows MLflow.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from lepton_core.params import CostParams

PREFIX = "resources."  # the runs' metric names: resources.cpu_seconds, ...
MB = 2**20


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float = 0.0  # CPU time used (user + system), all cores together
    peak_rss_mb: float = 0.0  # the training process's peak resident memory, plus its ranks'
    wall_seconds: float = 0.0
    gpu_seconds: float = 0.0  # wall time x GPUs in use (0 on the CPU)
    peak_gpu_mb: float = 0.0  # the most GPU memory one GPU had allocated

    def metrics(self) -> dict[str, float]:
        """The figures under their run-metric names (resources.cpu_seconds, ...)."""
        return {PREFIX + k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_metrics(cls, metrics: dict[str, float]) -> Usage:
        """The figures a run already holds (zeros for those it lacks)."""
        return cls(**{f.name: float(metrics[PREFIX + f.name]) for f in fields(cls) if PREFIX + f.name in metrics})

    def plus(self, earlier: Usage) -> Usage:
        """This attempt after an earlier one of the same run: seconds add, peaks keep the higher."""
        return Usage(
            cpu_seconds=self.cpu_seconds + earlier.cpu_seconds,
            peak_rss_mb=max(self.peak_rss_mb, earlier.peak_rss_mb),
            wall_seconds=self.wall_seconds + earlier.wall_seconds,
            gpu_seconds=self.gpu_seconds + earlier.gpu_seconds,
            peak_gpu_mb=max(self.peak_gpu_mb, earlier.peak_gpu_mb),
        )


def cost(usage: Usage, prices: CostParams) -> float:
    """CPU-core-hours used and GPU-hours held, at the params' prices."""
    return usage.cpu_seconds / 3600 * prices.cpu_core_hour + usage.gpu_seconds / 3600 * prices.gpu_hour


def priced(usage: Usage, prices: CostParams) -> dict[str, Any]:
    """The figures and their cost, as the retrain's result and the summaries show them."""
    return {"amount": cost(usage, prices), "currency": prices.currency, **asdict(usage)}


# ---------------------------------------------------------------- measuring
def process_cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb() -> float:
    """This process's peak resident memory (since the last `reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def reset_peak_rss() -> None:
    """Start the peak resident memory afresh (Linux; elsewhere it stays the process's peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _cuda() -> Any:
    """torch.cuda when torch is loaded and has initialised CUDA here, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class _Shares:
    """The process's CPU seconds, shared out evenly among the meters running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.charged: dict[int, float] = {}
        self.mark = 0.0

    def _settle(self) -> None:
        now = process_cpu_seconds()
        if self.charged:
            share = (now - self.mark) / len(self.charged)
            for key in self.charged:
                self.charged[key] += share
        self.mark = now

    def join(self, key: int) -> None:
        with self.lock:
            self._settle()
            self.charged[key] = 0.0
            if len(self.charged) == 1:  # alone: peaks start afresh (a shared one stays shared)
                reset_peak_rss()
                cuda = _cuda()
                if cuda is not None:
                    cuda.reset_peak_memory_stats()

    def leave(self, key: int) -> float:
        with self.lock:
            self._settle()
            return self.charged.pop(key)


_SHARES = _Shares()


class Meter:
    """Measures one training: `start()`, train, `trained(...)` with what the training
    reports, `stop()` -> Usage."""

    def __init__(self) -> None:
        self.device, self.world_size = "cpu", 1
        self.ranks: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}  # the run's priced totals, once its tracker recorded them
        self._t0 = 0.0

    def start(self) -> Meter:
        self._t0 = time.perf_counter()
        _SHARES.join(id(self))
        return self

    def trained(self, device: str, world_size: int = 1, ranks: list[dict[str, Any]] | None = None) -> None:
        """Where it trained: the device, the processes (torchrun's ranks), and each rank's
        own account (`peak_rss_mb`, `peak_gpu_mb`)."""
        self.device, self.world_size, self.ranks = device, world_size, list(ranks or [])

    def stop(self) -> Usage:
        wall = time.perf_counter() - self._t0
        cpu = _SHARES.leave(id(self))
        on_gpu = self.device.startswith("cuda")
        gpu_peaks = [float(r.get("peak_gpu_mb", 0.0)) for r in self.ranks]
        cuda = _cuda()
        if on_gpu and not self.ranks and cuda is not None:
            gpu_peaks.append(cuda.max_memory_allocated(self.device) / MB)
        return Usage(
            cpu_seconds=cpu,
            peak_rss_mb=peak_rss_mb() + sum(float(r.get("peak_rss_mb", 0.0)) for r in self.ranks),
            wall_seconds=wall,
            gpu_seconds=wall * self.world_size if on_gpu else 0.0,
            peak_gpu_mb=max(gpu_peaks, default=0.0),
        )


def own_peaks() -> dict[str, float]:
    """A rank's own account for its launcher: its peak resident memory (its whole life)
    and its peak GPU memory."""
    cuda = _cuda()
    return {"peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": cuda.max_memory_allocated() / MB if cuda else 0.0}


# ---------------------------------------------------------------- in words
def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def money(amount: float, currency: str) -> str:
    """0.0000266 USD, 0.000137 USD, 0.5 USD, 12.40 USD, 1,234.50 USD: three significant
    digits below one, never in exponent notation."""
    if amount >= 1:
        return f"{amount:,.2f} {currency}"
    if amount <= 0:
        return f"0 {currency}"
    places = 2 - math.floor(math.log10(amount))
    return f"{amount:.{places}f}".rstrip("0").rstrip(".") + f" {currency}"


def usage_text(priced_usage: dict[str, Any]) -> str:
    """One line for people: the cost, then the figures it came from (`priced`'s dict)."""
    u = priced_usage
    parts = [f"CPU {_duration(u.get('cpu_seconds', 0.0))}", f"peak memory {u.get('peak_rss_mb', 0.0):,.0f} MiB"]
    if u.get("wall_seconds"):
        parts.append(f"wall {_duration(u['wall_seconds'])}")
    if u.get("gpu_seconds"):
        parts += [f"GPU {_duration(u['gpu_seconds'])}", f"peak GPU memory {u.get('peak_gpu_mb', 0.0):,.0f} MiB"]
    return f"{money(u.get('amount', 0.0), u.get('currency', ''))}  ({', '.join(parts)})"
