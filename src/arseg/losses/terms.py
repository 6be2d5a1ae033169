"""The registry of structural loss terms the engine can add to cross-entropy.

Each :class:`LossTerm` names a function ``fn(logits, target, *, ignore_index=..., reduction=...,
**options)`` (reduction ``"mean"`` by default: a scalar float32), the options it takes with their
defaults, and whether it takes the model's native-resolution logits or logits upsampled to the
label size. AR (it samples logits and labels at the same scene points) and AAF (computed at the
network's output resolution as its reference does, on the labels at the logit cells' centres)
take the native logits; Lovasz-softmax, RMI and Dice the upsampled ones.

Example:
    >>> sorted(LOSS_TERMS)
    ['aaf', 'ar', 'dice', 'lovasz', 'rmi']
    >>> check_term_options("aaf", {"margin": 2.0})
    {'sizes': (1, 2, 3), 'margin': 2.0, 'class_weights': None}
    >>> [name for name, term in LOSS_TERMS.items() if term.native_logits]
    ['ar', 'aaf']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import Tensor

from .aaf import aaf_loss, check_aaf_options
from .affinity import check_kernel
from .dice import check_dice_options, dice_loss
from .functional import METHODS, ar_loss, check_objective
from .lovasz import check_lovasz_options, lovasz_softmax_loss
from .rmi import check_rmi_options, rmi_loss
from .sampling import normalize_scales

__all__ = ["LOSS_TERMS", "LossTerm", "check_term_options", "loss_term"]


@dataclass(frozen=True)
class LossTerm:
    """One structural loss term: its function, its options and the logits it takes.

    Attributes:
        name: ``"ar"``, ``"lovasz"``, ``"rmi"``, ``"aaf"`` or ``"dice"``.
        fn: ``fn(logits, target, *, ignore_index=..., **options)`` -> scalar float32 (reduction
            ``"mean"``); it also takes ``reduction``.
        defaults: every option the term accepts (besides ``ignore_index`` and ``reduction``)
            and its default.
        native_logits: ``True``: ``fn`` takes the model's native-resolution logits and a
            larger target (AR samples both at the same scene points; AAF reads the labels at
            the centres of the logit cells); ``False``: logits upsampled to the label size.
    """

    name: str
    fn: Callable[..., Tensor]
    defaults: Mapping[str, Any]
    native_logits: bool


def _check_ar(options: Mapping[str, Any]) -> None:
    normalize_scales(options["scales"])
    if options["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {options['method']!r}")
    check_kernel(options["kernel"])
    check_objective(options["objective"])


_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "ar": _check_ar,
    "lovasz": lambda o: check_lovasz_options(o["per_image"]),
    "rmi": lambda o: check_rmi_options(
        o["radius"], o["pool_size"], o["pool_stride"], o["bce_weight"], o["eps"]
    ),
    "aaf": lambda o: check_aaf_options(o["sizes"], o["margin"], o["class_weights"]),
    "dice": lambda o: check_dice_options(o["smooth"], o["per_image"]),
}


def _term(name: str, fn: Callable[..., Tensor], native: bool, **defaults: Any) -> LossTerm:
    return LossTerm(name, fn, MappingProxyType(defaults), native)


#: name -> :class:`LossTerm`, read-only.
LOSS_TERMS: Mapping[str, LossTerm] = MappingProxyType(
    {
        "ar": _term(
            "ar", ar_loss, True, scales=(12, 6), method="auto", kernel="sqrt", objective="mse"
        ),
        "lovasz": _term("lovasz", lovasz_softmax_loss, False, per_image=False),
        "rmi": _term(
            "rmi",
            rmi_loss,
            False,
            radius=3,
            pool_size=3,
            pool_stride=3,
            bce_weight=0.5,
            eps=5e-4,
        ),
        # at the network's output resolution, as the reference (see arseg.losses.aaf)
        "aaf": _term("aaf", aaf_loss, True, sizes=(1, 2, 3), margin=3.0, class_weights=None),
        "dice": _term("dice", dice_loss, False, smooth=1.0, per_image=False),
    }
)


def loss_term(name: str) -> LossTerm:
    """The :class:`LossTerm` called ``name``; ``ValueError`` naming the known terms otherwise."""
    try:
        return LOSS_TERMS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss term {name!r}; known terms: {', '.join(LOSS_TERMS)}"
        ) from None


def check_term_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The term's defaults merged with ``options``, after checking them.

    An option the term does not take (``ignore_index`` and ``reduction`` included: the caller
    passes those) is a ``ValueError`` naming the valid ones; values are checked by the term's
    own option checks (no tensor is built), raising the ``TypeError`` / ``ValueError`` the
    function itself would.

    Example:
        >>> check_term_options("dice", {"smoothing": 1.0})
        Traceback (most recent call last):
        ...
        ValueError: unknown option 'smoothing' for the loss term 'dice'; valid options: smooth, per_image
    """
    term = loss_term(name)
    if not isinstance(options, Mapping):
        raise TypeError(f"options of the loss term {name!r} must be a mapping, got {options!r}")
    unknown = [key for key in options if key not in term.defaults]
    if unknown:
        raise ValueError(
            f"unknown option {unknown[0]!r} for the loss term {name!r}; "
            f"valid options: {', '.join(term.defaults)}"
        )
    merged = {**term.defaults, **options}
    _VALIDATORS[name](merged)
    return merged
