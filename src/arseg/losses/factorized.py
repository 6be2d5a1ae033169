"""The factorized AR sum: no N x N matrix, O(N C^2) time, O(C^2) extra memory.

With ``S`` (C, N) the square roots of the softmax (``kernel="sqrt"``; the softmax itself for
``kernel="linear"``) and ``Y`` (N, C) the one-hot labels (columns of
ignored positions zeroed in both), expand around the target, ``S = Y^T + D``:

    A - M = S^T S - Y Y^T = E + E^T + F,    E = Y D,  F = D^T D.

With the C x C matrices ``G = D D^T``, ``H = D Y`` and the class counts ``n = diag(Y^T Y)``
(``Y^T Y`` is diagonal for one-hot rows):

    sum_ij (A - M)_ij^2 = 2 sum_k n_k G_kk + 2 <H, H^T> + ||G||^2 + 4 <H, G>

and the gradient ``dL/dS = 4 S (A - M)`` is

    4 [ (diag(n) + H + H^T + G) D + (H^T + G) Y^T ].

Every term is built from the residual D, which goes to 0 with the loss, so float32 keeps its
relative accuracy near convergence; the textbook ``||S S^T||^2 - 2 ||S Y||^2 + sum_k n_k^2``
subtracts numbers of size N^2 and loses it. The backward is written by hand (one (C x C) @ (C x N)
product, a gather and the softmax chain rule) rather than left to autograd, whose product
gradients take slow (N x C) layouts and keep more buffers alive: only D is saved.

Nothing above uses the unit norm of the columns of S, so both kernels share it; only the chain
rule from S to the logits z differs (p = softmax(z), g = dL/dS, per column):

* sqrt, S = exp(0.5 log p):  dz = 0.5 (g * S - S^2 * sum_c g_c S_c);
* linear, S = p:             dz = g * S - S * sum_c g_c S_c.

Per-position weights w (pairs weighted w_i w_j) are the same sum for S' = S diag(sqrt w) and
Y' = diag(sqrt w) Y, so D' = D diag(sqrt w) and ``G = D diag(w) D^T``, ``H = D diag(w) Y``,
``n_k = sum_i w_i [L_i = k]``; the gradient with respect to the unweighted S is the same expression
built with those matrices, times w column-wise (no square root or division is needed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["factorized_sq_sum"]


class _FactorizedSqSum(torch.autograd.Function):
    # Big (B, C, N) buffers: D (made in forward, kept for backward), the gradient and one
    # temporary in backward. D is turned into S = D + Y^T in place during backward and restored
    # bit-exactly afterwards (D = fl(S - 1) with S in [0, 1], and (D + 1) - 1 round-trips
    # exactly), so repeated backward passes (retain_graph, gradcheck) see the same D.

    @staticmethod
    def forward(
        ctx, logits: Tensor, labels: Tensor, valid: Tensor, linear: bool, weight: Tensor | None
    ) -> Tensor:
        # logits (B, C, N) float32/float64; labels (B, N) int64 in [0, C) (ignored mapped to 0);
        # valid (B, N) bool; linear: S = softmax instead of sqrt(softmax); weight: None or (B, N)
        # in the logits' dtype, 0 at invalid positions.
        batch, num_classes, n = logits.shape
        valid_f = valid.unsqueeze(1).to(logits.dtype)  # (B, 1, N)
        index = labels.unsqueeze(1)  # (B, 1, N)
        # S = exp(a * log_softmax(z) + log(valid)), a = 0.5 (sqrt) or 1 (linear): exactly 0 at
        # ignored columns.
        d = F.log_softmax(logits, dim=1)
        torch.add(valid_f.log(), d, alpha=1.0 if linear else 0.5, out=d).exp_()
        d.scatter_add_(1, index, valid_f.neg())  # D = S - Y^T (0 at ignored columns)
        dw = d if weight is None else d * weight.unsqueeze(1)  # D diag(w)
        g = dw @ d.transpose(1, 2)  # (B, C, C)
        h = d.new_zeros(batch, num_classes, num_classes)
        h.scatter_add_(2, index.expand(batch, num_classes, n), dw)  # H = D diag(w) Y
        mass = valid_f.squeeze(1) if weight is None else weight
        counts = d.new_zeros(batch, num_classes).scatter_add_(1, labels, mass)
        del dw
        out = (
            2 * (counts * g.diagonal(dim1=1, dim2=2)).sum(dim=1)
            + 2 * (h * h.transpose(1, 2)).sum(dim=(1, 2))
            + g.square().sum(dim=(1, 2))
            + 4 * (h * g).sum(dim=(1, 2))
        )
        ctx.save_for_backward(g, h, counts, labels, valid_f, weight)
        ctx.residual = d  # an intermediate: kept on ctx, modified in place and restored below
        ctx.linear = linear
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None, None, None]:
        g, h, counts, labels, valid_f, weight = ctx.saved_tensors
        d = ctx.residual
        batch, num_classes, n = d.shape
        index = labels.unsqueeze(1)
        # dL/dS = 4 [(diag(n) + H + H^T + G) D + (H^T + G) Y^T]; grad_out and the factor 0.5 of
        # the sqrt chain rule below are folded into the C x C matrices.
        coef = ((4 if ctx.linear else 2) * grad_out).view(batch, 1, 1)
        ht_g = (h.transpose(1, 2) + g) * coef
        m = ht_g + (h + torch.diag_embed(counts)) * coef
        grad = torch.gather(ht_g, 2, index.expand(batch, num_classes, n)).baddbmm_(m, d)
        if weight is not None:
            grad.mul_(weight.unsqueeze(1))
        # Chain rule through S = exp(0.5 * log_softmax(z)), with S = D + Y^T the masked S (0 at
        # ignored columns, so their gradient vanishes): dz = dS * S - S^2 * sum_c (dS * S); for
        # S = softmax(z): dz = dS * S - S * sum_c (dS * S). (p = S^2 resp. S.)
        s = d.scatter_add_(1, index, valid_f)
        grad.mul_(s)
        p = s if ctx.linear else s * s
        grad.addcmul_(p, grad.sum(dim=1, keepdim=True), value=-1)
        s.scatter_add_(1, index, valid_f.neg())  # back to D
        return grad, None, None, None, None


def factorized_sq_sum(
    logits: Tensor,
    labels: Tensor,
    valid: Tensor,
    kernel: str = "sqrt",
    weight: Tensor | None = None,
) -> Tensor:
    """Per-image ``sum_ij (A - M)_ij^2`` over valid pairs, from sampled logits, without N x N.

    Args:
        logits: (B, C, N) float32 or float64 sampled logits (softmax over C).
        labels: (B, N) int64 labels in [0, C) at valid positions (any value in [0, C) elsewhere).
        valid: (B, N) bool, False at ignored positions.
        kernel: ``"sqrt"`` (S = sqrt(softmax)) or ``"linear"`` (S = softmax).
        weight: optional (B, N) per-position weights in the logits' dtype, 0 at invalid
            positions: the sum becomes ``sum_ij w_i w_j (A - M)_ij^2``.

    Returns:
        (B,) in the dtype of ``logits``; differentiable with respect to ``logits`` (first order).
    """
    return _FactorizedSqSum.apply(logits, labels, valid, kernel == "linear", weight)
