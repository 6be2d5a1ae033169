"""Segmentation metrics from a confusion matrix (torchmetrics accumulates and syncs it).

IoU of class c = TP / (TP + FP + FN) with rows = ground truth, columns = prediction; a class
that appears neither in the ground truth nor in the predictions has no IoU (NaN) and is left
out of the mean, like the Cityscapes and semseg evaluators. Pixel accuracy = trace / total.
Pixels labelled ``ignore_index`` are not counted at all.

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021) of class c = ``|G_b & P_b| / |G_b | P_b|`` where ``G_b = G_d & G`` is the
inner boundary band of the ground-truth mask ``G`` of c (its pixels within distance ``d`` of
the mask's contour) and ``P_b`` that of the predicted mask. As in the reference implementation
(``cv2.erode`` with a 3x3 kernel applied ``d`` times to the mask padded with one zero pixel)
the distance is the chessboard distance and the image border counts as contour: a mask pixel
is on the band when a pixel outside the mask, or outside the image, lies in the
``(2d+1) x (2d+1)`` square around it. ``d = max(1, round(ratio * image diagonal))``, ratio 0.02
by default. The band is found with an integral image of the "outside" pixels (an exact box
count, O(1) per pixel whatever ``d``), not by ``d`` erosions.

Ignored pixels are unknown, for both masks: they never count as outside a mask (they do not
erode it) and never enter the counts, so the score does not depend on what is predicted on
them (as for mIoU). Per image the intersections and unions of every class are kept; over a
dataset class c scores ``sum I_c / sum U_c`` and the mean is over classes with ``sum U_c > 0``.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = [
    "BOUNDARY_RATIO",
    "SegmentationMetrics",
    "boundary_counts",
    "boundary_iou_from_counts",
    "boundary_width",
    "confusion_matrix",
    "scores_from_confusion",
]

#: Default boundary band width of Boundary IoU, as a fraction of the image diagonal (Cheng et al.).
BOUNDARY_RATIO = 0.02
# Box counts are taken over at most this many pixels at a time (int32 integral images).
_CHUNK_PIXELS = 1 << 24


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Per-image confusion matrices.

    Args:
        pred: (B, H, W) int64 predicted classes.
        target: (B, H, W) int64 ground truth, ``ignore_index`` = not counted.

    Returns:
        (B, C, C) int64, rows = ground truth, columns = prediction.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"pred and target must both be (B, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    b = pred.shape[0]
    valid = target != ignore_index
    flat = target.clamp(0, num_classes - 1) * num_classes + pred.clamp(0, num_classes - 1)
    flat = flat + (torch.arange(b, device=pred.device) * num_classes * num_classes).view(b, 1, 1)
    counts = torch.bincount(flat[valid], minlength=b * num_classes * num_classes)
    return counts.view(b, num_classes, num_classes)


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_RATIO) -> int:
    """Band width ``d`` in pixels: ``max(1, round(ratio * sqrt(height^2 + width^2)))``.

    Example:
        >>> boundary_width(360, 480)  # CamVid: 2% of a 600 px diagonal
        12
    """
    if not ratio > 0:
        raise ValueError(f"boundary ratio must be > 0, got {ratio}")
    return max(1, round(ratio * math.hypot(height, width)))


def _near_outside(outside: torch.Tensor, d: int) -> torch.Tensor:
    """(K, H, W) bool -> (K, H, W) bool: an ``outside`` pixel, or the image border, lies within
    chessboard distance ``d`` (the (2d+1)^2 square around the pixel)."""
    k, h, w = outside.shape
    x = torch.ones((k, h + 2 * d + 1, w + 2 * d + 1), dtype=torch.int32, device=outside.device)
    x[:, 0, :] = 0  # the leading zero row/column of the integral image
    x[:, :, 0] = 0
    x[:, 1 + d : 1 + d + h, 1 + d : 1 + d + w] = outside.to(torch.int32)
    s = x.cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    n = 2 * d + 1
    box = s[:, n:, n:] - s[:, :-n, n:] - s[:, n:, :-n] + s[:, :-n, :-n]
    return box > 0


def boundary_counts(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    ratio: float = BOUNDARY_RATIO,
) -> torch.Tensor:
    """Per-image, per-class Boundary IoU intersections and unions (see the module docstring).

    Args:
        pred: (B, H, W) int64 predicted classes.
        target: (B, H, W) int64 ground truth, ``ignore_index`` = unknown (not counted).
        num_classes: C.
        ratio: band width as a fraction of the image diagonal (``d`` >= 1 pixel).

    Returns:
        (B, 2, C) int64: ``[:, 0]`` = |G_b & P_b|, ``[:, 1]`` = |G_b | P_b| per class.

    Example:
        >>> t = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> t[0, 2:6, 2:6] = 1
        >>> boundary_counts(t, t, 2, ratio=0.01)[0].tolist()  # d = 1
        [[48, 12], [48, 12]]
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"pred and target must both be (B, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    b, h, w = target.shape
    d = boundary_width(h, w, ratio)
    out = torch.zeros((b, 2, num_classes), dtype=torch.int64, device=target.device)
    per_chunk = max(1, _CHUNK_PIXELS // ((h + 2 * d + 1) * (w + 2 * d + 1)))
    for i in range(b):
        valid = target[i] != ignore_index
        # only the classes on a labelled pixel of either map can have a non-empty band
        seen = torch.cat([target[i][valid], pred[i][valid]])
        present = torch.bincount(seen.clamp(0, num_classes - 1), minlength=num_classes)
        ids = present.nonzero().flatten()
        for start in range(0, ids.numel(), per_chunk):
            classes = ids[start : start + per_chunk]
            bands = []
            for labels in (target[i], pred[i]):
                inside = labels == classes.view(-1, 1, 1)  # (K, H, W)
                bands.append(inside & valid & _near_outside(~inside & valid, d))
            g, p = bands
            out[i, 0, classes] = (g & p).flatten(1).sum(1)
            out[i, 1, classes] = (g | p).flatten(1).sum(1)
    return out


def boundary_iou_from_counts(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dataset Boundary IoU from per-image counts (n, 2, C) (or their sum (2, C)).

    Returns:
        ``{"boundary_iou": mean over classes with a non-empty union, "iou": (C,) float64, NaN
        where the union is empty}``.
    """
    counts = counts.double()
    total = counts.sum(0) if counts.dim() == 3 else counts
    inter, union = total[0], total[1]
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))
    present = ~torch.isnan(iou)
    mean = iou[present].mean() if present.any() else torch.tensor(float("nan"), dtype=torch.float64)
    return {"boundary_iou": mean, "iou": iou}


def scores_from_confusion(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """mIoU, pixel accuracy and per-class IoU from a (C, C) confusion matrix (rows = truth)."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    total = cm.sum()
    pixel_acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
    present = ~torch.isnan(iou)
    miou = iou[present].mean() if present.any() else torch.tensor(float("nan"), dtype=torch.float64)
    return {"miou": miou, "pixel_acc": pixel_acc, "iou": iou}


class SegmentationMetrics(MulticlassConfusionMatrix):
    """mIoU, pixel accuracy and per-class IoU, accumulated over batches and synced over processes.

    A torchmetrics confusion matrix (``ignore_index`` pixels dropped) whose ``compute`` returns
    :func:`scores_from_confusion` of the synced matrix; ``confusion()`` gives the matrix itself.

    Example:
        >>> m = SegmentationMetrics(num_classes=3)
        >>> m.update(torch.tensor([[[0, 1], [2, 2]]]), torch.tensor([[[0, 1], [2, 255]]]))
        >>> round(float(m.compute()["miou"]), 3)
        1.0
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes, ignore_index=ignore_index, validate_args=False)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return scores_from_confusion(super().compute())
