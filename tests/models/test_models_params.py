"""Faithfulness: parameter counts and output strides against the reference figures.

Reference figures (docs/models.md): DrSleep/light-weight-refinenet ``rf_lw*`` and
hszhao/semseg ``PSPNet`` instantiated with random weights (/work/shared/notes/model-anchors.md);
ICNet counted from hszhao/ICNet ``evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt``.
Models are built on the meta device: no memory, no time.
"""

from __future__ import annotations

import pytest
import torch

from arseg.models import build_model

# (model, classes, options, reference parameter count)
REFERENCE_COUNTS = [
    ("lwrefinenet50", 40, {}, 27_401_320),
    ("lwrefinenet101", 40, {}, 46_393_448),
    ("lwrefinenet152", 40, {}, 62_037_096),
    ("pspnet50", 40, {}, 49_096_208),
    ("pspnet101", 40, {}, 68_088_336),
    ("pspnet101", 19, {}, 68_072_166),
    ("pspnet50", 40, {"aux": False}, 46_726_120),
    ("pspnet101", 40, {"aux": False}, 65_718_248),
    ("pspnet101", 19, {"aux": False}, 65_707_475),
    # DrSleep ``mbv2(21)``, counted from models/mobilenet.py (its README: 3.3M); the synthetic
    # reference-layout state dict of test_models_convert.py has this many learnable values too
    ("lwrefinenet_mbv2", 21, {}, 3_284_565),
]

ICNET_PROTOTXT_COUNT = 6_699_987  # 19 classes, inference network (no label-guidance heads)


def _count(model: torch.nn.Module, skip_prefix: str | None = None) -> int:
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if skip_prefix is None or not n.startswith(skip_prefix)
    )


@pytest.mark.parametrize(("name", "classes", "options", "expected"), REFERENCE_COUNTS)
def test_parameter_count_matches_reference(name, classes, options, expected):
    with torch.device("meta"):
        model = build_model(name, classes, **options)
    ours = _count(model)
    assert abs(ours - expected) <= 0.01 * expected, (ours, expected)
    assert ours == expected  # our layouts are exact copies; any drift is a bug


def test_lwrefinenet_mbv2_has_the_reference_first_block():
    with torch.device("meta"):
        model = build_model("lwrefinenet_mbv2", 21)
    first = model.encoder.blocks[0][0]
    # reference InvertedResidualBlock(32, 16, expansion_factor=1): 1x1 32->32 + BN + ReLU6 first
    assert (first.conv_pw.in_channels, first.conv_pw.out_channels) == (32, 32)
    assert first.conv_pw.kernel_size == (1, 1)
    assert isinstance(first.bn1.act, torch.nn.ReLU6)
    assert _count(first) - _count(first.conv_pw) - _count(first.bn1) == 32 * 9 + 2 * 32 + 512 + 32
    assert _count(first.conv_pw) + _count(first.bn1) == 1_088


def test_icnet_parameter_count_matches_prototxt():
    with torch.device("meta"):
        model = build_model("icnet50", 19)
    assert _count(model, skip_prefix="aux_") == ICNET_PROTOTXT_COUNT
    # the two label-guidance classifiers (1x1 convs 256->19 and 128->19) add 0.11 %
    assert _count(model) - ICNET_PROTOTXT_COUNT == (256 + 1) * 19 + (128 + 1) * 19
    assert _count(model) <= 1.01 * ICNET_PROTOTXT_COUNT


def test_decoder_channels_shrink_lwrefinenet():
    with torch.device("meta"):
        full = build_model("lwrefinenet18", 11)
        tiny = build_model("lwrefinenet18", 11, decoder_channels=32)
    assert _count(tiny) < _count(full)
    # the encoder is untouched, only the decoder shrinks
    assert _count(tiny.encoder) == _count(full.encoder) == 11_176_512


@pytest.mark.parametrize(
    ("name", "stride", "aux_weights"),
    [
        ("lwrefinenet50", 4, {}),
        ("pspnet101", 8, {"aux": 0.4}),
        ("icnet50", 4, {"sub4": 0.4, "sub24": 0.4}),
    ],
)
def test_contract_attributes(name, stride, aux_weights):
    with torch.device("meta"):
        model = build_model(name, 7)
    assert model.output_stride == stride
    assert model.aux_weights == aux_weights
    assert model.num_classes == 7
    assert isinstance(model.encoder, torch.nn.Module)
    encoder_params = {id(p) for p in model.encoder.parameters()}
    assert 0 < len(encoder_params) < len(list(model.parameters()))


def test_pspnet_uses_reference_dilation_and_deep_stem():
    with torch.device("meta"):
        model = build_model("pspnet50", 21)
    enc = model.encoder
    assert [enc.conv1[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]
    assert {b.conv2.dilation for b in enc.layer3} == {(2, 2)}
    assert {b.conv2.dilation for b in enc.layer4} == {(4, 4)}
    assert {b.conv2.stride for b in [*enc.layer3, *enc.layer4]} == {(1, 1)}


def test_icnet_follows_prototxt_strides_and_dilations():
    with torch.device("meta"):
        model = build_model("icnet50", 19)
    enc = model.encoder
    assert [enc.conv1[i].out_channels for i in (0, 3, 6)] == [32, 32, 64]
    # conv3_1: stride on the 1x1 reduce conv (Caffe ResNet)
    assert enc.layer2[0].conv1.stride == (2, 2) and enc.layer2[0].conv2.stride == (1, 1)
    assert {b.conv2.dilation for b in enc.layer3} == {(2, 2)}
    assert {b.conv2.dilation for b in enc.layer4} == {(4, 4)}
