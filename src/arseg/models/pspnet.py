"""PSPNet (Zhao et al., CVPR 2017), faithful to hszhao/semseg ``model/pspnet.py``.

Dilated deep-stem ResNet (timm ``resnet50s``/``resnet101s``: stem 64-64-128) with output
stride 8 and the reference's dilation layout (every 3x3 conv of layer3 dilated 2, of layer4
dilated 4); the pyramid pooling module with bins (1, 2, 3, 6), each adaptive average pool ->
1x1 conv to 2048/4 = 512 -> BN -> ReLU, upsampled (bilinear, ``align_corners=True``) and
concatenated with its input; the head 3x3 conv 4096->512, BN, ReLU, Dropout2d(0.1), 1x1 -> C;
the auxiliary head on layer3 (3x3 1024->256, BN, ReLU, Dropout2d(0.1), 1x1 -> C) with loss
weight 0.4.

Unlike the reference, logits are returned at the native 1/8 resolution; the reference
upsamples by 8 with ``align_corners=True`` and so wants input sides ``8k + 1`` (473, 713):
with such inputs the native logits are ``(k + 1) x (k' + 1)`` and align exactly with the
input's corner pixels. Any size works here. ``PSPNet.align_corners = True`` declares semseg's
resize convention, so the engine's CE, its validation and :func:`arseg.engine.predict_logits`
upsample these logits (main and aux) as semseg does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, check_num_classes
from .encoders import create_resnet_encoder
from .registry import register_model

__all__ = ["PSPNet", "PyramidPoolingModule"]


class PyramidPoolingModule(nn.Module):
    """Pyramid pooling: ``(B, C, h, w) -> (B, C + len(bins) * reduction, h, w)``.

    Each bin ``b``: adaptive average pool to ``b x b`` -> 1x1 conv (no bias) -> BN -> ReLU ->
    bilinear upsampling (``align_corners=True``) back to ``h x w``.
    """

    def __init__(self, in_channels: int, reduction: int, bins: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        out = [x]
        out.extend(
            F.interpolate(f(x), size=size, mode="bilinear", align_corners=True)
            for f in self.features
        )
        return torch.cat(out, dim=1)


def _head(in_channels: int, mid_channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_channels, num_classes, kernel_size=1),
    )


class PSPNet(SegmentationModel):
    """PSPNet on a dilated deep-stem ResNet.

    Args:
        encoder: ``"resnet50s" | "resnet101s" | "resnet152s"`` (deep stem, as the reference).
        num_classes: output classes ``C``.
        bins: pyramid bins (reference (1, 2, 3, 6)).
        dropout: Dropout2d before both classifiers (reference 0.1).
        aux: build the layer3 auxiliary head (reference: yes, weight ``aux_weight``).
        aux_weight: its loss weight (reference 0.4), exposed as ``aux_weights["aux"]``.
        pretrained: ImageNet weights for the encoder through timm.

    Shapes:
        input ``(B, 3, H, W)`` -> logits ``(B, C, ceil(H/8), ceil(W/8))``; in training mode
        also ``aux["aux"]`` of the same shape.
    """

    align_corners = True  # semseg: F.interpolate(..., align_corners=True) of main and aux logits

    def __init__(
        self,
        encoder: str = "resnet50s",
        num_classes: int = 21,
        *,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux: bool = True,
        aux_weight: float = 0.4,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if (
            not isinstance(bins, Sequence)
            or not bins
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins)
        ):
            raise ValueError(f"bins must be a non-empty sequence of positive ints, got {bins!r}")
        self.output_stride = 8
        self.encoder = create_resnet_encoder(
            encoder, output_stride=8, pretrained=pretrained, reference_dilation=True
        )
        channels = self.encoder.feature_info.channels()
        feat = channels[-1]
        if feat % len(bins):
            raise ValueError(f"{feat} encoder channels are not divisible by {len(bins)} bins")
        self.ppm = PyramidPoolingModule(feat, feat // len(bins), bins)
        self.head = _head(2 * feat, 512, self.num_classes, dropout)
        self.aux_head = _head(channels[-2], 256, self.num_classes, dropout) if aux else None
        self.aux_weights: dict[str, float] = {"aux": float(aux_weight)} if aux else {}

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        _, _, l3, l4 = self.encoder(x)
        logits = self.head(self.ppm(l4))
        aux = {}
        if self.training and self.aux_head is not None:
            aux["aux"] = self.aux_head(l3)
        return logits, aux


@register_model
def pspnet50(num_classes: int, pretrained: bool = False, **options) -> PSPNet:
    """PSPNet-50 (hszhao/semseg ``PSPNet(layers=50)``)."""
    return PSPNet("resnet50s", num_classes, pretrained=pretrained, **options)


@register_model
def pspnet101(num_classes: int, pretrained: bool = False, **options) -> PSPNet:
    """PSPNet-101 (hszhao/semseg ``PSPNet(layers=101)``), the paper's NYUv2 network."""
    return PSPNet("resnet101s", num_classes, pretrained=pretrained, **options)
