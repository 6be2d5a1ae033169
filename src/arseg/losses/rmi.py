"""Region Mutual Information loss (Zhao, Li, Wang & Yang, NeurIPS 2019), sigmoid variant.

As the default forward of the authors' code (ZJULearning/RMI ``losses/rmi/rmi.py``,
``forward_sigmoid``) defines it, written from that definition:

* **BCE part**: per-class binary cross-entropy with logits against the one-hot labels, summed
  over the classes, averaged over the labelled pixels.
* **RMI part**: labels (one-hot, zero at unlabelled pixels) and probabilities
  (``sigmoid(z)``, set to 0 at unlabelled pixels, plus 1e-6) are max-pooled (``pool_size``,
  stride ``pool_stride``, padding ``pool_size // 2``; no pooling for stride 1); each class map
  gives ``radius^2``-dimensional region vectors (every ``radius x radius`` window, no padding);
  with ``Y``, ``P`` the centred vectors of one class and image (d x n, d = radius^2),
  ``Sigma = Y Y^T - Y P^T (P P^T + eps I)^{-1} P Y^T`` (the posterior covariance of Y given
  P, unnormalised) and the class's term is ``0.5 log det(Sigma + eps I)``; the terms are
  averaged over the images, summed over the classes and divided by ``radius^2``.
* **Combined** as ``bce_weight * BCE + (1 - bce_weight) * RMI`` (``loss_weight_lambda=0.5,
  lambda_way=1``).

The RMI part is an upper bound of the conditional entropy, up to constants: it is *not*
bounded below by 0 (a perfect prediction gives about ``0.5 C log(eps)``, negative).

**Precision.** The reference computes the covariances and the log-determinant in float64, on
CUDA only (``torch.cuda.DoubleTensor``). Float32 is not enough for the moments: their entries
grow with the number of region vectors (about 10^4 for a pooled Cityscapes-size map), and
float32 rounds such entries to about 1e-3, above the regulariser eps = 5e-4 that keeps the
small eigenvalues apart; where the prediction explains the labels (a confident prediction, a
straight boundary) ``Sigma`` itself is of the size of eps. Every float32 formulation that forms
the moments then fails there (measured: a perfect prediction of two half-planes at 512 x 1024
gives -6.99 against -7.37 in float64). So here the maps, the BCE, the pooling and the region
vectors are float32 (float64 for float64 logits), and only the 2d x 2d joint second moments of
(P, Y) are accumulated and factorised in float64, on any device that has float64 (CPU, CUDA):
with ``J = [P; Y] [P; Y]^T + eps I`` (centred vectors), the trailing d x d block of the
Cholesky factor of J is the Cholesky factor of its Schur complement
``Y Y^T + eps I - Y P^T (P P^T + eps I)^{-1} P Y^T = Sigma + eps I``, so
``log det(Sigma + eps I) = 2 sum log diag(L)[d:]``, with no explicit inverse and no
difference of large matrices. The result is returned in the logits' precision (float32).

**Cost.** The float64 region vectors are 2 radius^2 = 18 values per pooled position, class and
image (57 MB for a (8, 11, 180, 240) batch): writing them, centring them and autograd's two
products and gradient buffers over them took two thirds of the loss's time. Here they are built
a few maps at a time (:data:`CHUNK_BYTES`, cache-sized), only their 18 x 18 moments are kept,
and the backward rebuilds them and takes one product for the probability rows alone
(:class:`_RegionMoments`); values bit for bit as before, gradients within float rounding. What
remains is mostly the full-resolution BCE, sigmoid and max-pooling, which the loss defines.

Other differences from the reference: it divides the BCE sum by the number of labelled pixels
(the reference by that number + 1, a zero-division guard); it takes ``log`` of the Cholesky
diagonal without the reference's ``+ 1e-8``; images without labelled pixels are left out of the
mean (the reference averages a constant for them). With ``reduction="mean"`` the BCE part is the
mean over all the labelled pixels of the batch, as in the reference, so it equals the mean of
the per-image values (``"none"``) only when the images have as many labelled pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._checks import check_ignore_index
from ._dense import check_number, check_reduction, dense_inputs, one_hot_valid

__all__ = ["RMILoss", "rmi_loss"]

#: Added to the (masked) sigmoid probabilities before pooling, as the reference's ``_CLIP_MIN``.
PROB_FLOOR = 1e-6


def check_rmi_options(
    radius: object, pool_size: object, pool_stride: object, bce_weight: object, eps: object
) -> None:
    """Raise for options RMI cannot run with (ints >= 1, ``bce_weight`` in [0, 1], eps > 0)."""
    for name, value in (("radius", radius), ("pool_size", pool_size), ("pool_stride", pool_stride)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    check_number(bce_weight, "bce_weight", low=0.0, high=1.0)
    check_number(eps, "eps", low=0.0, low_open=True)


def _pooled_size(size: int, pool_size: int, pool_stride: int) -> int:
    if pool_stride == 1:
        return size
    return (size + 2 * (pool_size // 2) - pool_size) // pool_stride + 1


#: Bytes of float64 region vectors built at a time (a few maps per chunk); the vectors of a
#: whole batch (2 radius^2 values per position, class and image) are never held at once.
CHUNK_BYTES = 8 * 2**20


def _chunks(maps: Tensor, radius: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of the (N, 2, h, w) maps whose region vectors fit CHUNK_BYTES."""
    h, w = maps.shape[-2:]
    per_map = 2 * radius * radius * (h - radius + 1) * (w - radius + 1) * 8
    step = max(1, CHUNK_BYTES // per_map)
    return [(i, min(i + step, maps.shape[0])) for i in range(0, maps.shape[0], step)]


def _centred_regions(maps: Tensor, radius: int) -> Tensor:
    """(N, 2, h, w) float64 maps -> (N, 2 d, n) region vectors, centred over the n positions.

    Row k < d is offset (k // radius, k % radius) of the window in the first map (P), row
    d + k the same offset in the second (Y).
    """
    x = F.unfold(maps, kernel_size=radius)
    return x.sub_(x.mean(dim=-1, keepdim=True))


class _RegionMoments(torch.autograd.Function):
    """Centred joint second moments ``J = X X^T`` (float64) of the region vectors ``X = [P; Y]``.

    Built a few maps at a time (:data:`CHUNK_BYTES`) and recomputed in the backward rather than
    kept: the vectors of a batch are ``2 radius^2`` times the pooled maps, in float64. The
    backward is ``dX = (G + G^T) X`` for the rows of P only (the centring adds nothing: the
    centred rows sum to 0), folded back onto the map: one product instead of autograd's two
    over all 2 d rows, and no gradient for the labels.
    """

    @staticmethod
    def forward(ctx, probs, labels, radius):
        # probs, labels (B, C, h, w); labels need no gradient.
        batch, num_classes = probs.shape[:2]
        maps = torch.stack([probs, labels], dim=2).flatten(0, 1).to(torch.float64)
        d = radius * radius
        moments = maps.new_empty(maps.shape[0], 2 * d, 2 * d)
        for start, stop in _chunks(maps, radius):
            x = _centred_regions(maps[start:stop], radius)
            torch.matmul(x, x.transpose(-1, -2), out=moments[start:stop])
        ctx.save_for_backward(maps)
        ctx.radius, ctx.dtype = radius, probs.dtype
        return moments.view(batch, num_classes, 2 * d, 2 * d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_moments):
        (maps,) = ctx.saved_tensors
        radius = ctx.radius
        d = radius * radius
        grad = grad_moments.flatten(0, 1)
        grad = (grad + grad.transpose(-1, -2))[:, :d]  # (N, d, 2 d): the rows of P
        out = maps.new_empty(maps.shape[0], 1, *maps.shape[-2:])
        for start, stop in _chunks(maps, radius):
            x = _centred_regions(maps[start:stop], radius)
            out[start:stop] = F.fold(
                grad[start:stop] @ x, output_size=maps.shape[-2:], kernel_size=radius
            )
        return out.view(grad_moments.shape[:2] + maps.shape[-2:]).to(ctx.dtype), None, None


def rmi_lower_bound(labels: Tensor, probs: Tensor, radius: int, eps: float) -> Tensor:
    """``0.5 log det(Sigma + eps I)`` per image and class of (pooled) maps; (B, C).

    Args:
        labels: (B, C, h, w) label maps (no gradient needed).
        probs: (B, C, h, w) probability maps, same dtype (float32 or float64).
        radius: side of the square region; h, w >= radius.
        eps: added to the diagonals.

    Returns:
        (B, C) in the dtype of ``probs``; the moments and their Cholesky factor in float64.
    """
    d = radius * radius
    moments = _RegionMoments.apply(probs, labels, radius)  # P rows first, then Y
    eye = torch.eye(2 * d, dtype=moments.dtype, device=moments.device)
    chol = torch.linalg.cholesky(moments + eps * eye)
    # 0.5 * log det(Sigma + eps I) = 0.5 * 2 * sum log diag of the trailing block
    return chol.diagonal(dim1=-2, dim2=-1)[..., d:].log().sum(dim=-1).to(probs.dtype)


def rmi_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
    radius: int = 3,
    pool_size: int = 3,
    pool_stride: int = 3,
    bce_weight: float = 0.5,
    eps: float = 5e-4,
) -> Tensor:
    r"""Region Mutual Information loss, the reference's sigmoid variant (see the module).

    ``loss = bce_weight * BCE + (1 - bce_weight) * RMI`` with BCE the per-class sigmoid
    cross-entropy (summed over classes, mean over labelled pixels) and RMI the lower-bound term
    ``sum_c mean_images 0.5 log det(Sigma_c + eps I) / radius^2`` on max-pooled maps.
    Unlabelled pixels count as 0 in both the one-hot labels and the probabilities (as the
    reference), so their logits do not change the loss.

    Args:
        logits: (B, C, H, W) float16 / bfloat16 / float32 / float64 class scores, one sigmoid
            per class, at the target's size (upsample them first; a mismatch is a
            ``ValueError``). C = 1 is a binary map: labels 0 / 1, the channel is class 1's.
        target: (B, H, W) or (B, 1, H, W) integer labels in [0, C) (C = 1: [0, 1]) or
            ``ignore_index``.
        ignore_index: label of unlabelled pixels.
        reduction: ``"mean"`` (BCE over the labelled pixels of the batch, RMI over the images
            with some, as the reference), ``"sum"`` (of the per-image values) or ``"none"``
            ((B,) per image, BCE over the image's labelled pixels; 0 for an image without any).
        radius: side of the square regions (default 3: 9-dimensional vectors).
        pool_size, pool_stride: max-pooling before the regions (default 3, 3); the pooled map
            must have at least ``radius`` rows and columns.
        bce_weight: weight of the BCE part, ``1 - bce_weight`` for RMI (default 0.5).
        eps: added to the covariance diagonals (default 5e-4).

    Returns:
        Scalar (or (B,) for ``"none"``) float32 tensor; float64 for float64 logits. Computed in
        that precision with autocast disabled, except the 2 radius^2 x 2 radius^2 moments and
        their Cholesky factor, always float64 (see the module: float32 cannot hold them). Without
        any labelled pixel the result is 0, attached to the graph (zero gradients, no NaN).

    Raises:
        TypeError: non-tensor inputs, non-float logits, a float target, non-numeric options.
        ValueError: wrong ranks or sizes, an image too small for the regions after pooling,
            labels outside [0, C) other than ``ignore_index``, bad options, an unknown
            ``reduction``.

    Example:
        >>> logits = torch.randn(2, 5, 48, 48, requires_grad=True)
        >>> target = torch.randint(0, 5, (2, 48, 48))
        >>> target[:, :6] = 255                        # ignored rows
        >>> loss = rmi_loss(logits, target)            # pooled to 16 x 16, 3 x 3 regions
        >>> loss.backward()
        >>> rmi_loss(logits, target, reduction="none").shape
        torch.Size([2])
    """
    check_rmi_options(radius, pool_size, pool_stride, bce_weight, eps)
    z, labels, valid = dense_inputs(
        logits, target, ignore_index, reduction, loss="rmi_loss", two_class_sigmoid=False
    )
    num_classes, height, width = z.shape[1:]  # labels checked against [0, max(C, 2))
    pooled = (
        _pooled_size(height, pool_size, pool_stride),
        _pooled_size(width, pool_size, pool_stride),
    )
    if min(pooled) < radius:
        raise ValueError(
            f"rmi_loss needs at least radius={radius} rows and columns after pooling "
            f"(pool_size={pool_size}, pool_stride={pool_stride}), got {pooled} from "
            f"(H, W) = {(height, width)}"
        )
    dtype = z.dtype
    bce_weight, eps = float(bce_weight), float(eps)
    with torch.autocast(z.device.type, enabled=False):
        mask = valid.unsqueeze(1).to(dtype)
        if num_classes == 1:
            y = ((labels == 1) & valid).unsqueeze(1).to(dtype)
        else:
            y = one_hot_valid(labels, valid, num_classes, dtype)
        bce = F.binary_cross_entropy_with_logits(z, y, reduction="none") * mask
        bce_sum = bce.sum(dim=(1, 2, 3))  # (B,)
        n_valid = valid.sum(dim=(1, 2)).to(dtype)
        probs = torch.sigmoid(z) * mask + PROB_FLOOR
        if pool_stride > 1:
            pool = {"kernel_size": pool_size, "stride": pool_stride, "padding": pool_size // 2}
            y, probs = F.max_pool2d(y, **pool), F.max_pool2d(probs, **pool)
        rmi = rmi_lower_bound(y, probs, radius, eps).sum(dim=1) / (radius * radius)  # (B,)
        counted = n_valid > 0
        keep = counted.to(dtype)
        if reduction == "mean":
            bce_mean = bce_sum.sum() / n_valid.sum().clamp(min=1)
            rmi_mean = (rmi * keep).sum() / keep.sum().clamp(min=1)
            return bce_weight * bce_mean + (1 - bce_weight) * rmi_mean
        per_image = bce_weight * bce_sum / n_valid.clamp(min=1) + (1 - bce_weight) * rmi
        per_image = per_image * keep
        return per_image if reduction == "none" else per_image.sum()


class RMILoss(nn.Module):
    """RMI loss (sigmoid variant) as a module; see :func:`arseg.losses.rmi_loss`.

    Args:
        ignore_index: label of unlabelled pixels (default 255).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        radius: region side (default 3).
        pool_size, pool_stride: max-pooling before the regions (default 3, 3).
        bce_weight: weight of the BCE part (default 0.5; RMI gets ``1 - bce_weight``).
        eps: covariance diagonal (default 5e-4).

    Shape:
        - logits: (B, C, H, W) float, at the target's size; target: (B, H, W) or (B, 1, H, W).
        - output: scalar float32 ((B,) for ``reduction="none"``).

    Example:
        >>> criterion = RMILoss()
        >>> loss = criterion(torch.randn(2, 3, 30, 30), torch.randint(0, 3, (2, 30, 30)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        ignore_index: int = 255,
        reduction: str = "mean",
        radius: int = 3,
        pool_size: int = 3,
        pool_stride: int = 3,
        bce_weight: float = 0.5,
        eps: float = 5e-4,
    ) -> None:
        super().__init__()
        check_ignore_index(ignore_index)
        check_reduction(reduction)
        check_rmi_options(radius, pool_size, pool_stride, bce_weight, eps)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.radius = radius
        self.pool_size = pool_size
        self.pool_stride = pool_stride
        self.bce_weight = float(bce_weight)
        self.eps = float(eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return rmi_loss(
            logits,
            target,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            radius=self.radius,
            pool_size=self.pool_size,
            pool_stride=self.pool_stride,
            bce_weight=self.bce_weight,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"radius={self.radius}, pool_size={self.pool_size}, pool_stride={self.pool_stride}, "
            f"bce_weight={self.bce_weight}, eps={self.eps}"
        )
