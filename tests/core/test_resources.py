"""What a training used and cost (lepton_core.resources): the price formula, a resumed
run's totals, the CPU seconds of trainings that overlap in one process, child
processes' CPU, the peak memory, and the line people read."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from lepton_core.params import CostParams
from lepton_core.resources import Meter, Usage, cost, money, peak_rss_mb, priced, process_cpu_seconds, usage_text


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cost_is_cpu_core_hours_and_gpu_hours_at_their_prices():
    u = Usage(cpu_seconds=7200, peak_rss_mb=100, wall_seconds=3600, gpu_seconds=1800)
    prices = CostParams(currency="EUR", cpu_core_hour=0.05, gpu_hour=3.0)
    assert cost(u, prices) == pytest.approx(2 * 0.05 + 0.5 * 3.0)
    p = priced(u, prices)
    assert p["amount"] == pytest.approx(1.6) and p["currency"] == "EUR" and p["cpu_seconds"] == 7200
    assert cost(u, CostParams(cpu_core_hour=0, gpu_hour=0)) == 0


def test_a_resumed_run_adds_its_seconds_and_keeps_the_higher_peak():
    earlier = Usage.from_metrics({"resources.cpu_seconds": 10, "resources.peak_rss_mb": 900, "other": 1})
    assert earlier == Usage(cpu_seconds=10, peak_rss_mb=900)
    total = Usage(cpu_seconds=5, peak_rss_mb=300, wall_seconds=4, gpu_seconds=2, peak_gpu_mb=50).plus(earlier)
    assert total == Usage(cpu_seconds=15, peak_rss_mb=900, wall_seconds=4, gpu_seconds=2, peak_gpu_mb=50)
    assert Usage.from_metrics(total.metrics()) == total
    assert set(total.metrics()) == {
        "resources.cpu_seconds",
        "resources.peak_rss_mb",
        "resources.wall_seconds",
        "resources.gpu_seconds",
        "resources.peak_gpu_mb",
    }


def test_overlapping_meters_share_the_process_cpu_and_add_up_to_it():
    """Two trainings on threads at once (a sweep's trials): each is charged its share,
    and together exactly what the process used meanwhile."""
    before = process_cpu_seconds()
    usages: list[Usage] = []

    def one(seconds: float) -> None:
        m = Meter().start()
        _spin(seconds)
        usages.append(m.stop())

    threads = [threading.Thread(target=one, args=(s,)) for s in (0.3, 0.6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = process_cpu_seconds() - before
    assert len(usages) == 2 and all(u.cpu_seconds > 0.1 for u in usages)
    assert sum(u.cpu_seconds for u in usages) == pytest.approx(used, abs=0.05)


def test_a_child_process_cpu_counts_and_its_peak_memory_is_reported_by_the_rank():
    m = Meter().start()
    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    m.trained("cpu", world_size=2, ranks=[{"peak_rss_mb": 1000.0}, {"peak_rss_mb": 500.0}])
    u = m.stop()
    assert u.cpu_seconds >= 0.4  # the child's, reaped by this process
    assert u.peak_rss_mb > 1500  # this process's own peak plus the ranks'
    assert u.gpu_seconds == 0 and u.peak_gpu_mb == 0  # on the CPU
    assert u.wall_seconds >= 0.4


def test_the_peak_memory_is_the_trainings_own():
    big = b"x" * (400 * 2**20)  # written: resident
    before = peak_rss_mb()
    del big
    m = Meter().start()  # alone: the peak starts afresh
    small = b"y" * (60 * 2**20)
    u = m.stop()
    assert len(small) and u.peak_rss_mb > 60
    if sys.platform.startswith("linux"):
        assert u.peak_rss_mb < before - 300  # not the 400 MiB held before it started


def test_usage_text_leads_with_the_cost_and_adds_the_gpu_when_used():
    cpu = priced(Usage(cpu_seconds=12.34, peak_rss_mb=512.4, wall_seconds=10.2), CostParams())
    assert usage_text(cpu) == "0.000137 USD  (CPU 12.3 s, peak memory 512 MiB, wall 10.2 s)"
    gpu = priced(
        Usage(cpu_seconds=7200, peak_rss_mb=2048, wall_seconds=3600, gpu_seconds=28800, peak_gpu_mb=30000), CostParams()
    )
    assert usage_text(gpu) == (
        "20.08 USD  (CPU 2.00 h, peak memory 2,048 MiB, wall 60.0 min, GPU 8.00 h, peak GPU memory 30,000 MiB)"
    )


def test_money_keeps_three_significant_digits_below_one_and_no_exponent():
    cases = {2.66e-05: "0.0000266", 0.000137: "0.000137", 0.0012: "0.0012", 0.9996: "1", 0.5: "0.5", 0: "0"}
    assert {x: money(x, "USD") for x in cases} == {x: f"{s} USD" for x, s in cases.items()}
    assert money(1234.5, "EUR") == "1,234.50 EUR"
