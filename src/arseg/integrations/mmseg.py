"""mmsegmentation 1.x: importing this module registers arseg's losses in ``mmseg.registry.MODELS``.

Registered: ``ARLoss`` (:class:`arseg.losses.ARLoss`), the two peers mmseg lacks,
``ArsegRMILoss`` (:func:`arseg.losses.rmi_loss`) and ``ArsegAAFLoss``
(:func:`arseg.losses.aaf_loss`), and ``ArsegDiceLoss`` (:func:`arseg.losses.dice_loss`): mmseg
1.2's ``DiceLoss`` computes another loss under any of its settings (one Dice per image over all
the classes pooled, ignored pixels kept in its sums; see :class:`ArsegDiceLoss`). mmseg's own
``LovaszLoss`` is left alone: with ``per_image=False, reduction="none"`` (its defaults
otherwise) it gives arseg's ``lovasz`` term's value (``tests/integrations/test_mmseg_real.py``).

In an mmseg config::

    custom_imports = dict(imports=["arseg.integrations.mmseg"], allow_failed_imports=False)
    model = dict(
        decode_head=dict(
            loss_decode=[
                dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                dict(type="ARLoss", loss_weight=0.1),  # the paper: CE + 0.1 AR
            ],
        ),
    )

``dict(type="ARLoss", ...)`` takes :class:`arseg.losses.ARLoss`'s arguments (``scales``,
``ignore_index``, ``reduction``, ``method``, ``kernel``, ``loss_weight``, ``loss_name``), all plain
values, so the config dumps and reloads. mmseg's decode heads call it as
``loss(seg_logits, seg_label, weight=seg_weight, ignore_index=head.ignore_index)`` and its
``OHEMPixelSampler`` as ``loss(..., weight=None, reduction_override="none")``; see
:class:`~arseg.losses.ARLoss` for what each argument does (the head's ``ignore_index`` is the one
used; OHEM's pixel weights weight the pairs; ``"none"`` gives a zero per-pixel map, so AR takes no
part in the mining). Its log key is ``loss_ar``.

:class:`~arseg.losses.CEARLoss` is not registered: it returns a ``(total, ce, ar)`` tuple, which
mmseg cannot log; list mmseg's CE and ``ARLoss`` in ``loss_decode`` instead.

The peers follow the same calling conventions (see :class:`ArsegRMILoss`)::

    loss_decode=[
        dict(type="CrossEntropyLoss", loss_weight=1.0),
        dict(type="ArsegRMILoss", loss_weight=1.0),            # key loss_rmi
        # dict(type="ArsegAAFLoss", loss_weight=1.0, margin=3.0),  # key loss_aaf
        # dict(type="ArsegDiceLoss", loss_weight=1.0),             # key loss_dice
    ]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    from mmseg.registry import MODELS
except ImportError as err:  # mmseg itself, or one of the packages it imports (mmcv, mmengine)
    raise ImportError(
        "arseg.integrations.mmseg needs mmsegmentation 1.x: pip install mmsegmentation mmengine "
        f"mmcv (importing mmseg.registry failed: {err})"
    ) from err

from arseg.losses import ARLoss, aaf_loss, dice_loss, rmi_loss
from arseg.losses._checks import (
    check_batch,
    check_ignore_index,
    check_logits,
    check_target,
    check_weight,
    label_map,
)
from arseg.losses._dense import check_reduction
from arseg.losses.aaf import check_aaf_options
from arseg.losses.dice import check_dice_options
from arseg.losses.mmseg_conventions import MMSegLossSettings, resolve_mmseg_call
from arseg.losses.rmi import check_rmi_options

__all__ = ["MODELS", "REGISTERED", "ArsegAAFLoss", "ArsegDiceLoss", "ArsegRMILoss", "register"]


class _MMSegPeerLoss(nn.Module, MMSegLossSettings):
    """mmseg's calling conventions around one of arseg's full-resolution peer losses."""

    _fn: Callable[..., Tensor]
    _name: str

    def __init__(
        self,
        ignore_index: int,
        reduction: str,
        loss_weight: float,
        loss_name: str,
        align_corners: bool,
        options: dict[str, Any],
    ) -> None:
        super().__init__()
        check_ignore_index(ignore_index)
        check_reduction(reduction)
        self._init_loss_settings(loss_name, loss_weight)
        if not isinstance(align_corners, bool):
            raise TypeError(f"align_corners must be a bool, got {type(align_corners).__name__}")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.align_corners = align_corners
        self.options = options

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
            type(self).__name__,
            pred,
            target,
            weight=weight,
            ignore_index=ignore_index,
            default_ignore_index=self.ignore_index,
            reduction_override=reduction_override,
            avg_factor=avg_factor,
            no_avg_factor="its loss is no per-pixel mean",
        )
        if zeros is not None:
            return zeros
        check_logits(pred)
        check_target(target)
        check_batch(pred, target)
        labels = label_map(target).long()
        if weight is not None:
            w = check_weight(weight, labels)
            if not bool(((w == 0) | (w == 1)).all()):
                raise ValueError(
                    f"{type(self).__name__} takes 0/1 pixel weights (OHEM's seg_weight: 0 "
                    "drops a pixel as ignore_index does), got other values"
                )
            labels = torch.where(w > 0, labels, torch.full_like(labels, ignore))
        if pred.shape[-2:] != labels.shape[-2:]:
            with torch.autocast(pred.device.type, enabled=False):
                pred = pred.float() if pred.dtype != torch.float64 else pred
                pred = F.interpolate(
                    pred, size=labels.shape[-2:], mode="bilinear", align_corners=self.align_corners
                )
        loss = self._fn(
            pred,
            labels,
            ignore_index=ignore,
            reduction=reduction_override or self.reduction,
            **self.options,
        )
        return loss * self.loss_weight if self.loss_weight != 1.0 else loss

    def extra_repr(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (
            f"{options}, ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"loss_weight={self.loss_weight}, loss_name={self._loss_name!r}"
        )


class ArsegRMILoss(_MMSegPeerLoss):
    """RMI (:func:`arseg.losses.rmi_loss`) with mmsegmentation's loss conventions.

    Args:
        radius, pool_size, pool_stride, bce_weight, eps: RMI's options (defaults 3, 3, 3, 0.5,
            5e-4: the reference's).
        ignore_index: label of unlabelled pixels; the decode head's, given at call time,
            replaces it.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (per image).
        loss_weight: factor applied to the result, a finite number >= 0 (checked when set).
        loss_name: log key, ``"loss_rmi"``; it must start with ``loss_`` (mmseg trains only
            such keys: any other name would be logged but not trained).
        align_corners: convention of the bilinear resize of logits whose size is not the
            label's (mmseg's decode heads resize them before calling; then nothing happens).

    ``forward(pred, target, weight=None, ignore_index=None, reduction_override=None,
    avg_factor=None, **kwargs)``: ``pred`` (B, C, h, w) logits, ``target`` (B, H, W) or
    (B, 1, H, W) labels. ``weight`` (OHEM's ``seg_weight``) must be 0/1: a 0 drops the pixel
    exactly as ``ignore_index``. ``reduction_override="none"`` (what the OHEM sampler asks of
    every loss) gives a zero (B, H, W) map: RMI has no per-pixel value and takes no part in
    the mining. ``avg_factor`` is refused; other keywords are ignored.

    Example:
        >>> criterion = ArsegRMILoss(loss_weight=0.5)
        >>> logits = torch.randn(2, 4, 16, 16, requires_grad=True)
        >>> loss = criterion(logits, torch.randint(0, 4, (2, 64, 64)), ignore_index=255)
        >>> loss.backward(); criterion.loss_name
        'loss_rmi'
    """

    _fn = staticmethod(rmi_loss)

    def __init__(
        self,
        radius: int = 3,
        pool_size: int = 3,
        pool_stride: int = 3,
        bce_weight: float = 0.5,
        eps: float = 5e-4,
        ignore_index: int = 255,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        loss_name: str = "loss_rmi",
        align_corners: bool = False,
    ) -> None:
        check_rmi_options(radius, pool_size, pool_stride, bce_weight, eps)
        options = {
            "radius": radius,
            "pool_size": pool_size,
            "pool_stride": pool_stride,
            "bce_weight": float(bce_weight),
            "eps": float(eps),
        }
        super().__init__(ignore_index, reduction, loss_weight, loss_name, align_corners, options)


class ArsegAAFLoss(_MMSegPeerLoss):
    """AAF's affinity field loss (:func:`arseg.losses.aaf_loss`) with mmseg's conventions.

    Args:
        sizes, margin, class_weights: AAF's options (defaults ``(1, 2, 3)``, 3.0, all ones).
            The authors decay the loss weight exponentially (``10 ** (-step / num_steps)``);
            mmseg has no loss-weight schedule, so that needs a hook that sets ``loss_weight``.
        ignore_index, reduction, loss_weight, align_corners: as :class:`ArsegRMILoss`.
        loss_name: log key, ``"loss_aaf"``.

    ``forward`` as :class:`ArsegRMILoss`: 0/1 ``weight`` (0 drops the pixel's pairs), a zero
    (B, H, W) map for ``reduction_override="none"``, no ``avg_factor``.

    Example:
        >>> criterion = ArsegAAFLoss(sizes=[1, 2])
        >>> loss = criterion(torch.randn(2, 4, 16, 16), torch.randint(0, 4, (2, 16, 16)))
        >>> criterion.loss_name
        'loss_aaf'
    """

    _fn = staticmethod(aaf_loss)

    def __init__(
        self,
        sizes: int | Sequence[int] = (1, 2, 3),
        margin: float = 3.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        loss_name: str = "loss_aaf",
        align_corners: bool = False,
    ) -> None:
        sizes = check_aaf_options(sizes, margin, class_weights)
        weights = None if class_weights is None else [float(w) for w in class_weights]
        options = {"sizes": sizes, "margin": float(margin), "class_weights": weights}
        super().__init__(ignore_index, reduction, loss_weight, loss_name, align_corners, options)


class ArsegDiceLoss(_MMSegPeerLoss):
    """arseg's soft Dice (:func:`arseg.losses.dice_loss`, the engine's ``dice`` term) with
    mmseg's conventions.

    mmseg 1.2's own ``DiceLoss`` is another loss: it pools all the classes of an image into one
    Dice (``pred.flatten(1)``: no mean over classes, so a rare class weighs by its pixels), keeps
    the ignored pixels' predictions in its sums (its ``ignore_index`` drops a *class channel*
    of that index), and defaults to a sigmoid per class and squared denominators. No setting
    makes it the mean Dice over the classes present that arseg's ``dice`` term (and the arena's
    figures) is; this one is.

    Args:
        smooth, per_image: Dice's options (defaults 1.0, False: one Dice per class over the
            batch; ``True``: per image, averaged over the images with labelled pixels).
        ignore_index, reduction, loss_weight, align_corners: as :class:`ArsegRMILoss`.
        loss_name: log key, ``"loss_dice"``.

    ``forward`` as :class:`ArsegRMILoss`: 0/1 ``weight`` (0 drops the pixel), a zero
    (B, H, W) map for ``reduction_override="none"``, no ``avg_factor``.

    Example:
        >>> criterion = ArsegDiceLoss(loss_weight=0.5)
        >>> loss = criterion(torch.randn(2, 4, 16, 16), torch.randint(0, 4, (2, 16, 16)))
        >>> criterion.loss_name
        'loss_dice'
    """

    _fn = staticmethod(dice_loss)

    def __init__(
        self,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int = 255,
        reduction: str = "mean",
        loss_weight: float = 1.0,
        loss_name: str = "loss_dice",
        align_corners: bool = False,
    ) -> None:
        check_dice_options(smooth, per_image)
        options = {"smooth": float(smooth), "per_image": per_image}
        super().__init__(ignore_index, reduction, loss_weight, loss_name, align_corners, options)


#: The names this module registers, and the classes they build.
REGISTERED: dict[str, type] = {
    "ARLoss": ARLoss,
    "ArsegRMILoss": ArsegRMILoss,
    "ArsegAAFLoss": ArsegAAFLoss,
    "ArsegDiceLoss": ArsegDiceLoss,
}


def register(registry: Any = MODELS) -> None:
    """Register :data:`REGISTERED` in ``registry`` (mmseg's ``MODELS`` by default); idempotent.

    Raises:
        KeyError: the registry already holds another class under one of the names.
    """
    for name, cls in REGISTERED.items():
        existing = registry.get(name) if hasattr(registry, "get") else None
        if existing is cls:
            continue
        if existing is not None:
            raise KeyError(
                f"the mmseg registry already holds {existing!r} as {name!r}; "
                f"arseg cannot register {cls.__module__}.{cls.__qualname__} under that name"
            )
        registry.register_module(name=name, module=cls)


register()
