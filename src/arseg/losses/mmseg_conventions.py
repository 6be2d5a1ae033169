"""mmsegmentation's loss-call conventions, in one place for :class:`~arseg.losses.ARLoss` and the
peers' mmseg wrappers (:mod:`arseg.integrations.mmseg`).

mmseg's decode heads call a loss as ``loss(pred, target, weight, ignore_index=...,
reduction_override=..., avg_factor=...)``; its OHEM sampler asks every loss for a per-pixel map
(``reduction_override="none"``). A pairwise or region loss has no per-pixel value: it answers
with a zero map and takes no part in the mining.

The constructor arguments every such loss shares are checked here too: ``loss_weight`` (mmseg
multiplies the loss by it: a finite number >= 0) and ``loss_name`` (mmseg's log key: it must
start with ``loss_``, or mmseg logs the value without adding it to the training loss).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from ._checks import (
    check_batch,
    check_ignore_index,
    check_label_values,
    check_logits,
    check_target,
    check_weight,
    label_map,
)
from ._dense import REDUCTIONS, check_number
from .affinity import compute_dtype

__all__ = [
    "LOSS_NAME_PREFIX",
    "MMSegLossSettings",
    "check_loss_name",
    "check_loss_weight",
    "resolve_mmseg_call",
]

#: What an mmseg loss's ``loss_name`` must start with to be trained (mmseg's convention).
LOSS_NAME_PREFIX = "loss_"


def check_loss_weight(value: object) -> float:
    """``loss_weight`` as a float: a finite real number >= 0 (not a bool, not a string).

    Raises:
        TypeError: not a number (``"0.1"``, ``None``, ``True``); ValueError: NaN, infinite or
            negative (a negative weight would turn the loss into a reward).
    """
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
        value = float(value)  # a numpy scalar (np.float32(0.1)), as float() took it before
    return check_number(value, "loss_weight", low=0.0)


def check_loss_name(value: object) -> str:
    """``loss_name``, mmseg's log key of the loss: a string starting with ``loss_``.

    mmseg prefixes the key (``decode.loss_ar``) and adds to the training loss only the keys that
    contain ``loss`` (mmengine's ``BaseModel.parse_losses``); its losses document ``loss_`` as
    the required prefix. Any other name (``"ar"``) is logged but silently left out of training.

    Raises:
        TypeError: not a string; ValueError: no ``loss_`` prefix.
    """
    if not isinstance(value, str):
        raise TypeError(f"loss_name must be a string starting with 'loss_', got {value!r}")
    if not value.startswith(LOSS_NAME_PREFIX):
        raise ValueError(
            f"loss_name must start with 'loss_', mmseg's prefix of the losses it trains (it "
            f"logs other keys without adding them to the training loss), got {value!r}"
        )
    return value


class MMSegLossSettings:
    """``loss_name`` (read only, checked once) and ``loss_weight`` (checked on every set) of a
    loss module mmseg builds: a mixin for :class:`arseg.losses.ARLoss` and the peers' wrappers.
    A setter, because a hook may set the weight during training (AAF's decay)."""

    _loss_name: str
    _loss_weight: float

    def _init_loss_settings(self, loss_name: object, loss_weight: object) -> None:
        self._loss_name = check_loss_name(loss_name)
        self.loss_weight = loss_weight

    @property
    def loss_name(self) -> str:
        return self._loss_name

    @property
    def loss_weight(self) -> float:
        return self._loss_weight

    @loss_weight.setter
    def loss_weight(self, value: object) -> None:
        self._loss_weight = check_loss_weight(value)


def resolve_mmseg_call(
    owner: str,
    pred: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int | None,
    default_ignore_index: int,
    reduction_override: str | None,
    avg_factor: float | None,
    no_avg_factor: str,
) -> tuple[int, Tensor | None]:
    """Check the mmseg call arguments of the loss ``owner``.

    Args:
        owner: the loss's class name, for the messages.
        pred, target: (B, C, h, w) logits and (B, H, W) or (B, 1, H, W) labels.
        weight: (B, H, W) pixel weights (OHEM's ``seg_weight``) or None.
        ignore_index: the call's (the decode head's); None: ``default_ignore_index``.
        reduction_override: None, ``"mean"``, ``"sum"`` or ``"none"``.
        avg_factor: must be None; ``no_avg_factor`` says why, in the error.

    Returns:
        The ignore index to use, and for ``reduction_override="none"`` the zero (B, H, W) map
        to return (float32, or float64 for float64 logits); else None.
    """
    ignore = default_ignore_index if ignore_index is None else ignore_index
    check_ignore_index(ignore)
    if reduction_override is not None and reduction_override not in REDUCTIONS:
        raise ValueError(
            f"reduction_override must be None or one of {REDUCTIONS}, got {reduction_override!r}"
        )
    if avg_factor is not None:
        raise ValueError(f"{owner} takes no avg_factor ({no_avg_factor}), got {avg_factor!r}")
    if reduction_override != "none":
        return ignore, None
    check_logits(pred)
    check_target(target)
    check_batch(pred, target)
    if weight is not None:
        check_weight(weight, target)
    labels = label_map(target)
    check_label_values(labels, max(pred.shape[1], 2), ignore)
    return ignore, torch.zeros(labels.shape, dtype=compute_dtype(pred.dtype), device=labels.device)
