"""ICNet (Zhao, Qi, Shen, Shi & Jia, ECCV 2018), faithful to the official Caffe definition
hszhao/ICNet ``evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt``.

The released network is a *half-width* PSPNet-50 (the paper compresses PSPNet-50 by pruning
half of the kernels): deep stem 32-32-64, bottleneck widths 32/64/128/256 with 128/256/512/
1024 output channels, layer3/layer4 dilated 2/4 (output stride 8 of its input). Branches
(prototxt names in brackets):

* 1/2 input (``data_sub2``): stem ... ``conv3_1`` (the first, strided block of layer2; Caffe
  ResNet puts its stride on the 1x1 reduce conv), giving features at 1/16;
* 1/4 branch: ``conv3_1`` bilinearly shrunk by 2 (``conv3_1_sub4``; the prototxt downsamples
  the shared features rather than re-running the stem on a 1/4 image), then ``conv3_2`` ...
  ``conv5_3`` (1/32), pyramid pooling by *summation* (bins 1, 2, 3, 6, no convs), ``conv5_4_k1``
  (1x1 1024->256, BN, ReLU);
* full input (``data_sub1``): three 3x3 stride-2 convs 3->32->32->64 (1/8);
* cascade feature fusion (CFF): upsample the coarse features x2, 3x3 conv dilation 2 + BN;
  1x1 conv + BN on the finer features; sum; ReLU (``sub24_sum`` at 1/16, ``sub12_sum`` at 1/8);
* ``sub12_sum`` upsampled x2 -> ``conv6_cls`` (1x1 with bias): logits at 1/4
  (``output_stride = 4``; the prototxt's final x4 upsampling is for testing only).

Cascade label guidance (training only): 1x1 classifiers on the upsampled coarse input of each
CFF, ``aux["sub4"]`` at 1/16 and ``aux["sub24"]`` at 1/8, loss weights 0.4 and 0.4 (the main
1/4 output has weight 1; the weights are not in the released files: 0.4/0.4 as in the
mmsegmentation and GluonCV ports, see docs/models.md). All resampling is bilinear with ``align_corners=True`` (Caffe's
``Interp``); sizes follow ``ceil(size / factor)``, which equals Caffe's for ``4k + 1`` inputs
such as the reference 1025 x 2049 (``ICNet.align_corners = True``: the engine resizes the logits
to the labels the same way).

Pyramid pooling is adaptive (any input size). The prototxt instead hard-codes its pooling
windows for the 33 x 65 ``conv5_3`` of a 1025 x 2049 input; bins 1 and 2 give the same windows
as adaptive pooling there, bins 3 and 6 do not (e.g. bin 3: kernel 13 x 25, stride 10 x 20,
against adaptive windows of 11 x 22-23). ``prototxt_pooling=True`` uses the prototxt's
windows (:data:`PROTOTXT_POOL_WINDOWS`) at that feature size and adaptive pooling elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SegmentationModel, check_num_classes
from .encoders import set_reference_dilation
from .registry import register_model

__all__ = ["PROTOTXT_POOL_WINDOWS", "CascadeFeatureFusion", "ICNet", "SumPyramidPooling"]

# (kernel_h, kernel_w), (stride_h, stride_w) of one average pooling
Window = tuple[tuple[int, int], tuple[int, int]]

# hszhao/ICNet evaluation/prototxt/icnet_cityscapes(_bnnomerge).prototxt, layers conv5_3_pool1/2/3/6
# (no padding), for the 33 x 65 conv5_3 of a 1025 x 2049 input: feature size -> bin -> window.
# Each tiles its axis exactly ((size - kernel) % stride == 0), so Caffe's ceil-mode output size
# equals the floor-mode size of F.avg_pool2d: b x b.
PROTOTXT_POOL_WINDOWS: dict[tuple[int, int], dict[int, Window]] = {
    (33, 65): {
        1: ((33, 65), (33, 65)),
        2: ((17, 33), (16, 32)),
        3: ((13, 25), (10, 20)),
        6: ((8, 15), (5, 10)),
    },
}


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _ceil_div(size: tuple[int, ...], factor: int) -> tuple[int, int]:
    return (-(-size[-2] // factor), -(-size[-1] // factor))


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1, relu: bool):
    layers: list[nn.Module] = [
        nn.Conv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _check_windows(windows: Mapping[tuple[int, int], Mapping[int, Window]]) -> None:
    for (h, w), table in windows.items():
        for b, ((kh, kw), (sh, sw)) in table.items():
            for side, k, st in ((h, kh, sh), (w, kw, sw)):
                if not (1 <= k <= side and st >= 1 and (side - k) % st == 0):
                    raise ValueError(
                        f"pooling window {(kh, kw)}/{(sh, sw)} does not tile a {h}x{w} map"
                    )
                if (side - k) // st + 1 != b:
                    raise ValueError(
                        f"pooling window {(kh, kw)}/{(sh, sw)} on {h}x{w} gives no {b}x{b} bins"
                    )


class SumPyramidPooling(nn.Module):
    """ICNet's parameter-free pyramid pooling: ``x + sum_b up(avgpool_b(x))``, shape-preserving.

    Args:
        bins: output sizes ``b`` of the average poolings.
        windows: optional fixed windows, feature size ``(h, w)`` -> bin -> ``((kh, kw), (sh,
            sw))`` (e.g. :data:`PROTOTXT_POOL_WINDOWS`); each must give ``b x b`` outputs.
            Bins without a window at the input's size use adaptive pooling.

    Shapes: ``(B, C, h, w) -> (B, C, h, w)``.
    """

    def __init__(
        self,
        bins: tuple[int, ...] = (1, 2, 3, 6),
        windows: Mapping[tuple[int, int], Mapping[int, Window]] | None = None,
    ) -> None:
        super().__init__()
        self.bins = tuple(bins)
        windows = {} if windows is None else windows
        _check_windows(windows)
        self.windows = {tuple(size): dict(table) for size, table in windows.items()}

    def pool_windows(self, size: tuple[int, int]) -> list[Window | None]:
        """The fixed window of each bin at feature size ``(h, w)``; ``None`` means adaptive."""
        table = self.windows.get((int(size[0]), int(size[1])), {})
        return [table.get(b) for b in self.bins]

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        out = x
        for b, window in zip(self.bins, self.pool_windows(size)):
            if window is None:
                pooled = F.adaptive_avg_pool2d(x, b)
            else:
                pooled = F.avg_pool2d(x, kernel_size=window[0], stride=window[1])
            out = out + _resize(pooled, size)
        return out

    def extra_repr(self) -> str:
        return f"bins={self.bins}, fixed windows at {sorted(self.windows) or 'no size'}"


class CascadeFeatureFusion(nn.Module):
    """CFF unit: ``relu(BN(dilated_conv3x3(up(low))) + BN(conv1x1(high)))``.

    Args:
        low_channels: channels of the coarse input (upsampled to the fine input's size first).
        high_channels: channels of the fine input.
        out_channels: output channels (128 in ICNet).

    Shapes: ``low (B, C_low, h, w)``, ``high (B, C_high, H', W')`` -> ``(B, out, H', W')``;
    also returns the upsampled ``low`` that the label-guidance classifier reads.
    """

    def __init__(self, low_channels: int, high_channels: int, out_channels: int) -> None:
        super().__init__()
        self.low = _conv_bn(low_channels, out_channels, 3, dilation=2, relu=False)
        self.high = _conv_bn(high_channels, out_channels, 1, relu=False)

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        low_up = _resize(low, high.shape[-2:])
        return F.relu(self.low(low_up) + self.high(high)), low_up


class ICNet(SegmentationModel):
    """ICNet on a (half-width by default) deep-stem ResNet-50.

    Args:
        num_classes: output classes ``C`` (Cityscapes: 19).
        width: 0.5 is the released ICNet (its prototxt); 1.0 is the uncompressed PSPNet-50
            based ICNet, whose encoder is timm ``resnet50s`` and has ImageNet weights.
        pretrained: ImageNet weights for the encoder through timm (``resnet50s.gluon_in1k``);
            only for ``width=1.0`` — timm has no weights for the half-width encoder.
        aux_weights: label-guidance loss weights ``{"sub4": 0.4, "sub24": 0.4}``.
        prototxt_pooling: pyramid pooling with the prototxt's fixed windows where ``conv5_3``
            is 33 x 65 (the reference input 1025 x 2049), adaptive pooling at other sizes
            (default ``False``: adaptive everywhere). No parameters are involved.

    Shapes:
        input ``(B, 3, H, W)`` -> logits ``(B, C, ceil(H/4), ceil(W/4))``; in training mode
        ``aux["sub4"]`` ``(B, C, ~H/16, ~W/16)`` and ``aux["sub24"]`` ``(B, C, ~H/8, ~W/8)``.
    """

    align_corners = True  # Caffe's Interp layer (conv6_interp) is corner-aligned

    def __init__(
        self,
        num_classes: int = 19,
        *,
        width: float = 0.5,
        pretrained: bool = False,
        aux_weights: dict[str, float] | None = None,
        prototxt_pooling: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if width not in (0.5, 1.0):
            raise ValueError(f"width must be 0.5 (released ICNet) or 1.0, got {width!r}")
        if pretrained and width != 1.0:
            raise ValueError(
                "timm has no ImageNet weights for ICNet's half-width ResNet-50 (the reference "
                "prunes a trained PSPNet-50); use width=1.0 with pretrained=True, or "
                "pretrained=False"
            )
        self.output_stride = 4
        weights = {"sub4": 0.4, "sub24": 0.4} if aux_weights is None else dict(aux_weights)
        if set(weights) != {"sub4", "sub24"}:
            raise ValueError(
                f"aux_weights must have keys 'sub4' and 'sub24', got {sorted(weights)}"
            )
        self.aux_weights = {k: float(v) for k, v in weights.items()}

        w = int(64 * width)
        self.encoder = timm.create_model(
            "resnet50s.gluon_in1k" if pretrained else "resnet50s",
            pretrained=pretrained,
            stem_width=w,
            channels=(w, 2 * w, 4 * w, 8 * w),
            output_stride=8,
            num_classes=0,
            global_pool="",
            zero_init_last=False,
        )
        set_reference_dilation(self.encoder)
        # Caffe ResNet: conv3_1 strides in its 1x1 reduce conv, not in the 3x3 (same weights).
        block = self.encoder.layer2[0]
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)

        c2, c4 = 8 * w, 32 * w  # conv3_x (256) and conv5_x (1024) channels at width 0.5
        if not isinstance(prototxt_pooling, bool):
            raise TypeError(
                f"prototxt_pooling must be a bool, got {type(prototxt_pooling).__name__}"
            )
        self.ppm = SumPyramidPooling(
            (1, 2, 3, 6), PROTOTXT_POOL_WINDOWS if prototxt_pooling else None
        )
        self.conv5_4 = _conv_bn(c4, 256, 1, relu=True)
        self.sub1 = nn.Sequential(
            _conv_bn(3, 32, 3, stride=2, relu=True),
            _conv_bn(32, 32, 3, stride=2, relu=True),
            _conv_bn(32, 64, 3, stride=2, relu=True),
        )
        self.cff24 = CascadeFeatureFusion(256, c2, 128)
        self.cff12 = CascadeFeatureFusion(128, 64, 128)
        self.classifier = nn.Conv2d(128, self.num_classes, kernel_size=1)
        self.aux_sub4 = nn.Conv2d(256, self.num_classes, kernel_size=1)
        self.aux_sub24 = nn.Conv2d(128, self.num_classes, kernel_size=1)

    def forward_features(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        e = self.encoder
        # 1/2 input -> conv3_1 at 1/16
        f = _resize(x, _ceil_div(x.shape, 2))
        f = e.maxpool(e.act1(e.bn1(e.conv1(f))))
        f = e.layer1(f)
        f2 = e.layer2[0](f)
        # 1/4 branch: shrink conv3_1 by 2 -> 1/32
        f4 = _resize(f2, _ceil_div(f2.shape, 2))
        for blk in e.layer2[1:]:
            f4 = blk(f4)
        f4 = e.layer4(e.layer3(f4))
        f4 = self.conv5_4(self.ppm(f4))
        # full-resolution light branch -> 1/8
        f1 = self.sub1(x)
        sub24, f4_up = self.cff24(f4, f2)
        sub12, sub24_up = self.cff12(sub24, f1)
        logits = self.classifier(_resize(sub12, _ceil_div(x.shape, 4)))
        aux = {}
        if self.training:
            aux = {"sub4": self.aux_sub4(f4_up), "sub24": self.aux_sub24(sub24_up)}
        return logits, aux


@register_model
def icnet50(num_classes: int, pretrained: bool = False, **options) -> ICNet:
    """ICNet on (half-width) ResNet-50, the released Cityscapes network of hszhao/ICNet."""
    return ICNet(num_classes, pretrained=pretrained, **options)
