"""Scores from the stored counts of evaluations, in numpy: IoU and pixel accuracy from confusion
matrices, the mean Boundary IoU of boundary counts, mean ± std over seeds.

Training computes the same IoU in torch (:mod:`arseg.engine.metrics`); the comparisons, the
bootstrap and the tests of :mod:`arseg.analysis.stats` build on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "check_confusion",
    "iou_from_confusion",
    "mean_boundary_iou",
    "mean_std",
    "miou_from_confusion",
    "pixel_accuracy_from_confusion",
]


def check_confusion(conf: np.ndarray, name: str = "confusion") -> np.ndarray:
    """``conf`` as an array of numeric confusion matrices (..., C, C), else ValueError / TypeError."""
    conf = np.asarray(conf)
    if conf.ndim < 2 or conf.shape[-1] != conf.shape[-2]:
        raise ValueError(f"{name} must have shape (..., C, C), got {conf.shape}")
    if not np.issubdtype(conf.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {conf.dtype}")
    return conf


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU ``tp / (gt + pred - tp)`` of confusion matrices (..., C, C) -> (..., C).

    Classes with an empty union are NaN.

    Example:
        >>> iou_from_confusion(np.array([[3, 1], [0, 0]]))
        array([0.75, 0.  ])
    """
    conf = check_confusion(conf).astype(np.float64, copy=False)
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    union = conf.sum(-1) + conf.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def miou_from_confusion(conf: np.ndarray) -> np.ndarray | float:
    """Mean IoU over classes present in the ground truth or the prediction, (..., C, C) -> (...)."""
    iou = iou_from_confusion(conf)
    valid = ~np.isnan(iou)
    count = valid.sum(-1)
    total = np.where(valid, iou, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def mean_boundary_iou(counts: np.ndarray | None) -> float:
    """Mean Boundary IoU of per-image boundary counts (n, 2, C) (``[:, 0]`` intersections,
    ``[:, 1]`` unions, as in ``per_image_boundary.npy``): summed over the images, averaged over
    the classes with a non-empty union; NaN for None or when no class has one.

    Example:
        >>> mean_boundary_iou(np.array([[[1, 0, 2], [2, 0, 4]]]))
        0.5
    """
    if counts is None:
        return math.nan
    total = counts.sum(0).astype(np.float64)
    inter, union = total[0], total[1]
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else math.nan


def pixel_accuracy_from_confusion(conf: np.ndarray) -> float:
    """Fraction of correctly labelled (non-ignored) pixels of a (C, C) or (n, C, C) confusion."""
    conf = check_confusion(conf)
    total = conf.reshape(-1, *conf.shape[-2:]).sum(0)
    n = total.sum()
    return float(np.trace(total) / n) if n > 0 else float("nan")


def mean_std(
    values: Sequence[float] | np.ndarray, *, one_value_std: float = math.nan
) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of one metric over seeds; the std of a single
    value is ``one_value_std``.

    Example:
        >>> mean_std([0.5, 0.6, 0.7])
        (0.6, 0.09999999999999998)
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float(one_value_std)
