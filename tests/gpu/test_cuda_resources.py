"""What a training on CUDA used (lepton_core.resources): GPU seconds and the GPU's peak
memory, beside the CPU figures. Needs CUDA; elsewhere reported as skipped."""

from __future__ import annotations

import pytest
import torch

from lepton_core.params import CostParams
from lepton_core.predictor import Preprocessing
from lepton_core.resources import Meter, cost
from lepton_core.train import train_on_prepared
from tests.gpu import common

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_a_cuda_training_records_gpu_seconds_and_peak_gpu_memory(digits, tmp_path):
    meter = Meter().start()
    result = train_on_prepared(
        digits, common.digits_params(epochs=2), Preprocessing.from_meta(digits.meta), tmp_path / "w.pt", progress=False
    )
    meter.trained(result.device, result.world_size, result.ranks)
    u = meter.stop()
    assert common.on_device(result.device)
    assert u.gpu_seconds == pytest.approx(u.wall_seconds) and u.gpu_seconds > 0  # one GPU, held throughout
    assert 0 < u.peak_gpu_mb < torch.cuda.get_device_properties(0).total_memory / 2**20
    assert u.cpu_seconds > 0 and u.peak_rss_mb > 50
    prices = CostParams(cpu_core_hour=0.04, gpu_hour=2.5)
    assert cost(u, prices) == pytest.approx(u.cpu_seconds / 3600 * 0.04 + u.gpu_seconds / 3600 * 2.5)
