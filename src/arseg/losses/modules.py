"""``nn.Module`` wrappers: :class:`ARLoss` and the combined :class:`CEARLoss`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    check_batch,
    check_ignore_index,
    check_logits,
    check_target,
    class_logits,
    label_map,
)
from .affinity import ScalesArg, check_kernel
from .functional import METHODS, REDUCTIONS, ar_loss, check_objective
from .mmseg_conventions import MMSegLossSettings, resolve_mmseg_call
from .sampling import normalize_scales

__all__ = ["ARLoss", "CEARLoss", "CEARLossOutput"]


def _check_options(
    scales: ScalesArg,
    ignore_index: int,
    reduction: str,
    method: str,
    kernel: str,
    objective: str = "mse",
) -> None:
    normalize_scales(scales)
    check_kernel(kernel)
    check_objective(objective)
    check_ignore_index(ignore_index)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class ARLoss(nn.Module, MMSegLossSettings):
    """Affinity Regression loss as a module; see :func:`arseg.losses.ar_loss` for the maths.

    Args:
        scales: grid sizes (default the paper's ``(12, 6)``, N = 180) or ``None`` for the
            logits' full resolution.
        ignore_index: label of unlabelled pixels (default 255).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        method: ``"auto"`` | ``"explicit"`` | ``"factorized"``.
        kernel: ``"sqrt"`` (the paper) | ``"linear"`` (``A = P^T P``, an ablation).
        objective: ``"mse"`` (the paper) | ``"bce"`` (binary cross-entropy of A against M, an
            ablation; see :func:`~arseg.losses.ar_loss`).
        loss_weight: factor applied to the result, a finite number >= 0 (mmsegmentation
            convention; the paper uses 0.1 next to a CE loss of weight 1); checked when set.
        loss_name: key under which mmsegmentation logs it; must start with ``loss_`` (mmseg
            trains only such keys: any other name would be logged but not trained).

    Shape:
        - logits: (B, C, h, w), float16 / bfloat16 / float32 / float64; C = 1 (a sigmoid map) is
          the two-class distribution ``(1 - sigmoid(z), sigmoid(z))``.
        - target: (B, H, W) or (B, 1, H, W), integer; H, W may differ from h, w.
        - weight: optional (B, H, W) or (B, 1, H, W) per-pixel weights >= 0, shaped like the
          target.
        - output: scalar float32 ((B,) per image for ``reduction="none"`` set here); float64 for
          float64 logits. ``reduction_override="none"``: a (B, H, W) map, see below.

    ``forward(pred, target, weight=None, ignore_index=None, reduction_override=None,
    avg_factor=None)`` follows mmsegmentation's loss calls (``decode_head.loss_by_feat`` and
    ``OHEMPixelSampler.sample``):

    - ``ignore_index`` given at call time replaces the module's own.
    - ``weight`` (e.g. the OHEM ``seg_weight``): sampled at the label positions, each pair
      weighted ``w_i w_j`` and normalised by the total pair weight (``ar_loss(weight=...)``);
      all ones is the unweighted loss, zeros remove positions exactly as ``ignore_index``.
    - ``reduction_override`` replaces ``reduction``. ``"none"`` is what per-pixel callers ask
      for (the OHEM sampler ranks pixels by the sum of every loss's (B, H, W) map): AR is a
      pairwise loss with no per-pixel value, so it returns a **zero** (B, H, W) map of the
      target's size in the loss dtype, not attached to the graph (inputs and labels are still
      checked). AR then takes no part in pixel mining: beside CE the mining is CE's alone;
      with AR alone the sampler without ``thresh`` keeps an arbitrary ``min_kept`` subset of
      the labelled pixels (use ``thresh`` or a CE term to mine).
    - ``avg_factor`` must be ``None``: there is no per-pixel sum for it to divide.
    - other keywords are accepted and ignored (mmseg losses take ``**kwargs``).

    Example:
        >>> criterion = ARLoss()
        >>> logits = torch.randn(2, 19, 32, 32, requires_grad=True)
        >>> target = torch.randint(0, 19, (2, 128, 128))
        >>> loss = criterion(logits, target)
        >>> loss.backward()
        >>> criterion.loss_name
        'loss_ar'
    """

    def __init__(
        self,
        scales: ScalesArg = (12, 6),
        ignore_index: int = 255,
        reduction: str = "mean",
        method: str = "auto",
        loss_weight: float = 1.0,
        loss_name: str = "loss_ar",
        kernel: str = "sqrt",
        objective: str = "mse",
    ) -> None:
        super().__init__()
        _check_options(scales, ignore_index, reduction, method, kernel, objective)
        self._init_loss_settings(loss_name, loss_weight)
        self.scales = scales
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.method = method
        self.kernel = kernel
        self.objective = objective

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        ignore_index: int | None = None,
        reduction_override: str | None = None,
        avg_factor: float | None = None,
        **kwargs: Any,
    ) -> Tensor:
        ignore, zeros = resolve_mmseg_call(
            "ARLoss",
            pred,
            target,
            weight=weight,
            ignore_index=ignore_index,
            default_ignore_index=self.ignore_index,
            reduction_override=reduction_override,
            avg_factor=avg_factor,
            no_avg_factor="a pairwise loss has no per-pixel sum to divide",
        )
        if zeros is not None:
            return zeros
        loss = ar_loss(
            pred,
            target,
            scales=self.scales,
            ignore_index=ignore,
            reduction=reduction_override or self.reduction,
            method=self.method,
            kernel=self.kernel,
            weight=weight,
            objective=self.objective,
        )
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

    def extra_repr(self) -> str:
        return (
            f"scales={self.scales}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, method={self.method!r}, kernel={self.kernel!r}, "
            f"objective={self.objective!r}, loss_weight={self.loss_weight}"
        )


class CEARLossOutput(NamedTuple):
    """What :class:`CEARLoss` returns: scalar float32 tensors, ``total = ce + lambda_ar * ar``."""

    total: Tensor
    ce: Tensor
    ar: Tensor


class CEARLoss(nn.Module):
    """Cross-entropy plus ``lambda_ar`` times the AR loss, the paper's training objective.

    CE is the usual per-pixel cross-entropy at the label resolution: when the logits' size differs
    from the target's they are bilinearly resized (``align_corners`` as given) to (H, W) first; with
    ``class_weight`` it is the weighted mean over non-ignored pixels (as ``F.cross_entropy``).
    AR samples the logits and the target directly at the same scene points (no resize). A batch
    without any labelled pixel gives ``ce = ar = 0`` with zero gradients.

    Args:
        lambda_ar: weight of the AR term (paper: 0.1).
        class_weight: optional per-class CE weights, a sequence or a (C,) tensor.
        ignore_index: label of unlabelled pixels, for both terms.
        scales: AR grid sizes (default ``(12, 6)``) or ``None`` for full resolution.
        method: AR method, ``"auto"`` | ``"explicit"`` | ``"factorized"``.
        kernel: AR affinity kernel, ``"sqrt"`` (the paper) | ``"linear"``.
        objective: AR objective, ``"mse"`` (the paper) | ``"bce"`` (an ablation).
        align_corners: convention of the CE resize (the model's ``align_corners``; default
            ``False``, ``True`` for semseg's PSPNet and ICNet).

    Shape:
        - logits: (B, C, h, w) float (C = 1: a sigmoid map, as in :class:`ARLoss`); target:
          (B, H, W) or (B, 1, H, W) integer.
        - output: :class:`CEARLossOutput` ``(total, ce, ar)`` of scalar float32 tensors
          (float64 for float64 logits).

    Example:
        >>> criterion = CEARLoss(lambda_ar=0.1)
        >>> logits = torch.randn(2, 11, 45, 60, requires_grad=True)   # 1/8 of the labels
        >>> target = torch.randint(0, 11, (2, 360, 480))
        >>> total, ce, ar = criterion(logits, target)
        >>> total.backward()
        >>> bool(torch.isclose(total, ce + 0.1 * ar))
        True
    """

    def __init__(
        self,
        lambda_ar: float = 0.1,
        class_weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        scales: ScalesArg = (12, 6),
        method: str = "auto",
        kernel: str = "sqrt",
        align_corners: bool = False,
        objective: str = "mse",
    ) -> None:
        super().__init__()
        _check_options(scales, ignore_index, "mean", method, kernel, objective)
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
        self.align_corners = align_corners
        if not math.isfinite(float(lambda_ar)) or float(lambda_ar) < 0:
            raise ValueError(f"lambda_ar must be a finite number >= 0, got {lambda_ar}")
        self.lambda_ar = float(lambda_ar)
        self.ignore_index = ignore_index
        self.scales = scales
        self.method = method
        self.kernel = kernel
        self.objective = objective
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.ndim != 1:
                raise ValueError(
                    f"class_weight must be 1-D (C,), got shape {tuple(class_weight.shape)}"
                )
        self.register_buffer("class_weight", class_weight)

    @property
    def loss_name(self) -> str:
        # Not "loss_ar": CEARLoss returns a tuple and is no mmseg loss; ARLoss is.
        return "loss_ce_ar"

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """The CE term alone: logits (B, C, h, w) resized to the target (B, H, W) if needed.

        Weighted mean over labelled pixels (as ``F.cross_entropy``), computed in float32 (the
        resize too) with autocast disabled; 0 with zero gradients when no pixel is labelled.
        (B, 1, H, W) targets and one-channel (sigmoid) logits are accepted as in ``forward``.
        """
        logits = class_logits(logits)
        target = label_map(target).long()
        weight = self.class_weight
        if weight is not None:
            if weight.numel() != logits.shape[1]:
                raise ValueError(
                    f"class_weight has {weight.numel()} entries but logits have "
                    f"{logits.shape[1]} classes"
                )
            weight = weight.to(device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.float() if logits.dtype != torch.float64 else logits
            if logits.shape[-2:] != target.shape[-2:]:
                logits = F.interpolate(
                    logits,
                    size=target.shape[-2:],
                    mode="bilinear",
                    align_corners=self.align_corners,
                )
            weight = weight.to(logits.dtype) if weight is not None else None
            total = F.cross_entropy(
                logits, target, weight=weight, ignore_index=self.ignore_index, reduction="sum"
            )
            valid = target != self.ignore_index
            if weight is None:
                denom = valid.sum()
            else:
                safe = torch.where(valid, target, torch.zeros_like(target))
                denom = (weight[safe] * valid).sum()
            # A batch without labelled pixels: total is exactly 0, so 0 / 1 (not 0 / 0 = NaN).
            return total / denom.to(logits.dtype).clamp(min=torch.finfo(logits.dtype).tiny)

    def forward(
        self, logits: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> CEARLossOutput:
        check_logits(logits)
        check_target(target)
        check_batch(logits, target)
        if weight is not None:
            raise ValueError(
                "CEARLoss takes no per-pixel weight; use ARLoss and a CE loss separately "
                "(e.g. in mmsegmentation's loss_decode) to weight pixels"
            )
        ar = ar_loss(
            logits,
            target,
            scales=self.scales,
            ignore_index=self.ignore_index,
            method=self.method,
            kernel=self.kernel,
            objective=self.objective,
        )
        ce = self.cross_entropy(logits, target)
        return CEARLossOutput(ce + self.lambda_ar * ar, ce, ar)

    def extra_repr(self) -> str:
        return (
            f"lambda_ar={self.lambda_ar}, ignore_index={self.ignore_index}, "
            f"scales={self.scales}, method={self.method!r}, kernel={self.kernel!r}, "
            f"objective={self.objective!r}, "
            f"class_weight={'None' if self.class_weight is None else tuple(self.class_weight.shape)}"
        )
