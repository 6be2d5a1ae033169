"""Segmentation metrics from a confusion matrix (torchmetrics accumulates and syncs it).

IoU of class c = TP / (TP + FP + FN) with rows = ground truth, columns = prediction; a class
that appears neither in the ground truth nor in the predictions has no IoU (NaN) and is left
out of the mean, like the Cityscapes and semseg evaluators. Pixel accuracy = trace / total.
Pixels labelled ``ignore_index`` are not counted at all.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

__all__ = ["SegmentationMetrics", "confusion_matrix", "scores_from_confusion"]


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
