"""Square-root affinity of the predictions and the label affinity, as explicit N x N matrices.

These are the objects the AR loss regresses onto each other:

* ``A = S^T S`` with ``S`` (C, N) the element-wise square root of the softmax at the N sampled
  positions, i.e. ``A_ij = sum_k sqrt(p_ik p_jk)`` (the Bhattacharyya coefficient, 1 on the
  diagonal);
* ``M_ij = [L_i == L_j]`` for the labels at the same positions.

The ``"linear"`` kernel (an ablation, the plain probability dot product the paper argues against)
uses ``S = P`` instead: ``A_ij = sum_k p_ik p_jk``, below 1 on the diagonal unless the prediction
is one-hot (:func:`prediction_affinity` with ``kernel="linear"``).

:func:`arseg.losses.ar_loss` never needs the matrices at large N (its factorized method works on
C x C products); the explicit functions here are for figures and as the reference in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    check_ignore_index,
    check_label_values,
    check_logits,
    check_target,
    class_logits,
    label_map,
)
from .sampling import normalize_scales, sample_positions

__all__ = ["KERNELS", "label_affinity", "prediction_affinity", "sqrt_affinity"]

ScalesArg = int | Sequence[int | Sequence[int]] | None

#: Affinity kernels: ``"sqrt"`` (the paper, ``A = sqrt(P)^T sqrt(P)``) and ``"linear"``
#: (``A = P^T P``).
KERNELS = ("sqrt", "linear")


def check_kernel(kernel: object) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss runs in float32, or in float64 when the logits are float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sqrt_probs(sampled_logits: Tensor) -> Tensor:
    """``S = sqrt(softmax(z))`` over dim 1 of (B, C, N) logits, as ``exp(0.5 * log_softmax)``.

    ``sqrt(softmax)`` would have gradient ``inf * 0 = NaN`` wherever the softmax underflows to 0;
    the log-space form is exact and has a finite gradient everywhere. Float32 (float64 for float64
    input), with autocast disabled.
    """
    with torch.autocast(sampled_logits.device.type, enabled=False):
        z = sampled_logits.to(compute_dtype(sampled_logits.dtype))
        return torch.exp(0.5 * F.log_softmax(z, dim=1))


def kernel_features(sampled_logits: Tensor, kernel: str = "sqrt") -> Tensor:
    """The columns ``S`` (B, C, N) whose Gram matrix is the affinity: sqrt(softmax) or softmax.

    Same precision rules as :func:`sqrt_probs` (float32, float64 for float64 input, no autocast).
    """
    if kernel == "sqrt":
        return sqrt_probs(sampled_logits)
    with torch.autocast(sampled_logits.device.type, enabled=False):
        return F.softmax(sampled_logits.to(compute_dtype(sampled_logits.dtype)), dim=1)


def sample_target(
    target: Tensor, grids: list[tuple[int, int]] | None, size: tuple[int, int]
) -> Tensor:
    """Labels (B, H, W) at the positions used for logits of spatial ``size`` -> (B, N) int64."""
    return sample_positions(target, grids if grids is not None else [size]).long()


def one_hot_t(labels: Tensor, valid: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Transposed one-hot ``Y^T`` (B, C, N) of (B, N) labels, zero columns at invalid positions.

    Ignored labels are mapped to class 0 *before* scattering (never index with 255), and their
    column gets the value 0.
    """
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)
    out = torch.zeros(
        labels.shape[0], num_classes, labels.shape[1], dtype=dtype, device=labels.device
    )
    return out.scatter_(1, safe, valid.unsqueeze(1).to(dtype))


def label_affinity(
    target: Tensor,
    *,
    scales: ScalesArg = (12, 6),
    ignore_index: int = 255,
    size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Label affinity ``M_ij = [L_i == L_j]`` at the sampled positions.

    Args:
        target: (B, H, W) or (B, 1, H, W) integer labels (any integer dtype); ``ignore_index``
            marks unlabelled pixels.
        scales: grid sizes (see :func:`arseg.losses.sampling.normalize_scales`), or ``None`` for
            one position per pixel of ``size``.
        ignore_index: label value excluded from the affinity.
        size: (h, w) of the logits that ``scales=None`` refers to (the target is sampled at the
            centres of those cells); default: the target's own (H, W). Ignored for grids.

    Returns:
        ``(M, valid)``: ``M`` (B, N, N) float32 with 1 where both labels are valid and equal, 0
        elsewhere (rows and columns of ignored positions are all 0); ``valid`` (B, N) bool.

    Example:
        >>> target = torch.tensor([[[0, 0, 1, 1]] * 4])          # (1, 4, 4): left half 0, right 1
        >>> M, valid = label_affinity(target, scales=[2])       # 2x2 grid -> N = 4
        >>> M[0].int().tolist()
        [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    """
    check_target(target)
    check_ignore_index(ignore_index)
    target = label_map(target)
    check_label_values(target, None, ignore_index)
    grids = normalize_scales(scales)
    labels = sample_target(target, grids, size if size is not None else tuple(target.shape[-2:]))
    valid = labels != ignore_index
    # Compared pairwise, not through a one-hot: memory B * N^2 whatever the label values.
    same = labels.unsqueeze(2) == labels.unsqueeze(1)
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)
    return (same & pair_valid).to(torch.float32), valid


def prediction_affinity(
    logits: Tensor, *, scales: ScalesArg = (12, 6), kernel: str = "sqrt"
) -> Tensor:
    """Prediction affinity ``A = S^T S`` at the sampled positions, for either kernel.

    Args:
        logits: (B, C, h, w) float16/bfloat16/float32/float64 class scores (softmax over C;
            C = 1: a sigmoid map, the two classes ``(1 - p, p)``).
        scales: grid sizes, or ``None`` for every logit position (N = h * w).
        kernel: ``"sqrt"`` (``A_ij = sum_k sqrt(p_ik p_jk)``, 1 on the diagonal) or ``"linear"``
            (``A_ij = sum_k p_ik p_jk``).

    Returns:
        (B, N, N) float32 (float64 for float64 logits), symmetric, in [0, 1]; differentiable.
        Computed with autocast disabled.

    Example:
        >>> logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])   # (1, 2, 1, 2): C = 2, N = 2
        >>> prediction_affinity(logits, scales=None, kernel="linear")[0, 1, 1].item()
        0.5
    """
    check_logits(logits)
    check_kernel(kernel)
    logits = class_logits(logits)
    grids = normalize_scales(scales)
    sampled = sample_positions(logits, grids) if grids is not None else logits.flatten(2)
    s = kernel_features(sampled, kernel)
    with torch.autocast(logits.device.type, enabled=False):
        return s.transpose(1, 2) @ s


def sqrt_affinity(logits: Tensor, *, scales: ScalesArg = (12, 6)) -> Tensor:
    """Square-root affinity ``A = S^T S``, ``A_ij = sum_k sqrt(p_ik p_jk)`` at the sampled positions.

    Args:
        logits: (B, C, h, w) float16/bfloat16/float32/float64 class scores (softmax over C).
        scales: grid sizes, or ``None`` for every logit position (N = h * w).

    Returns:
        (B, N, N) float32 (float64 for float64 logits), symmetric, in [0, 1], 1 on the diagonal;
        differentiable. Computed with autocast disabled. ``prediction_affinity(...,
        kernel="linear")`` gives the linear kernel's matrix.

    Example:
        >>> A = sqrt_affinity(torch.randn(2, 5, 16, 16))          # paper grids: N = 144 + 36
        >>> A.shape, bool(torch.allclose(A.diagonal(dim1=1, dim2=2), torch.ones(2, 180)))
        (torch.Size([2, 180, 180]), True)
    """
    return prediction_affinity(logits, scales=scales, kernel="sqrt")
