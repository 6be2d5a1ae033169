"""Reference checkpoint converters, on randomly initialised reference-shaped state dicts.

The reference layouts are rebuilt here from their definitions (DrSleep/light-weight-refinenet
``models/resnet.py`` and ``models/mobilenet.py``; hszhao/semseg ``model/pspnet.py`` +
``model/resnet.py``): the ResNet encoders are torchvision ResNets (the DrSleep encoder *is*
torchvision's; semseg's differs only in its deep stem), the heads and the MobileNet-v2 are
listed by name and shape from the reference code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from arseg.engine.inference import predict_logits
from arseg.models import (
    build_model,
    convert_lwrefinenet,
    convert_lwrefinenet_mbv2,
    convert_pspnet,
    load_reference_state_dict,
)
from arseg.models.lwrefinenet import reference_first_block


def _bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(c) + 0.5,
        f"{prefix}.bias": torch.randn(c) * 0.1,
        f"{prefix}.running_mean": torch.randn(c) * 0.1,
        f"{prefix}.running_var": torch.rand(c) + 0.5,
    }


def _rand(*shape: int) -> torch.Tensor:
    fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
    return torch.randn(*shape) * (2.0 / fan_in) ** 0.5


def _torchvision_resnet50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    for m in net.modules():  # non-trivial BN statistics so the comparison means something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


def drsleep_rf_lw50_state(num_classes: int) -> dict[str, torch.Tensor]:
    sd = _torchvision_resnet50_state()
    torch.manual_seed(1)
    for g, (cin, c) in enumerate([(2048, 512), (1024, 256), (512, 256), (256, 256)], start=1):
        sd[f"p_ims1d2_outl{g}_dimred.weight"] = _rand(c, cin, 1, 1)
        if g > 1:
            sd[f"adapt_stage{g}_b2_joint_varout_dimred.weight"] = _rand(c, c, 1, 1)
        for n in range(1, 5):
            sd[f"mflow_conv_g{g}_pool.0.{n}_outvar_dimred.weight"] = _rand(c, c, 1, 1)
        if g < 4:
            sd[f"mflow_conv_g{g}_b3_joint_varout_dimred.weight"] = _rand(256, c, 1, 1)
    sd["clf_conv.weight"] = _rand(num_classes, 256, 3, 3)
    sd["clf_conv.bias"] = torch.randn(num_classes) * 0.1
    return sd


def _reference_lw_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DrSleep ``ResNetLW.forward`` (eval) written out functionally on its own state dict."""
    net = torchvision.models.resnet50(weights=None)
    net.load_state_dict({k: v for k, v in sd.items() if k.split(".")[0] in _ENC}, strict=False)
    net.eval()
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    l1 = net.layer1(y)
    l2 = net.layer2(l1)
    l3 = net.layer3(l2)
    l4 = net.layer4(l3)

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"])

    def crp(g, t):
        top = t
        for n in range(1, 5):
            top = conv(f"mflow_conv_g{g}_pool.0.{n}_outvar_dimred", F.max_pool2d(top, 5, 1, 2))
            t = t + top
        return t

    def up(t, ref):
        return F.interpolate(t, size=ref.shape[2:], mode="bilinear", align_corners=True)

    x4 = crp(1, F.relu(conv("p_ims1d2_outl1_dimred", l4)))
    x4 = up(conv("mflow_conv_g1_b3_joint_varout_dimred", x4), l3)
    x3 = conv("adapt_stage2_b2_joint_varout_dimred", conv("p_ims1d2_outl2_dimred", l3))
    x3 = up(conv("mflow_conv_g2_b3_joint_varout_dimred", crp(2, F.relu(x3 + x4))), l2)
    x2 = conv("adapt_stage3_b2_joint_varout_dimred", conv("p_ims1d2_outl3_dimred", l2))
    x2 = up(conv("mflow_conv_g3_b3_joint_varout_dimred", crp(3, F.relu(x2 + x3))), l1)
    x1 = conv("adapt_stage4_b2_joint_varout_dimred", conv("p_ims1d2_outl4_dimred", l1))
    x1 = crp(4, F.relu(x1 + x2))
    return F.conv2d(x1, sd["clf_conv.weight"], sd["clf_conv.bias"], padding=1)


_ENC = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}


@pytest.fixture(scope="module")
def lw_state() -> dict[str, torch.Tensor]:
    return drsleep_rf_lw50_state(num_classes=40)


@pytest.fixture(scope="module")
def psp_state() -> dict[str, torch.Tensor]:
    return semseg_pspnet50_state(num_classes=40)


def test_lwrefinenet_converter_reproduces_the_reference_forward(lw_state):
    sd = lw_state
    # a DataParallel checkpoint from an old PyTorch: "module." prefix, no num_batches_tracked
    ckpt = {"module." + k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    model = build_model("lwrefinenet50", num_classes=40)
    load_reference_state_dict(model, ckpt)
    model.eval()
    torch.testing.assert_close(
        model.crp4.convs[0].weight, sd["mflow_conv_g1_pool.0.1_outvar_dimred.weight"]
    )
    torch.testing.assert_close(
        model.adapt1.weight, sd["adapt_stage4_b2_joint_varout_dimred.weight"]
    )
    x = torch.randn(1, 3, 67, 83)
    with torch.no_grad():
        ours = model(x)
        ref = _reference_lw_forward(sd, x)
    assert ours.shape == ref.shape == (1, 40, 17, 21)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_lwrefinenet_converter_is_a_pure_renaming(lw_state):
    sd = lw_state
    converted = convert_lwrefinenet(sd)
    assert len(converted) == len(sd)
    assert {id(v) for v in converted.values()} == {id(v) for v in sd.values()}
    with torch.device("meta"):
        ours = build_model("lwrefinenet50", num_classes=40).state_dict()
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)


def semseg_pspnet50_state(num_classes: int) -> dict[str, torch.Tensor]:
    sd = _torchvision_resnet50_state()
    for k in [k for k in sd if k.startswith(("conv1.", "bn1."))]:
        del sd[k]
    torch.manual_seed(2)
    # deep stem: layer0 = [conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu, maxpool]
    sd["layer0.0.weight"] = _rand(64, 3, 3, 3)
    sd.update(_bn("layer0.1", 64))
    sd["layer0.3.weight"] = _rand(64, 64, 3, 3)
    sd.update(_bn("layer0.4", 64))
    sd["layer0.6.weight"] = _rand(128, 64, 3, 3)
    sd.update(_bn("layer0.7", 128))
    sd["layer1.0.conv1.weight"] = _rand(64, 128, 1, 1)  # inplanes = 128 after the deep stem
    sd["layer1.0.downsample.0.weight"] = _rand(256, 128, 1, 1)
    for i in range(4):
        sd[f"ppm.features.{i}.1.weight"] = _rand(512, 2048, 1, 1)
        sd.update(_bn(f"ppm.features.{i}.2", 512))
    sd["cls.0.weight"] = _rand(512, 4096, 3, 3)
    sd.update(_bn("cls.1", 512))
    sd["cls.4.weight"] = _rand(num_classes, 512, 1, 1)
    sd["cls.4.bias"] = torch.randn(num_classes) * 0.1
    sd["aux.0.weight"] = _rand(256, 1024, 3, 3)
    sd.update(_bn("aux.1", 256))
    sd["aux.4.weight"] = _rand(num_classes, 256, 1, 1)
    sd["aux.4.bias"] = torch.randn(num_classes) * 0.1
    return sd


@pytest.fixture(scope="module")
def psp_model(psp_state) -> torch.nn.Module:
    """pspnet50 loaded from the semseg-layout checkpoint as a DataParallel training file."""
    model = build_model("pspnet50", num_classes=40)
    wrapped = {"state_dict": {"module." + k: v for k, v in psp_state.items()}}
    return load_reference_state_dict(model, wrapped)


def test_pspnet_converter_loads_a_semseg_checkpoint(psp_state, psp_model):
    sd, model = psp_state, psp_model
    torch.testing.assert_close(model.encoder.conv1[6].weight, sd["layer0.6.weight"])
    torch.testing.assert_close(model.encoder.bn1.running_var, sd["layer0.7.running_var"])
    torch.testing.assert_close(model.head[4].bias, sd["cls.4.bias"])
    torch.testing.assert_close(model.aux_head[0].weight, sd["aux.0.weight"])
    torch.testing.assert_close(model.ppm.features[3][1].weight, sd["ppm.features.3.1.weight"])

    # the deep stem computes what semseg's layer0 computes
    model.eval()
    x = torch.randn(1, 3, 33, 41)
    ref = x
    for conv, bn in [("layer0.0", "layer0.1"), ("layer0.3", "layer0.4"), ("layer0.6", "layer0.7")]:
        stride = 2 if conv == "layer0.0" else 1
        ref = F.conv2d(ref, sd[f"{conv}.weight"], stride=stride, padding=1)
        ref = F.batch_norm(
            ref,
            sd[f"{bn}.running_mean"],
            sd[f"{bn}.running_var"],
            sd[f"{bn}.weight"],
            sd[f"{bn}.bias"],
        ).relu()
    enc = model.encoder
    with torch.no_grad():
        ours = enc.act1(enc.bn1(enc.conv1(x)))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_pspnet_converter_without_aux_head(psp_state):
    sd = {k: v for k, v in psp_state.items() if not k.startswith("aux.")}
    model = build_model("pspnet50", num_classes=40, aux=False)
    load_reference_state_dict(model, sd)
    torch.testing.assert_close(model.head[0].weight, sd["cls.0.weight"])
    with pytest.raises(ValueError, match="missing"):
        load_reference_state_dict(build_model("pspnet50", num_classes=40), sd)


def test_converted_semseg_pspnet_upsamples_as_semseg(psp_model):
    """semseg's forward ends with F.interpolate(x, (h, w), align_corners=True) of the 1/8 logits
    for 8k+1 inputs; predict_logits must give exactly that for a converted checkpoint."""
    model = psp_model.eval()
    assert model.align_corners is True
    x = torch.randn(1, 3, 33, 41)  # 8k + 1 sides, as semseg asks (473, 713)
    with torch.no_grad():
        native = model(x)
        ours = predict_logits(model, x)
    assert native.shape == (1, 40, 5, 6)
    semseg = F.interpolate(native, size=(33, 41), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ours, semseg)
    half_pixel = F.interpolate(native, size=(33, 41), mode="bilinear", align_corners=False)
    assert (ours - half_pixel).abs().max() > 1e-2  # the two conventions differ visibly


# DrSleep MBv2.mobilenet_config: expansion t, output channels c, repeats n, first stride s
_MBV2_CONFIG = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
MBV2_REFERENCE_COUNT = 3_284_565  # mbv2(21), docs/models.md


def drsleep_mbv2_state(num_classes: int) -> dict[str, torch.Tensor]:
    """State dict of DrSleep ``MBv2(num_classes)`` (models/mobilenet.py), random values.

    layer1 = convbnrelu(3, 32, 3, stride 2); layer2..8 = InvertedResidualBlocks whose
    ``output`` is [convbnrelu 1x1 expansion, convbnrelu 3x3 depthwise, convbn 1x1 projection];
    conv3..conv8 bias-free 1x1 projections to 256; crp1..4 = Sequential(CRPBlock(256, 256, 4));
    conv_adapt2..4; segm = 3x3 conv with bias.
    """
    torch.manual_seed(3)
    sd = {"layer1.0.weight": _rand(32, 3, 3, 3), **_bn("layer1.1", 32)}
    cin = 32
    for layer, (t, c, n, _) in enumerate(_MBV2_CONFIG, start=2):
        for i in range(n):
            mid, p = cin * t, f"layer{layer}.{i}.output"
            sd[f"{p}.0.0.weight"] = _rand(mid, cin, 1, 1)
            sd.update(_bn(f"{p}.0.1", mid))
            sd[f"{p}.1.0.weight"] = _rand(mid, 1, 3, 3)
            sd.update(_bn(f"{p}.1.1", mid))
            sd[f"{p}.2.0.weight"] = _rand(c, mid, 1, 1)
            sd.update(_bn(f"{p}.2.1", c))
            cin = c
    for k, c in zip(range(3, 9), (24, 32, 64, 96, 160, 320)):
        sd[f"conv{k}.weight"] = _rand(256, c, 1, 1)
    for g in range(1, 5):
        for n in range(1, 5):
            sd[f"crp{g}.0.{n}_outvar_dimred.weight"] = _rand(256, 256, 1, 1)
    for g in range(2, 5):
        sd[f"conv_adapt{g}.weight"] = _rand(256, 256, 1, 1)
    sd["segm.weight"] = _rand(num_classes, 256, 3, 3)
    sd["segm.bias"] = torch.randn(num_classes) * 0.1
    return sd


def _reference_mbv2_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """DrSleep ``MBv2.forward`` (eval) written out functionally on its own state dict."""

    def cbr(t, prefix, stride=1, groups=1, act=True):
        w = sd[f"{prefix}.0.weight"]
        t = F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        bn = [sd[f"{prefix}.1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        t = F.batch_norm(t, *bn, eps=1e-5)
        return F.relu6(t) if act else t

    y = cbr(x, "layer1", stride=2)
    feats = {}
    cin = 32
    for layer, (t, c, n, s) in enumerate(_MBV2_CONFIG, start=2):
        for i in range(n):
            p, stride = f"layer{layer}.{i}.output", s if i == 0 else 1
            out = cbr(y, f"{p}.0")
            out = cbr(out, f"{p}.1", stride=stride, groups=cin * t)
            out = cbr(out, f"{p}.2", act=False)
            y = out + y if cin == c and stride == 1 else out  # the reference's residual rule
            cin = c
        feats[layer] = y

    def conv(name, t):
        return F.conv2d(t, sd[f"{name}.weight"])

    def crp(g, t):
        top = t
        for n in range(1, 5):
            top = conv(f"crp{g}.0.{n}_outvar_dimred", F.max_pool2d(top, 5, 1, 2))
            t = t + top
        return t

    def up(t, ref):
        return F.interpolate(t, size=ref.shape[2:], mode="bilinear", align_corners=True)

    l7 = F.relu6(conv("conv8", feats[8]) + conv("conv7", feats[7]))
    l7 = up(conv("conv_adapt4", crp(4, l7)), feats[6])
    l5 = F.relu6(conv("conv5", feats[5]) + conv("conv6", feats[6]) + l7)
    l5 = up(conv("conv_adapt3", crp(3, l5)), feats[4])
    l4 = F.relu6(l5 + conv("conv4", feats[4]))
    l4 = up(conv("conv_adapt2", crp(2, l4)), feats[3])
    l3 = crp(1, F.relu6(conv("conv3", feats[3]) + l4))
    return F.conv2d(l3, sd["segm.weight"], sd["segm.bias"], padding=1)


@pytest.fixture(scope="module")
def mbv2_state() -> dict[str, torch.Tensor]:
    return drsleep_mbv2_state(num_classes=21)


def test_mbv2_converter_is_a_pure_renaming_onto_every_tensor(mbv2_state):
    sd = mbv2_state
    learnable = sum(v.numel() for k, v in sd.items() if "running_" not in k)
    assert learnable == MBV2_REFERENCE_COUNT  # the synthetic layout is the reference's
    converted = convert_lwrefinenet_mbv2(sd)
    assert len(converted) == len(sd)
    assert {id(v) for v in converted.values()} == {id(v) for v in sd.values()}
    with torch.device("meta"):
        model = build_model("lwrefinenet_mbv2", num_classes=21)
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert sum(p.numel() for p in model.parameters()) == MBV2_REFERENCE_COUNT
    # the first block's 1x1 expansion (timm omits it) receives the reference's tensor
    assert converted["encoder.blocks.0.0.conv_pw.weight"] is sd["layer2.0.output.0.0.weight"]


def test_mbv2_converter_reproduces_the_reference_forward(mbv2_state):
    sd = mbv2_state
    model = build_model("lwrefinenet_mbv2", num_classes=21)
    load_reference_state_dict(model, {"state_dict": {"module." + k: v for k, v in sd.items()}})
    model.eval()
    x = torch.randn(1, 3, 45, 61)  # odd sizes: every ceil and align_corners path
    with torch.no_grad():
        ours = model(x)
        ref = _reference_mbv2_forward(sd, x)
    assert ours.shape == ref.shape == (1, 21, 12, 16)
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def test_mbv2_first_block_expansion_starts_as_identity_for_pretrained_encoders():
    import timm

    torch.manual_seed(0)
    timm_block = timm.create_model("mobilenetv2_100", features_only=True).blocks[0][0]
    for m in timm_block.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    timm_block.eval()
    x = torch.rand(2, 32, 9, 11) * 6  # the stem's ReLU6 output
    with torch.no_grad():
        expected = timm_block(x)
        same = reference_first_block(timm_block, identity=True).eval()(x)
        fresh = reference_first_block(timm_block, identity=False).eval()(x)
    torch.testing.assert_close(same, expected, rtol=1e-4, atol=1e-4)
    assert (fresh - expected).abs().max() > 1e-2


def test_converters_reject_foreign_state_dicts():
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_pspnet({"backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_lwrefinenet({"decoder.head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="MobileNet-v2 state dict; unexpected keys"):
        convert_lwrefinenet_mbv2({"layer9.0.output.0.0.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="state dict"):
        convert_pspnet([("layer0.0.weight", torch.zeros(1))])
    with pytest.raises(TypeError, match="no reference converter"):
        load_reference_state_dict(torch.nn.Linear(2, 2), {})
