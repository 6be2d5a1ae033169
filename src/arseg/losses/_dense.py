"""Input handling shared by the full-resolution peer losses (Lovasz-softmax, RMI, AAF, Dice).

Unlike AR, which samples logits and labels at the same scene points whatever their sizes, these
losses compare the prediction and the label pixel by pixel, so the logits must already have the
label's spatial size (the engine and mmseg's decode heads upsample them first).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import (
    check_batch,
    check_ignore_index,
    check_label_values,
    check_logits,
    check_target,
    class_logits,
    label_map,
)
from .affinity import compute_dtype

__all__ = [
    "REDUCTIONS",
    "check_bool",
    "check_number",
    "check_reduction",
    "dense_inputs",
    "one_hot_valid",
    "reduce_images",
]

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: object) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def check_number(
    value: object, name: str, *, low: float, high: float = math.inf, low_open: bool = False
) -> float:
    """A finite real (not a bool) in [low, high] ((low, high] with ``low_open``) -> float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        left = "(" if low_open else "["
        right = "]" if math.isfinite(high) else ")"
        raise ValueError(
            f"{name} must be a finite number in {left}{low}, {high}{right}, got {value!r}"
        )
    return value


def dense_inputs(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    reduction: str,
    *,
    loss: str,
    two_class_sigmoid: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Check the inputs of a full-resolution loss and bring them to one form.

    Args:
        logits: (B, C, H, W) float16 / bfloat16 / float32 / float64.
        target: (B, H, W) or (B, 1, H, W) integer labels, same H, W as the logits.
        ignore_index: label of unlabelled pixels.
        reduction: checked against :data:`REDUCTIONS`.
        loss: the loss's name, for the size-mismatch message.
        two_class_sigmoid: a one-channel map becomes the two classes ``(1 - sigmoid, sigmoid)``
            (softmax losses); ``False`` keeps the channel (sigmoid losses), labels then 0 / 1.

    Returns:
        ``(z, labels, valid)``: the logits in float32 (float64 for float64 input), (B, C', H, W)
        with C' = 2 for a one-channel map and ``two_class_sigmoid``; the (B, H, W) int64 labels
        with ignored pixels mapped to 0; the (B, H, W) bool mask of labelled pixels.
    """
    check_logits(logits)
    check_target(target)
    check_batch(logits, target)
    check_ignore_index(ignore_index)
    check_reduction(reduction)
    labels = label_map(target)
    if logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(
            f"{loss} needs logits at the target's size (H, W) = {tuple(labels.shape[-2:])} "
            f"(upsample them first), got logits of shape {tuple(logits.shape)}"
        )
    if two_class_sigmoid:
        logits = class_logits(logits)
    check_label_values(labels, max(logits.shape[1], 2), ignore_index)
    labels = labels.long()
    valid = labels != ignore_index
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    return logits.to(compute_dtype(logits.dtype)), labels, valid


def one_hot_valid(labels: Tensor, valid: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(B, C, H, W) one-hot of (B, H, W) labels in ``dtype``, all zero at unlabelled pixels."""
    out = torch.zeros(
        labels.shape[0], num_classes, *labels.shape[1:], dtype=dtype, device=labels.device
    )
    return out.scatter_(1, labels.unsqueeze(1), valid.unsqueeze(1).to(dtype))


def reduce_images(per_image: Tensor, counted: Tensor, reduction: str) -> Tensor:
    """Reduce (B,) per-image values; ``counted`` (B,) bool marks images that have a value.

    ``"none"``: the values (0 where not counted); ``"sum"``: their sum; ``"mean"``: their mean
    over the counted images (0 if none is, still attached to the graph).
    """
    per_image = per_image * counted.to(per_image.dtype)
    if reduction == "none":
        return per_image
    total = per_image.sum()
    if reduction == "sum":
        return total
    return total / counted.sum().clamp(min=1).to(per_image.dtype)
