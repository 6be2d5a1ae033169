"""Multi-class soft Dice loss on the softmax, over the classes present in the target."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_ignore_index
from ._dense import (
    check_bool,
    check_number,
    check_reduction,
    dense_inputs,
    one_hot_valid,
    reduce_images,
)

__all__ = ["DiceLoss", "dice_loss"]


def check_dice_options(smooth: object, per_image: object) -> None:
    """Raise for a ``smooth`` that is not a finite number >= 0 or a non-bool ``per_image``."""
    check_number(smooth, "smooth", low=0.0)
    check_bool(per_image, "per_image")


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
    smooth: float = 1.0,
    per_image: bool = False,
) -> Tensor:
    r"""Soft Dice loss: 1 - the mean soft Dice coefficient over the classes present.

    With ``p`` the softmax over C and ``y`` the one-hot labels, summed over the labelled pixels
    of a set (the whole batch, or each image with ``per_image=True``),

    .. math::
        D_c = \frac{2 \sum p_c y_c + s}{\sum p_c + \sum y_c + s}, \qquad
        \ell = 1 - \frac{1}{|K|} \sum_{c \in K} D_c

    with ``s = smooth`` and K the classes present among the set's labelled pixels (a class the
    target lacks contributes nothing, however much the prediction holds of it). Pixels labelled
    ``ignore_index`` are removed from every sum.

    Args:
        logits: (B, C, H, W) float16 / bfloat16 / float32 / float64 class scores, at the
            target's size (upsample them first; a mismatch is a ``ValueError``). C = 1 (a
            sigmoid map ``z``) is the two-class distribution ``(1 - sigmoid(z), sigmoid(z))``.
        target: (B, H, W) or (B, 1, H, W) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label of unlabelled pixels.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``. With ``per_image=True`` it applies to the
            per-image values (``"none"``: (B,), 0 for an image without labelled pixels;
            ``"mean"``: over the images that have some). With ``per_image=False`` the batch is one
            set with one value, so all three give the same scalar.
        smooth: ``s`` >= 0 added to numerator and denominator (default 1).
        per_image: one Dice per image (``True``) or one over the whole batch (``False``).

    Returns:
        Scalar (or (B,) for ``per_image=True, reduction="none"``) float32 tensor; float64 for
        float64 logits. Computed in that precision with autocast disabled. Without any labelled
        pixel the result is 0, attached to the graph (zero gradients, no NaN).

    Raises:
        TypeError: non-tensor inputs, non-float logits, a float target, a non-number ``smooth``.
        ValueError: wrong ranks or sizes, labels outside [0, C) other than ``ignore_index``,
            ``smooth < 0``, an unknown ``reduction``.

    Example:
        >>> logits = torch.randn(2, 5, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 5, (2, 32, 32))
        >>> target[:, :4] = 255                        # ignored rows
        >>> loss = dice_loss(logits, target)
        >>> loss.backward()
        >>> dice_loss(logits, target, per_image=True, reduction="none").shape
        torch.Size([2])
    """
    check_dice_options(smooth, per_image)
    z, labels, valid = dense_inputs(logits, target, ignore_index, reduction, loss="dice_loss")
    with torch.autocast(z.device.type, enabled=False):
        mask = valid.unsqueeze(1).to(z.dtype)
        p = F.softmax(z, dim=1) * mask
        y = one_hot_valid(labels, valid, z.shape[1], z.dtype)
        inter = (p * y).sum(dim=(2, 3))  # (B, C)
        pred_mass = p.sum(dim=(2, 3))
        true_mass = y.sum(dim=(2, 3))
        if not per_image:
            inter, pred_mass, true_mass = (
                t.sum(dim=0, keepdim=True) for t in (inter, pred_mass, true_mass)
            )
        present = true_mass > 0
        # The denominator is >= 1 for a present class; clamped only so that an absent class
        # with smooth = 0 gives 0 / tiny = 0, not 0 / 0 (it is masked out anyway).
        den = (pred_mass + true_mass + smooth).clamp(min=torch.finfo(z.dtype).tiny)
        coefficient = (2 * inter + smooth) / den
        n_present = present.sum(dim=1)
        mean_dice = (coefficient * present).sum(dim=1) / n_present.clamp(min=1).to(z.dtype)
        per_set = 1 - mean_dice
        counted = n_present > 0
        if not per_image:
            return (per_set * counted.to(z.dtype)).squeeze(0)
        return reduce_images(per_set, counted, reduction)


class DiceLoss(nn.Module):
    """Soft Dice loss as a module; see :func:`arseg.losses.dice_loss`.

    Args:
        ignore_index: label of unlabelled pixels (default 255).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per image with ``per_image=True``).
        smooth: added to numerator and denominator (default 1).
        per_image: one Dice per image instead of one over the batch.

    Shape:
        - logits: (B, C, H, W) float, at the target's size; target: (B, H, W) or (B, 1, H, W).
        - output: scalar float32 ((B,) for ``per_image=True, reduction="none"``).

    Example:
        >>> criterion = DiceLoss(per_image=True)
        >>> loss = criterion(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        ignore_index: int = 255,
        reduction: str = "mean",
        smooth: float = 1.0,
        per_image: bool = False,
    ) -> None:
        super().__init__()
        check_ignore_index(ignore_index)
        check_reduction(reduction)
        check_dice_options(smooth, per_image)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.smooth = float(smooth)
        self.per_image = per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return dice_loss(
            logits,
            target,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            smooth=self.smooth,
            per_image=self.per_image,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"smooth={self.smooth}, per_image={self.per_image}"
        )
