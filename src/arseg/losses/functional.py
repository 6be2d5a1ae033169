"""Functional Affinity Regression (AR) loss."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ._checks import (
    check_batch,
    check_ignore_index,
    check_label_values,
    check_logits,
    check_target,
    check_weight,
    class_logits,
    label_map,
)
from ._dense import REDUCTIONS, check_reduction
from .affinity import (
    KERNELS,
    ScalesArg,
    check_kernel,
    compute_dtype,
    kernel_features,
    one_hot_t,
    sample_target,
)
from .factorized import factorized_sq_sum
from .sampling import normalize_scales, sample_positions

__all__ = [
    "AUTO_EXPLICIT_MAX_POSITIONS",
    "BCE_EPS",
    "KERNELS",
    "METHODS",
    "OBJECTIVES",
    "REDUCTIONS",
    "ar_loss",
]

#: ``method="auto"`` builds the explicit N x N matrices up to this many positions per image and
#: switches to the factorized form above it. At N <= 1024 the explicit matrix is at most 4 MiB per
#: image in float32 and its O(N^2 C) cost is below or close to the factorized O(N C^2) work for
#: usual class counts; the paper's grids (12, 6) give N = 180.
AUTO_EXPLICIT_MAX_POSITIONS = 1024

METHODS = ("auto", "explicit", "factorized")
#: What AR regresses A onto M with: ``"mse"`` (the paper) or ``"bce"`` (an ablation).
OBJECTIVES = ("mse", "bce")
#: ``objective="bce"`` clamps A into [BCE_EPS, 1 - BCE_EPS] before the logs.
BCE_EPS = 1e-6
#: The blockwise BCE (``objective="bce"``, factorized method) builds row blocks of the pair
#: matrices of at most this many elements (B * rows * N; 16 MiB per float32 buffer).
BCE_BLOCK_ELEMENTS = 2**22


def check_objective(objective: object) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def _explicit_sq_sum(s: Tensor, y_t: Tensor, weight: Tensor | None = None) -> Tensor:
    """sum_ij w_i w_j (A - M)^2 per image (w = 1 without weights), A = S^T S, M = Y Y^T."""
    sq = (s.transpose(1, 2) @ s - y_t.transpose(1, 2) @ y_t).square()
    if weight is not None:
        sq = sq * (weight.unsqueeze(2) * weight.unsqueeze(1))
    return sq.sum(dim=(1, 2))


def _bce_rows(s: Tensor, y_t: Tensor, w: Tensor, start: int, stop: int) -> Tensor:
    """sum over rows i in [start, stop) and all j of w_i w_j BCE(A_ij, M_ij), per image (B,)."""
    a = s[:, :, start:stop].transpose(1, 2) @ s  # (B, rows, N)
    m = y_t[:, :, start:stop].transpose(1, 2) @ y_t  # exactly 0 or 1
    a = a.clamp(BCE_EPS, 1 - BCE_EPS)
    bce = torch.where(m > 0.5, -torch.log(a), -torch.log1p(-a))
    pair_w = w[:, start:stop].unsqueeze(2) * w.unsqueeze(1)
    return (bce * pair_w).sum(dim=(1, 2))


def _bce_sum(s: Tensor, y_t: Tensor, w: Tensor, blockwise: bool) -> Tensor:
    """sum_ij w_i w_j BCE(A_ij, M_ij) per image; w (B, N) is 0 at invalid positions.

    Explicit: one block, the (B, N, N) matrices. Blockwise: row blocks of at most
    :data:`BCE_BLOCK_ELEMENTS` elements, each recomputed in the backward pass
    (``torch.utils.checkpoint``), so no (B, N, N) buffer ever exists; the value is the same sum.
    """
    batch, _, n = s.shape
    if not blockwise:
        return _bce_rows(s, y_t, w, 0, n)
    rows = max(1, BCE_BLOCK_ELEMENTS // max(1, batch * n))
    recompute = torch.is_grad_enabled() and s.requires_grad
    total = s.new_zeros(batch)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        if recompute:
            part = checkpoint(_bce_rows, s, y_t, w, start, stop, use_reentrant=False)
        else:
            part = _bce_rows(s, y_t, w, start, stop)
        total = total + part
    return total


def ar_loss(
    logits: Tensor,
    target: Tensor,
    *,
    scales: ScalesArg = (12, 6),
    ignore_index: int = 255,
    reduction: str = "mean",
    method: str = "auto",
    kernel: str = "sqrt",
    weight: Tensor | None = None,
    objective: str = "mse",
) -> Tensor:
    r"""Affinity Regression (AR) loss of Cao & Yang, "Use square root affinity to regress labels".

    The logits and the labels are sampled at the same N scene points (nearest neighbour at the
    centres of the cells of each grid in ``scales``, see :mod:`arseg.losses.sampling`). With
    ``S`` (C, N) the square root of the softmax at those points and ``L`` their labels,

    .. math::
        A = S^\top S, \qquad M_{ij} = [L_i = L_j], \qquad
        \ell = \frac{1}{n_\mathrm{valid}^2} \sum_{i, j\ \mathrm{valid}} (A_{ij} - M_{ij})^2

    per image, diagonal included. Positions labelled ``ignore_index`` are dropped from rows and
    columns and the mean runs over the ``n_valid^2`` valid pairs. With per-pixel ``weight`` the
    weights ``w`` are sampled at the same positions as the labels and each pair counts
    ``w_i w_j``: :math:`\ell = \sum_{ij} w_i w_j (A_{ij} - M_{ij})^2 / (\sum_i w_i)^2` over
    valid positions (all ones: the unweighted loss exactly; a zero removes the position exactly
    as ``ignore_index`` does). ``kernel="linear"`` replaces
    ``S`` by the softmax ``P`` itself (``A = P^T P``, the ablation the paper argues against).
    ``objective="bce"`` replaces the squared error by the binary cross-entropy of A against M,
    ``-M_ij log A_ij - (1 - M_ij) log(1 - A_ij)`` with A clamped into ``[1e-6, 1 - 1e-6]``
    (:data:`BCE_EPS`) in float32, averaged with exactly the same pair weights, ignore rule and
    reduction (an ablation: the paper argues for *regressing* the affinity; Context Prior uses
    BCE for its prior map). Its minimum is about ``1e-6`` (the clamp), not 0.

    Args:
        logits: (B, C, h, w) float16, bfloat16, float32 or float64 class scores (before softmax).
            Any memory layout (channels_last, non-contiguous views).
            One channel (C = 1, a sigmoid map ``z``) is the two-class distribution
            ``(1 - sigmoid(z), sigmoid(z))``, i.e. labels 0 = background, 1 = foreground.
        target: (B, H, W) or (B, 1, H, W) integer labels in [0, C) or ``ignore_index``. H, W
            may differ from h, w (networks predict at 1/4 or 1/8 of the label size).
        scales: grid sizes, each an int ``s`` (s x s) or a pair ``(gh, gw)``; the positions of all
            grids are concatenated, cross-scale pairs included. Default ``(12, 6)``: N = 180 as in
            the paper. ``None``: every logit position (N = h * w), the target sampled at the
            centres of the logit cells.
        ignore_index: label of unlabelled pixels.
        reduction: ``"mean"`` (over the images that have at least one valid position of
            positive weight), ``"sum"`` or ``"none"`` ((B,) per image, 0 where no position is
            valid).
        method: ``"explicit"`` builds the (B, N, N) matrices; ``"factorized"`` computes the same
            value from C x C products (O(N C^2) time, O(C^2) extra memory, any N); ``"auto"``
            picks explicit for N <= ``AUTO_EXPLICIT_MAX_POSITIONS`` (1024), factorized above.
            With ``objective="bce"`` (whose log has no factorised form) "factorized" is an exact
            blockwise computation instead: row blocks of the pair matrices, recomputed in the
            backward pass, never a (B, N, N) buffer (O(N^2 C) time, O(N) memory per row).
        kernel: ``"sqrt"`` (default, the paper: ``A = sqrt(P)^T sqrt(P)``) or ``"linear"``
            (``A = P^T P``); both methods support both.
        weight: optional (B, H, W) or (B, 1, H, W) per-pixel weights >= 0 at the target's
            resolution (e.g. mmsegmentation's OHEM ``seg_weight``).
        objective: ``"mse"`` (default, the paper) or ``"bce"`` (see above); both methods and
            kernels support both.

    Returns:
        Scalar (or (B,) for ``"none"``) float32 tensor; float64 if the logits are float64. The
        affinity part always runs in that precision with autocast disabled. If no position of the
        batch is valid the result is 0, still attached to the graph (zero gradients, no NaN).

    Raises:
        TypeError: non-tensor inputs, non-float logits, a floating-point (or bool) target.
        ValueError: wrong ranks, batch mismatch, a label outside [0, C) that is not
            ``ignore_index``, non-positive scales, unknown ``reduction``, ``method``,
            ``kernel`` or ``objective``, a weight map of another shape or with negative /
            non-finite values.

    Under ``torch.compile`` the label-range and weight-value checks run inside the graph
    (``torch._assert_async``, no graph break): on CPU a bad label raises ``RuntimeError`` with the
    message above without the offending values; on CUDA it is a device-side assert, reported by
    CUDA without the message. Run once eagerly to see the values.

    Example:
        >>> logits = torch.randn(2, 19, 64, 128, requires_grad=True)  # 1/4 of the labels
        >>> target = torch.randint(0, 19, (2, 256, 512))
        >>> target[:, :32] = 255                                      # ignored rows
        >>> loss = ar_loss(logits, target)                            # (12, 6) grids, N = 180
        >>> loss.backward()
        >>> full = ar_loss(logits, target, scales=None)               # N = 8192, factorized
        >>> loss.dtype, full.shape
        (torch.float32, torch.Size([]))
    """
    check_logits(logits)
    check_target(target)
    check_batch(logits, target)
    check_ignore_index(ignore_index)
    pixel_weight = check_weight(weight, target) if weight is not None else None
    target = label_map(target)
    logits = class_logits(logits)
    check_reduction(reduction)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_kernel(kernel)
    check_objective(objective)
    grids = normalize_scales(scales)
    num_classes = logits.shape[1]
    check_label_values(target, num_classes, ignore_index)

    size = (logits.shape[2], logits.shape[3])
    labels = sample_target(target, grids, size)  # (B, N) int64
    n = labels.shape[1]
    if method == "auto":
        method = "explicit" if n <= AUTO_EXPLICIT_MAX_POSITIONS else "factorized"
    valid = labels != ignore_index

    sampled = sample_positions(logits, grids) if grids is not None else logits.flatten(2)
    dtype = compute_dtype(logits.dtype)
    w = None
    if pixel_weight is not None:
        w = sample_positions(pixel_weight, grids if grids is not None else [size]).to(dtype)
        valid = valid & (w > 0)  # weight 0: removed exactly as an ignored position
        w = torch.where(valid, w, torch.zeros_like(w))
    with torch.autocast(logits.device.type, enabled=False):
        if objective == "bce":
            s = kernel_features(sampled, kernel) * valid.unsqueeze(1).to(dtype)
            y_t = one_hot_t(labels, valid, num_classes, dtype)
            pair_w = valid.to(dtype) if w is None else w
            sq_sum = _bce_sum(s, y_t, pair_w, blockwise=method == "factorized")
        elif method == "explicit":
            s = kernel_features(sampled, kernel)
            y_t = one_hot_t(labels, valid, num_classes, dtype)
            sq_sum = _explicit_sq_sum(s * valid.unsqueeze(1).to(dtype), y_t, w)
        else:
            safe = torch.where(valid, labels, torch.zeros_like(labels))
            sq_sum = factorized_sq_sum(sampled.to(dtype), safe, valid, kernel, w)
        if w is None:
            mass = valid.sum(dim=1).to(dtype)
            # Images without valid positions have sq_sum == 0 exactly (rows/columns masked).
            per_image = sq_sum / mass.clamp(min=1).square()
        else:
            mass = w.sum(dim=1)  # total pair weight (sum_i w_i)^2; == n_valid^2 for w = 1
            per_image = sq_sum / mass.square().clamp(min=torch.finfo(dtype).tiny)
        if reduction == "none":
            return per_image
        total = per_image.sum()
        if reduction == "sum":
            return total
        return total / (mass > 0).sum().clamp(min=1).to(dtype)
