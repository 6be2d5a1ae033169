"""Light-Weight RefineNet (Nekrasov, Shen & Reid, BMVC 2018).

Faithful to the authors' PyTorch code (DrSleep/light-weight-refinenet, ``models/resnet.py``
and ``utils/layer_factory.py``): same layers, same order, same bias-free 1x1 convs, the
chained residual pooling (CRP) blocks with 4 stages, Dropout(0.5) on layer3/layer4 features,
bilinear ``align_corners=True`` upsampling, and a 3x3 classifier with bias. Logits come out
at 1/4 of the input (``output_stride = 4``). :func:`arseg.models.convert.convert_lwrefinenet`
maps the reference state dicts onto this module.

Besides the reference ResNet-50/101/152 encoders, ResNet-18/34 encoders (not in the reference)
and a ``decoder_channels`` option make CPU-sized models. :class:`LWRefineNetMobileNetV2` is the
reference's MobileNet-v2 variant (``models/mobilenet.py``);
:func:`arseg.models.convert.convert_lwrefinenet_mbv2` maps its state dicts.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, check_num_classes
from .encoders import create_resnet_encoder
from .registry import register_model

__all__ = [
    "CRPBlock",
    "LWRefineNet",
    "LWRefineNetMobileNetV2",
    "check_positive_int",
    "conv1x1",
    "reference_first_block",
]


def check_positive_int(value: object, name: str) -> None:
    """A decoder width or stage count: an int >= 1 (TypeError / ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """The decoders' 1x1 convolution (no bias: a BatchNorm or a sum follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class CRPBlock(nn.Module):
    """Chained residual pooling: ``n_stages`` of (maxpool 5x5/1 -> 1x1 conv), each summed in.

    Shapes: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``; ``in_channels`` must equal
    ``out_channels`` for the running sum (as everywhere in the reference).
    """

    def __init__(self, in_channels: int, out_channels: int, n_stages: int = 4) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        self.convs = nn.ModuleList(
            conv1x1(in_channels if i == 0 else out_channels, out_channels) for i in range(n_stages)
        )

    def forward(self, x: Tensor) -> Tensor:
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = x + top
        return x


def stage_outputs(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    """The outputs of stages 1.. of a timm MobileNet-v2 / EfficientNet feature extractor
    (``conv_stem``, ``bn1``, ``blocks``): the six maps the ``mbv2`` decoder projects."""
    x = encoder.bn1(encoder.conv_stem(x))
    feats = []
    for i, stage in enumerate(encoder.blocks):
        x = stage(x)
        if i >= 1:
            feats.append(x)
    return feats


def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class LWRefineNet(SegmentationModel):
    """Light-Weight RefineNet on a ResNet encoder.

    Args:
        encoder: ``"resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152"``.
        num_classes: output classes ``C``.
        decoder_channels: width ``d`` of the decoder (reference: 256; the deepest CRP runs at
            ``2 d`` = 512). Small values (e.g. 32) make tiny models.
        pretrained: ImageNet weights for the encoder through timm (``<encoder>.tv_in1k``).
        dropout: dropout on layer3/layer4 features (reference 0.5).
        crp_stages: stages per CRP block (reference 4).

    Shapes:
        input ``(B, 3, H, W)`` float -> logits ``(B, C, ceil(H/4), ceil(W/4))`` float.
    """

    # DrSleep's train.py resizes the logits to the labels with align_corners=False (the decoder's
    # internal upsamplings are align_corners=True, as here)
    align_corners = False

    def __init__(
        self,
        encoder: str = "resnet50",
        num_classes: int = 40,
        *,
        decoder_channels: int = 256,
        pretrained: bool = False,
        dropout: float = 0.5,
        crp_stages: int = 4,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        check_positive_int(decoder_channels, "decoder_channels")
        check_positive_int(crp_stages, "crp_stages")
        self.output_stride = 4
        self.aux_weights: dict[str, float] = {}
        self.encoder = create_resnet_encoder(encoder, pretrained=pretrained)
        c1, c2, c3, c4 = self.encoder.feature_info.channels()
        d = decoder_channels
        self.dropout = nn.Dropout(p=dropout)
        # 1/32: reference p_ims1d2_outl1_dimred, mflow_conv_g1_pool, mflow_conv_g1_b3_...
        self.dimred4 = conv1x1(c4, 2 * d)
        self.crp4 = CRPBlock(2 * d, 2 * d, crp_stages)
        self.out4 = conv1x1(2 * d, d)
        # 1/16
        self.dimred3 = conv1x1(c3, d)
        self.adapt3 = conv1x1(d, d)
        self.crp3 = CRPBlock(d, d, crp_stages)
        self.out3 = conv1x1(d, d)
        # 1/8
        self.dimred2 = conv1x1(c2, d)
        self.adapt2 = conv1x1(d, d)
        self.crp2 = CRPBlock(d, d, crp_stages)
        self.out2 = conv1x1(d, d)
        # 1/4
        self.dimred1 = conv1x1(c1, d)
        self.adapt1 = conv1x1(d, d)
        self.crp1 = CRPBlock(d, d, crp_stages)
        self.classifier = nn.Conv2d(d, self.num_classes, kernel_size=3, padding=1, bias=True)

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        l1, l2, l3, l4 = self.encoder(x)
        l4 = self.dropout(l4)
        l3 = self.dropout(l3)

        x4 = F.relu(self.dimred4(l4))
        x4 = self.out4(self.crp4(x4))

        x3 = F.relu(self.adapt3(self.dimred3(l3)) + _upsample_to(x4, l3))
        x3 = self.out3(self.crp3(x3))

        x2 = F.relu(self.adapt2(self.dimred2(l2)) + _upsample_to(x3, l2))
        x2 = self.out2(self.crp2(x2))

        x1 = F.relu(self.adapt1(self.dimred1(l1)) + _upsample_to(x2, l1))
        x1 = self.crp1(x1)
        return self.classifier(x1), {}


def _lw(encoder: str, num_classes: int, pretrained: bool, **options) -> LWRefineNet:
    return LWRefineNet(encoder, num_classes, pretrained=pretrained, **options)


@register_model
def lwrefinenet18(num_classes: int, pretrained: bool = False, **options) -> LWRefineNet:
    """LW-RefineNet on ResNet-18 (not in the reference; for CPU-sized experiments)."""
    return _lw("resnet18", num_classes, pretrained, **options)


@register_model
def lwrefinenet34(num_classes: int, pretrained: bool = False, **options) -> LWRefineNet:
    """LW-RefineNet on ResNet-34 (not in the reference)."""
    return _lw("resnet34", num_classes, pretrained, **options)


@register_model
def lwrefinenet50(num_classes: int, pretrained: bool = False, **options) -> LWRefineNet:
    """LW-RefineNet-50 (reference ``rf_lw50``)."""
    return _lw("resnet50", num_classes, pretrained, **options)


@register_model
def lwrefinenet101(num_classes: int, pretrained: bool = False, **options) -> LWRefineNet:
    """LW-RefineNet-101 (reference ``rf_lw101``)."""
    return _lw("resnet101", num_classes, pretrained, **options)


@register_model
def lwrefinenet152(num_classes: int, pretrained: bool = False, **options) -> LWRefineNet:
    """LW-RefineNet-152 (reference ``rf_lw152``)."""
    return _lw("resnet152", num_classes, pretrained, **options)


def reference_first_block(block: nn.Module, *, identity: bool) -> nn.Module:
    """timm's first MobileNet-v2 block rebuilt as the reference's (DrSleep ``mbv2``).

    timm builds the expansion-1 block as a ``DepthwiseSeparableConv`` (dw 3x3 + BN + ReLU6, 1x1
    32->16 + BN); the reference's ``InvertedResidualBlock(32, 16, expansion_factor=1)`` has a
    1x1 32->32 conv + BN + ReLU6 before those (1,088 parameters). Returns a timm
    ``InvertedResidual`` (``conv_pw``/``bn1`` new, ``conv_dw``/``bn2`` and ``conv_pwl``/``bn3``
    holding ``block``'s tensors).

    Args:
        block: timm's ``blocks[0][0]`` (``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``).
        identity: start the new 1x1 conv as the identity, so a pretrained encoder computes what
            it did (its input, the stem's ReLU6 output, passes BN at its initial statistics up
            to BN's eps, and ReLU6, unchanged); otherwise timm's fan-out normal init.
    """
    from timm.models._efficientnet_blocks import InvertedResidual

    in_ch, out_ch = block.conv_dw.in_channels, block.conv_pw.out_channels
    device = block.conv_dw.weight.device
    new = InvertedResidual(
        in_ch, out_ch, dw_kernel_size=3, stride=1, exp_ratio=1.0, act_layer=nn.ReLU6
    ).to(device)
    for ours, theirs in (("conv_dw", "conv_dw"), ("bn2", "bn1"), ("conv_pwl", "conv_pw")):
        getattr(new, ours).load_state_dict(getattr(block, theirs).state_dict())
    new.bn3.load_state_dict(block.bn2.state_dict())
    with torch.no_grad():
        weight = new.conv_pw.weight
        if identity:
            weight.copy_(torch.eye(in_ch, device=device).view(in_ch, in_ch, 1, 1))
        else:
            weight.normal_(0.0, math.sqrt(2.0 / in_ch))  # timm: normal(0, sqrt(2 / fan_out))
    return new


class LWRefineNetMobileNetV2(SegmentationModel):
    """Light-Weight RefineNet on MobileNet-v2 (reference ``models/mobilenet.py``, ``mbv2``).

    Six encoder outputs (24, 32, 64, 96, 160, 320 channels at strides 4, 8, 16, 16, 32, 32) are
    projected to ``decoder_channels`` by bias-free 1x1 convs; pairs at the same stride are summed,
    and four CRP stages with ReLU6 fuse them from 1/32 down to 1/4, as in the reference. The
    encoder is timm's ``mobilenetv2_100`` with its first block rebuilt as the reference's
    (:func:`reference_first_block`: the 1x1 32->32 expansion conv + BN + ReLU6 that timm omits),
    so the parameter count and the state-dict layout equal the reference's
    (:func:`arseg.models.convert.convert_lwrefinenet_mbv2`). With ``pretrained=True`` that conv
    starts as the identity (timm's ImageNet weights have no such layer).

    Shapes: input ``(B, 3, H, W)`` -> logits ``(B, C, ceil(H/4), ceil(W/4))``.
    """

    align_corners = False  # DrSleep's train.py, as for the ResNet LW-RefineNet

    def __init__(
        self,
        num_classes: int = 21,
        *,
        decoder_channels: int = 256,
        pretrained: bool = False,
        crp_stages: int = 4,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        check_positive_int(decoder_channels, "decoder_channels")
        check_positive_int(crp_stages, "crp_stages")
        self.output_stride = 4
        self.aux_weights: dict[str, float] = {}
        self.encoder = timm.create_model(
            "mobilenetv2_100.ra_in1k" if pretrained else "mobilenetv2_100",
            pretrained=pretrained,
            features_only=True,
            out_indices=(1, 2, 3, 4),
        )
        first = self.encoder.blocks[0]
        first[0] = reference_first_block(first[0], identity=pretrained)
        channels = [stage[-1].conv_pwl.out_channels for stage in self.encoder.blocks[1:]]
        d = decoder_channels
        # reference conv3..conv8: one projection per encoder output (24 ... 320 channels)
        self.projs = nn.ModuleList(conv1x1(c, d) for c in channels)
        self.crps = nn.ModuleList(CRPBlock(d, d, crp_stages) for _ in range(4))
        self.adapts = nn.ModuleList(conv1x1(d, d) for _ in range(3))  # conv_adapt4..2
        self.classifier = nn.Conv2d(d, self.num_classes, kernel_size=3, padding=1, bias=True)

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        feats = stage_outputs(self.encoder, x)
        l3, l4, l5, l6, l7, l8 = (proj(f) for proj, f in zip(self.projs, feats))
        relu6 = F.relu6
        y = self.crps[0](relu6(l8 + l7))  # 1/32
        y = _upsample_to(self.adapts[0](y), l6)
        y = self.crps[1](relu6(l5 + l6 + y))  # 1/16
        y = _upsample_to(self.adapts[1](y), l4)
        y = self.crps[2](relu6(l4 + y))  # 1/8
        y = _upsample_to(self.adapts[2](y), l3)
        y = self.crps[3](relu6(l3 + y))  # 1/4
        return self.classifier(y), {}


@register_model
def lwrefinenet_mbv2(
    num_classes: int, pretrained: bool = False, **options
) -> LWRefineNetMobileNetV2:
    """LW-RefineNet on MobileNet-v2 (reference ``mbv2``)."""
    return LWRefineNetMobileNetV2(num_classes, pretrained=pretrained, **options)
