"""ResNet encoders from timm (``features_only``), with dilation for a chosen output stride.

Two stems are offered, matching the references:

* ``resnet18/34/50/101/152``: the torchvision ResNet (7x7 stem, maxpool), as in
  DrSleep/light-weight-refinenet. ``pretrained=True`` loads timm's ``<arch>.tv_in1k`` weights
  (the torchvision ImageNet weights the reference starts from).
* ``resnet50s/101s/152s``: the deep stem of hszhao/semseg (three 3x3 convs 64-64-128, then
  maxpool; ``inplanes = 128``). timm's ``resnet*s`` (``stem_type="deep"``, ``stem_width=64``) is
  exactly this layout, unlike ``resnet50d`` (32-32-64 stem, average-pool shortcuts).
  ``pretrained=True`` loads ``<arch>.gluon_in1k`` (the only ImageNet weights for this stem
  in timm; hszhao/semseg's own ``resnet*_v2.pth`` are not distributed through timm).
"""

from __future__ import annotations

import timm
from torch import nn

__all__ = ["ENCODER_PRETRAINED_TAGS", "create_resnet_encoder", "set_reference_dilation"]

ENCODER_PRETRAINED_TAGS: dict[str, str] = {
    "resnet18": "tv_in1k",
    "resnet34": "tv_in1k",
    "resnet50": "tv_in1k",
    "resnet101": "tv_in1k",
    "resnet152": "tv_in1k",
    "resnet50s": "gluon_in1k",
    "resnet101s": "gluon_in1k",
    "resnet152s": "gluon_in1k",
}


def set_reference_dilation(encoder: nn.Module) -> None:
    """Give the first block of each dilated stage the stage's own dilation.

    timm (like torchvision's ``replace_stride_with_dilation``) keeps the *previous* dilation in
    the first 3x3 conv of a dilated stage; hszhao/semseg sets every ``conv2`` of layer3 to
    dilation 2 and of layer4 to 4. Parameter counts are unchanged; the receptive field and so
    the outputs match the reference. Only bottleneck stages with at least two blocks are
    touched (the dilation is read from the second block).
    """
    for stage_name in ("layer3", "layer4"):
        stage = getattr(encoder, stage_name, None)
        if stage is None or len(stage) < 2 or not hasattr(stage[0], "conv3"):
            continue
        first, second = stage[0].conv2, stage[1].conv2
        if first.dilation != second.dilation:
            first.dilation = second.dilation
            first.padding = second.padding


def create_resnet_encoder(
    arch: str,
    *,
    output_stride: int = 32,
    pretrained: bool = False,
    reference_dilation: bool = False,
) -> nn.Module:
    """A timm ResNet returning the features of layer1..layer4 (a list of 4 tensors).

    Args:
        arch: a key of :data:`ENCODER_PRETRAINED_TAGS`.
        output_stride: 8, 16 or 32; stages past it are dilated instead of strided.
        pretrained: load ImageNet weights through timm (downloads once).
        reference_dilation: see :func:`set_reference_dilation`.

    Returns:
        timm ``FeatureListNet``; ``encoder.feature_info.channels()`` gives the 4 channel counts
        (64/128/256/512 for ResNet-18/34, 256/512/1024/2048 for the bottleneck ResNets),
        ``encoder.feature_info.reduction()`` their strides.
    """
    if arch not in ENCODER_PRETRAINED_TAGS:
        raise ValueError(f"unknown encoder {arch!r}; available: {sorted(ENCODER_PRETRAINED_TAGS)}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    name = f"{arch}.{ENCODER_PRETRAINED_TAGS[arch]}" if pretrained else arch
    encoder = timm.create_model(
        name,
        pretrained=pretrained,
        features_only=True,
        out_indices=(1, 2, 3, 4),
        output_stride=output_stride,
        zero_init_last=False,  # the references start every BN at gamma = 1
    )
    if reference_dilation:
        set_reference_dilation(encoder)
    return encoder
