"""mmsegmentation 1.x: importing this module registers the AR loss in ``mmseg.registry.MODELS``.

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
"""

from __future__ import annotations

from typing import Any

try:
    from mmseg.registry import MODELS
except ImportError as err:  # mmseg itself, or one of the packages it imports (mmcv, mmengine)
    raise ImportError(
        "arseg.integrations.mmseg needs mmsegmentation 1.x: pip install mmsegmentation mmengine "
        f"mmcv (importing mmseg.registry failed: {err})"
    ) from err

from arseg.losses import ARLoss

__all__ = ["MODELS", "REGISTERED", "register"]

#: The names this module registers, and the classes they build.
REGISTERED: dict[str, type] = {"ARLoss": ARLoss}


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
