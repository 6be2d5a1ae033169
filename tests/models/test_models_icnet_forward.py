"""ICNet's forward with fixed weights equals the prototxt's graph written here with functional ops.

The reference is hszhao/ICNet ``evaluation/prototxt/icnet_cityscapes_bnnomerge.prototxt``: layer
names in the comments. Sizes follow Caffe's ``Interp`` (``shrink_factor``/``zoom_factor``) and
ceil-mode pooling, which agree with arseg's ``ceil(size / factor)`` on ``4k + 1`` inputs (the
reference 1025 x 2049 is one): the test uses 129 x 193. Weights and BN statistics are random
(seeded) and everything runs in float64, so any rewiring shows far above rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arseg.models import build_model


def _conv(sd, key, x, *, stride=1, padding=0, dilation=1):
    return F.conv2d(x, sd[f"{key}.weight"], sd.get(f"{key}.bias"), stride, padding, dilation)


def _bn(sd, key, x):
    return F.batch_norm(
        x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd[f"{key}.weight"],
        sd[f"{key}.bias"], eps=1e-5,
    )  # fmt: skip


def _interp(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _shrink2(x):  # Caffe Interp shrink_factor: 2 -> (n - 1) / 2 + 1
    return _interp(x, [(n - 1) // 2 + 1 for n in x.shape[-2:]])


def _zoom2(x):  # Caffe Interp zoom_factor: 2 -> n + (n - 1)
    return _interp(x, [2 * n - 1 for n in x.shape[-2:]])


def _bottleneck(sd, key, x, *, stride=1, dilation=1, project=False):
    """convX_Y_1x1_reduce (Caffe ResNet strides here), _3x3, _1x1_increase, convX_1_1x1_proj."""
    y = _bn(sd, f"{key}.bn1", _conv(sd, f"{key}.conv1", x, stride=stride)).relu()
    y = _conv(sd, f"{key}.conv2", y, padding=dilation, dilation=dilation)
    y = _bn(sd, f"{key}.bn3", _conv(sd, f"{key}.conv3", _bn(sd, f"{key}.bn2", y).relu()))
    if project:
        x = _bn(sd, f"{key}.downsample.1", _conv(sd, f"{key}.downsample.0", x, stride=stride))
    return (y + x).relu()


def _stage(sd, name, x, blocks, *, first_stride=1, dilation=1, start=0):
    for i in range(start, blocks):
        first = i == 0
        x = _bottleneck(
            sd, f"encoder.{name}.{i}", x, stride=first_stride if first else 1,
            dilation=dilation, project=first,
        )  # fmt: skip
    return x


def prototxt_icnet(sd, x):
    """(logits conv6_cls, sub4_out, sub24_out) of the prototxt graph from arseg-named tensors."""
    # data_sub2 -> conv1_1_3x3_s2, conv1_2_3x3, conv1_3_3x3, pool1_3x3_s2
    f = _shrink2(x)
    f = _bn(sd, "encoder.conv1.1", _conv(sd, "encoder.conv1.0", f, stride=2, padding=1)).relu()
    f = _bn(sd, "encoder.conv1.4", _conv(sd, "encoder.conv1.3", f, padding=1)).relu()
    f = _bn(sd, "encoder.bn1", _conv(sd, "encoder.conv1.6", f, padding=1)).relu()
    f = F.max_pool2d(f, 3, stride=2, padding=1, ceil_mode=True)
    f = _stage(sd, "layer1", f, 3)  # conv2_1 .. conv2_3
    conv3_1 = _bottleneck(sd, "encoder.layer2.0", f, stride=2, project=True)
    # conv3_1_sub4, then conv3_2 .. conv5_3 at 1/32 (conv4_x dilation 2, conv5_x dilation 4)
    f = _stage(sd, "layer2", _shrink2(conv3_1), 4, start=1)
    f = _stage(sd, "layer3", f, 6, dilation=2)
    f = _stage(sd, "layer4", f, 3, dilation=4)
    # conv5_3_pool{1,2,3,6} + interp, conv5_3_sum; conv5_4_k1
    pooled = f
    for b in (1, 2, 3, 6):
        pooled = pooled + _interp(F.adaptive_avg_pool2d(f, b), f.shape[-2:])
    conv5_4 = _bn(sd, "conv5_4.1", _conv(sd, "conv5_4.0", pooled)).relu()
    # conv1_sub1, conv2_sub1, conv3_sub1 on the full input
    g = x
    for i in range(3):
        g = _conv(sd, f"sub1.{i}.0", g, stride=2, padding=1)
        g = _bn(sd, f"sub1.{i}.1", g).relu()
    # conv5_4_interp, conv_sub4 (dilation 2) + conv3_1_sub2_proj -> sub24_sum
    conv5_4_up = _zoom2(conv5_4)
    low = _bn(sd, "cff24.low.1", _conv(sd, "cff24.low.0", conv5_4_up, padding=2, dilation=2))
    sub24 = (low + _bn(sd, "cff24.high.1", _conv(sd, "cff24.high.0", conv3_1))).relu()
    # sub24_sum_interp, conv_sub2 (dilation 2) + conv3_sub1_proj -> sub12_sum
    sub24_up = _zoom2(sub24)
    low = _bn(sd, "cff12.low.1", _conv(sd, "cff12.low.0", sub24_up, padding=2, dilation=2))
    sub12 = (low + _bn(sd, "cff12.high.1", _conv(sd, "cff12.high.0", g))).relu()
    # sub12_sum_interp, conv6_cls; label guidance sub4_out, sub24_out
    logits = _conv(sd, "classifier", _zoom2(sub12))
    return logits, _conv(sd, "aux_sub4", conv5_4_up), _conv(sd, "aux_sub24", sub24_up)


@pytest.fixture(scope="module")
def icnet():
    torch.manual_seed(0)
    model = build_model("icnet50", num_classes=5).double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # statistics that matter
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=gen))
    return model, model.state_dict()


def test_icnet_forward_equals_the_prototxt_graph(icnet):
    model, sd = icnet
    x = torch.randn(1, 3, 129, 193, generator=torch.Generator().manual_seed(2), dtype=torch.double)
    with torch.no_grad():
        logits, sub4, sub24 = prototxt_icnet(sd, x)
        assert logits.shape[-2:] == (33, 49) and sub4.shape[-2:] == (9, 13)
        assert sub24.shape[-2:] == (17, 25)
        torch.testing.assert_close(model(x), logits, rtol=1e-9, atol=1e-9)
        model.training = True  # the top module only: BN keeps its fixed statistics
        try:
            ours, aux = model.forward_features(x)
        finally:
            model.training = False
        torch.testing.assert_close(ours, logits, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(aux["sub4"], sub4, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(aux["sub24"], sub24, rtol=1e-9, atol=1e-9)
        assert logits.std() > 1e-3  # not a degenerate (all-equal) output


def test_the_prototxt_check_tells_rewirings_apart(icnet, monkeypatch):
    """The comparison above can fail: small departures from the prototxt change the logits."""
    import arseg.models.icnet as icnet_module

    model, sd = icnet
    x = torch.randn(1, 3, 129, 193, generator=torch.Generator().manual_seed(2), dtype=torch.double)

    def departs() -> bool:
        with torch.no_grad():
            return bool((model(x) - prototxt_icnet(sd, x)[0]).abs().max() > 1e-4)

    # ResNet-B placement of the conv3_1 stride (in the 3x3 instead of the 1x1 reduce)
    block = model.encoder.layer2[0]
    block.conv1.stride, block.conv2.stride = (1, 1), (2, 2)
    try:
        assert departs()
    finally:
        block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    # an undilated CFF conv
    conv = model.cff12.low[0]
    conv.dilation, conv.padding = (1, 1), (1, 1)
    try:
        assert departs()
    finally:
        conv.dilation, conv.padding = (2, 2), (2, 2)
    # half-pixel (align_corners=False) resampling instead of Caffe's Interp
    with monkeypatch.context() as patch:
        patch.setattr(
            icnet_module, "_resize",
            lambda t, size: F.interpolate(t, size=size, mode="bilinear", align_corners=False),
        )  # fmt: skip
        assert departs()
    assert not departs()
