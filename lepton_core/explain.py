"""Explanations: which parts of the input drive a model's answers.

Integrated Gradients (Sundararajan et al., 2017, through Captum) on the model input,
after the predictor's preprocessing: the straight path from an all-zeros input to
the sample, with the output's gradient averaged along it and multiplied by the
input. Each attribution is one input value's share of the difference between the
output at the sample and at the zeros baseline (the shares sum to that difference),
for the predicted class (or a given one; regression: the predicted value). Because
it reads only the model input, it works for any PyTorch model a predictor serves,
the team's own included.

Permutation importance (Breiman, 2001) is the model-free counterpart for tables:
how much the score falls when one column's values are shuffled between rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lepton_core.errors import InputError, LeptonError
from lepton_core.predictor import BasePredictor, Predictor

# rows (samples x path steps) in one forward pass of Integrated Gradients; bounds memory
IG_BATCH_ROWS = 512
# what autograd says when the output does not depend differentiably on the input
NO_GRADIENT = ("does not require grad", "One of the differentiated Tensors appears to not have been used")


def _torch_predictor(predictor: BasePredictor) -> Predictor:
    if not isinstance(predictor, Predictor):
        raise LeptonError(
            f"explanations need the PyTorch model; this one runs on {type(predictor).__name__} "
            "(explain the version it was made from)"
        )
    return predictor


def _instances_shape(instances: Any, checked: np.ndarray) -> tuple[int, ...]:
    """The shape the caller gave: grey images as (N, H, W) stay so; a table given as a
    DataFrame (which may hold other columns) is (N, F)."""
    if hasattr(instances, "columns"):
        return tuple(checked.shape)
    shape = tuple(np.shape(instances))
    return shape if int(np.prod(shape)) == checked.size else tuple(checked.shape)


def _targets(predictor: Predictor, t: torch.Tensor, targets: np.ndarray | None) -> list[int]:
    """The output each sample's attributions explain: the predicted class, the given
    class indices, or the one output of a regression model."""
    n = len(t)
    if predictor.regression:
        return [0] * n
    if targets is None:
        return [int(i) for i in predictor.forward(t).argmax(1)]
    arr = np.asarray(targets).reshape(-1)
    k = len(predictor.classes)
    if len(arr) != n:
        raise InputError(f"{len(arr)} targets for {n} instances")
    if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() >= k)):
        raise InputError(f"targets must be class indices 0..{k - 1}")
    return [int(i) for i in arr]


def attributions(
    predictor: BasePredictor, instances: np.ndarray, targets: np.ndarray | None = None, steps: int = 32
) -> np.ndarray:
    """Integrated Gradients of each instance, float32, of the instances' shape
    ((N, H, W) or (N, C, H, W) images, (N, F) tables). `targets`: (N,) class indices
    to explain instead of the predicted ones. Raw samples are checked as the
    predictor checks them (one-line InputError)."""
    from captum.attr import IntegratedGradients  # imported here: a second or so, needed only here

    if steps < 2:
        raise InputError(f"steps must be at least 2, not {steps}")
    p = _torch_predictor(predictor)
    checked = p.check(instances)  # (N, *input_shape)
    shape = _instances_shape(instances, checked)
    t = p.to_input(checked).to(p.device)  # model input: (N, C, H, W) scaled, or (N, F) for the MLP
    if len(t) == 0:
        return np.zeros(shape, np.float32)
    target = _targets(p, t, targets)
    ig = IntegratedGradients(p.model)
    try:
        with torch.enable_grad():
            attr = ig.attribute(
                t,
                baselines=torch.zeros_like(t),
                target=target,
                n_steps=steps,
                internal_batch_size=max(steps, IG_BATCH_ROWS),
            )
    except RuntimeError as e:
        if not any(s in str(e) for s in NO_GRADIENT):
            raise
        raise LeptonError(
            "the model's output has no gradient with respect to its input (detached or not differentiable)"
        ) from None
    out: np.ndarray = attr.detach().float().cpu().numpy().reshape(shape)
    return out


def _score(predictor: BasePredictor, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-copy score of stacked copies x (R, N, ...): accuracy, or RMSE for regression."""
    r, n = x.shape[:2]
    flat = x.reshape(r * n, *x.shape[2:])
    if predictor.regression:
        err = (predictor.values(flat).reshape(r, n) - y[None]) ** 2
        rmse: np.ndarray = np.sqrt(err.mean(1))
        return rmse
    hits = predictor.logits(flat).argmax(1).reshape(r, n) == y[None]
    acc: np.ndarray = hits.mean(1)
    return acc


def _labels(predictor: BasePredictor, y: Any, n: int) -> np.ndarray:
    arr = np.asarray(y).reshape(-1)
    if len(arr) != n:
        raise InputError(f"{len(arr)} labels for {n} rows")
    if predictor.regression:
        return arr.astype(np.float64)
    classes = predictor.classes
    if not np.issubdtype(arr.dtype, np.integer):
        lookup = {c: i for i, c in enumerate(classes)}
        unknown = sorted({str(v) for v in arr if str(v) not in lookup})
        if unknown:
            raise InputError(f"labels not among the model's classes: {', '.join(unknown[:5])}")
        arr = np.array([lookup[str(v)] for v in arr], np.int64)
    return arr


def permutation_importance(
    predictor: BasePredictor, x: Any, y: np.ndarray, repeats: int = 3, seed: int = 0
) -> np.ndarray:
    """(F,) float64: the mean fall in accuracy (classification) or rise in RMSE
    (regression) when one feature is shuffled between rows, over `repeats` seeded
    shuffles. F is the model's feature count (images: one value per pixel and
    channel). `y`: class indices or names, or the true values."""
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, not {repeats}")
    raw = predictor.check(x)  # (N, *input_shape)
    n = len(raw)
    if n < 2:
        raise InputError("permutation importance needs at least 2 rows")
    labels = _labels(predictor, y, n)
    base = float(_score(predictor, raw[None], labels)[0])
    flat = raw.reshape(n, -1)
    rng = np.random.default_rng(seed)
    out = np.zeros(flat.shape[1], np.float64)
    for j in range(flat.shape[1]):
        copies = np.repeat(flat[None], repeats, axis=0)  # (R, N, F)
        for r in range(repeats):
            copies[r, :, j] = flat[rng.permutation(n), j]
        scores = _score(predictor, copies.reshape(repeats, *raw.shape), labels)
        out[j] = float(np.mean(scores - base if predictor.regression else base - scores))
    return out
