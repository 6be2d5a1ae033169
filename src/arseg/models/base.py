"""Shared pieces of every segmentation model: the training-mode output and the base class."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "SegmentationModel",
    "SegmentationOutput",
    "check_num_classes",
    "convert_sync_batchnorm",
]


class SegmentationOutput(NamedTuple):
    """What a model returns in training mode.

    Attributes:
        logits: main logits, float ``(B, C, h, w)`` at the model's native resolution
            (``h = ceil(H / model.output_stride)`` for the models of this package).
        aux: auxiliary logits by name (each ``(B, C, h_k, w_k)``), the keys of
            ``model.aux_weights``; an empty dict for models without auxiliary outputs.
    """

    logits: Tensor
    aux: dict[str, Tensor]


def check_num_classes(num_classes: object) -> int:
    """Validate a class count at a public boundary and return it as ``int``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


class SegmentationModel(nn.Module):
    """Base class: validates the input and switches the output type on ``self.training``.

    Subclasses set ``encoder``, ``num_classes``, ``output_stride`` and ``aux_weights`` and
    implement :meth:`forward_features`, returning ``(logits, aux)``. ``aux`` may be computed
    only when ``self.training`` is true (and be empty otherwise).

    ``align_corners`` declares how the model's reference resizes its logits (main and aux) to
    the label/image size: ``False`` (the default, half-pixel centres, as DrSleep's training
    code and cv2) or ``True`` (corner-aligned, as semseg's PSPNet and Caffe's ``Interp``).
    The engine's CE resize, its validation/test upsampling and
    :func:`arseg.engine.inference.predict_logits` follow it
    (:func:`arseg.engine.inference.upsample_logits`).

    Contract:
        * eval mode: ``model(x)`` -> logits ``Tensor (B, C, h, w)`` (native resolution, not
          upsampled to the input);
        * train mode: ``model(x)`` -> :class:`SegmentationOutput` ``(logits, aux)``.
    """

    encoder: nn.Module
    num_classes: int
    output_stride: int
    aux_weights: dict[str, float]
    align_corners: bool = False

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor image batch, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point image batch, got dtype {x.dtype}")
        logits, aux = self.forward_features(x)
        if self.training:
            return SegmentationOutput(logits, aux)
        return logits

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, output_stride={self.output_stride}, "
            f"align_corners={self.align_corners}"
        )


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm as a SyncBatchNorm that computes what the BatchNorm did.

    torch's ``nn.SyncBatchNorm.convert_sync_batchnorm`` (what Lightning's
    ``sync_batchnorm=True`` runs) turns timm's ``BatchNormAct2d`` (BatchNorm and activation in
    one module: the MobileNet-v2 and EfficientNet-Lite encoders) into a plain SyncBatchNorm and
    drops the activation (ReLU6): the converted LW-RefineNet-EfficientNet-Lite0 moved its eval
    logits by about 6. timm's converter keeps it (``SyncBatchNormAct``); parameters, buffers and
    state-dict keys are shared and unchanged.

    Example:
        >>> import torch
        >>> from arseg.models import build_model
        >>> model = build_model("lwrefinenet_mbv2", num_classes=3, decoder_channels=8).eval()
        >>> synced = convert_sync_batchnorm(model)
        >>> any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
        True
    """
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)
