"""Lepton's core: models, data formats, training loop, evaluation and the promotion
statistics. Plain Python + torch/numpy; never imports an orchestrator or a tracker."""

__all__ = ["LeptonError"]

from lepton_core.errors import LeptonError
