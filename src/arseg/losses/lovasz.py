"""Lovasz-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018), over the classes present.

Written here rather than reused: smp's ``LovaszLoss`` (the ``smp`` extra) cannot be a dependency
of the core, and it (like the authors' reference) loops in Python over images and over classes,
one sort per class per image, with no float32 / autocast handling. This implementation sorts all
the classes of all the sets in one batched ``torch.sort`` (one sort per class, vectorised),
keeps unlabelled pixels in place (their error sorts last and adds nothing), counts the cumulative
intersections and unions in integers (exact at any size) and follows the package's conventions
(float32 inside, ``ignore_index``, (B, 1, H, W) targets, 0 with zero gradients for a batch
without labelled pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_ignore_index
from ._dense import check_bool, check_reduction, dense_inputs, one_hot_valid, reduce_images

__all__ = ["LovaszSoftmaxLoss", "lovasz_softmax_loss"]


def check_lovasz_options(per_image: object) -> None:
    """Raise ``TypeError`` for a non-bool ``per_image``."""
    check_bool(per_image, "per_image")


def _lovasz_per_class(errors: Tensor, fg: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Lovasz extension of the Jaccard loss per (set, class).

    Args:
        errors: (S, C, P) errors in [0, 1] (any value at invalid pixels).
        fg: (S, C, P) bool, pixel in class c (False at invalid pixels).
        valid: (S, 1, P) bool, labelled pixels.

    Returns:
        ``(loss, present)``, both (S, C): the extension at the errors, and whether the class is
        present among the set's labelled pixels.
    """
    # Unlabelled pixels get error -1: they sort after every labelled one (errors >= 0), where
    # the cumulative counts no longer change, so their Jaccard increment is exactly 0.
    keyed = torch.where(valid, errors, torch.full_like(errors, -1.0))
    sorted_errors, perm = torch.sort(keyed, dim=-1, descending=True)
    fg_sorted = torch.gather(fg, -1, perm)
    valid_sorted = sorted_errors >= 0
    bg_sorted = valid_sorted & ~fg_sorted
    gts = fg.sum(dim=-1, keepdim=True)  # (S, C, 1) int64
    # After the first k errors: intersection = gts - fg in the top k, union = gts + bg in the
    # top k (integers: exact whatever the number of pixels).
    intersection = gts - fg_sorted.cumsum(dim=-1)
    union = gts + bg_sorted.cumsum(dim=-1)
    dtype = errors.dtype
    # union >= 1 wherever it matters (a present class has gts >= 1); clamped for absent ones.
    jaccard = 1 - intersection.to(dtype) / union.clamp(min=1).to(dtype)
    increments = torch.diff(jaccard, dim=-1, prepend=torch.zeros_like(jaccard[..., :1]))
    loss = (
        torch.where(valid_sorted, sorted_errors, torch.zeros_like(sorted_errors)) * increments
    ).sum(dim=-1)
    return loss, gts.squeeze(-1) > 0


def lovasz_softmax_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
    per_image: bool = False,
) -> Tensor:
    r"""Lovasz-softmax loss: the Lovasz extension of the Jaccard loss, averaged over present classes.

    For class c, with ``p_c`` the softmax and ``m_i(c) = 1 - p_c`` at pixels of class c and
    ``p_c`` elsewhere, the errors are sorted in decreasing order ``m_{\pi_1} >= m_{\pi_2} >= ...``
    and, with ``J_k = |T_k| / |G \cup T_k|`` the Jaccard loss when the first k pixels T_k are
    the mispredicted ones (G: the pixels of class c; ``J_0 = 0``),

    .. math::
        \overline{\Delta}_c = \sum_k m_{\pi_k} (J_k - J_{k-1}), \qquad
        \ell = \frac{1}{|K|} \sum_{c \in K} \overline{\Delta}_c

    over the classes K present among the labelled pixels of the set (the whole batch, or each
    image with ``per_image=True``). Pixels labelled ``ignore_index`` are removed.

    Args:
        logits: (B, C, H, W) float16 / bfloat16 / float32 / float64 class scores, at the
            target's size (upsample them first; a mismatch is a ``ValueError``). C = 1 (a
            sigmoid map ``z``) is the two-class distribution ``(1 - sigmoid(z), sigmoid(z))``.
        target: (B, H, W) or (B, 1, H, W) integer labels in [0, C) or ``ignore_index``.
        ignore_index: label of unlabelled pixels.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``. With ``per_image=True`` it applies to the
            per-image values (``"none"``: (B,), 0 for an image without labelled pixels;
            ``"mean"``: over the images that have some). With ``per_image=False`` the batch is
            one set with one value, so all three give the same scalar.
        per_image: one loss per image, averaged (``True``, the paper's per-image variant) or one
            over all the pixels of the batch (``False``, the default of the reference code).

    Returns:
        Scalar (or (B,) for ``per_image=True, reduction="none"``) float32 tensor; float64 for
        float64 logits. Computed in that precision with autocast disabled. Without any labelled
        pixel the result is 0, attached to the graph (zero gradients, no NaN).

    Raises:
        TypeError: non-tensor inputs, non-float logits, a float target, a non-bool ``per_image``.
        ValueError: wrong ranks or sizes, labels outside [0, C) other than ``ignore_index``, an
            unknown ``reduction``.

    Example:
        >>> logits = torch.randn(2, 5, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 5, (2, 32, 32))
        >>> target[:, :4] = 255                        # ignored rows
        >>> loss = lovasz_softmax_loss(logits, target)
        >>> loss.backward()
        >>> lovasz_softmax_loss(logits, target, per_image=True, reduction="none").shape
        torch.Size([2])
    """
    check_lovasz_options(per_image)
    z, labels, valid = dense_inputs(
        logits, target, ignore_index, reduction, loss="lovasz_softmax_loss"
    )
    batch, num_classes = z.shape[:2]
    with torch.autocast(z.device.type, enabled=False):
        p = F.softmax(z, dim=1)
        fg = one_hot_valid(labels, valid, num_classes, torch.bool)
        errors = torch.where(fg, 1 - p, p)
        if per_image:
            shape = (batch, num_classes, -1)
            errors, fg, mask = errors.reshape(shape), fg.reshape(shape), valid.reshape(batch, 1, -1)
        else:  # the batch is one set of pixels
            errors = errors.transpose(0, 1).reshape(1, num_classes, -1)
            fg = fg.transpose(0, 1).reshape(1, num_classes, -1)
            mask = valid.reshape(1, 1, -1)
        loss, present = _lovasz_per_class(errors, fg, mask)
        n_present = present.sum(dim=1)
        per_set = (loss * present).sum(dim=1) / n_present.clamp(min=1).to(z.dtype)
        counted = n_present > 0
        if not per_image:
            return (per_set * counted.to(z.dtype)).squeeze(0)
        return reduce_images(per_set, counted, reduction)


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax loss as a module; see :func:`arseg.losses.lovasz_softmax_loss`.

    Args:
        ignore_index: label of unlabelled pixels (default 255).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per image with ``per_image=True``).
        per_image: one loss per image instead of one over the batch.

    Shape:
        - logits: (B, C, H, W) float, at the target's size; target: (B, H, W) or (B, 1, H, W).
        - output: scalar float32 ((B,) for ``per_image=True, reduction="none"``).

    Example:
        >>> criterion = LovaszSoftmaxLoss()
        >>> loss = criterion(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self, ignore_index: int = 255, reduction: str = "mean", per_image: bool = False
    ) -> None:
        super().__init__()
        check_ignore_index(ignore_index)
        check_reduction(reduction)
        check_lovasz_options(per_image)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.per_image = per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return lovasz_softmax_loss(
            logits,
            target,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            per_image=self.per_image,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"per_image={self.per_image}"
        )
