"""Reference conventions the models declare: logit upsampling (align_corners) used by the loss,
the engine and inference; ICNet's prototxt pooling windows at the reference size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arseg.engine.inference import model_align_corners, predict_logits, upsample_logits
from arseg.losses import CEARLoss
from arseg.models import build_model, list_models
from arseg.models.icnet import PROTOTXT_POOL_WINDOWS, SumPyramidPooling

# semseg (F.interpolate(..., align_corners=True)) and Caffe's Interp are corner-aligned; DrSleep's
# train.py resizes with align_corners=False
CORNER_ALIGNED = {"pspnet50", "pspnet101", "icnet50"}


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("smp_")])
def test_each_model_declares_its_reference_convention(name):
    with torch.device("meta"):
        model = build_model(name, 3)
    assert model_align_corners(model) is (name in CORNER_ALIGNED)


def test_undeclared_or_wrong_declarations():
    assert model_align_corners(torch.nn.Identity()) is False  # a foreign model: half-pixel
    bad = torch.nn.Identity()
    bad.align_corners = "yes"
    with pytest.raises(TypeError, match="align_corners must be a bool, got str"):
        predict_logits(bad, torch.randn(1, 3, 8, 8))


class _Fixed(torch.nn.Module):
    """Returns fixed 1/4-resolution logits; declares a convention."""

    def __init__(self, logits: torch.Tensor, align_corners: bool) -> None:
        super().__init__()
        self.logits = logits
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


@pytest.mark.parametrize("align", [False, True])
def test_predict_logits_follows_the_declared_convention(align):
    torch.manual_seed(0)
    native = torch.randn(2, 5, 9, 13)
    model = _Fixed(native, align)
    x = torch.randn(2, 3, 33, 49)
    expected = F.interpolate(native, size=(33, 49), mode="bilinear", align_corners=align)
    torch.testing.assert_close(predict_logits(model, x), expected)
    other = F.interpolate(native, size=(33, 49), mode="bilinear", align_corners=not align)
    assert (predict_logits(model, x) - other).abs().max() > 1e-2
    # sliding windows: each window's logits upsampled with the convention too
    slide = predict_logits(model, x, mode="slide", window=(33, 49))
    torch.testing.assert_close(slide, expected)


def test_upsample_logits_keeps_same_size_and_float64():
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    assert upsample_logits(x, (4, 5), True) is x
    assert upsample_logits(x.half(), (8, 10)).dtype == torch.float32
    assert upsample_logits(x, (8, 10), True).dtype == torch.float64


def test_cearloss_ce_resizes_with_its_convention():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, 9)
    target = torch.randint(0, 4, (2, 25, 33))
    for align in (False, True):
        up = F.interpolate(logits, size=(25, 33), mode="bilinear", align_corners=align)
        expected = F.cross_entropy(up, target)
        ce = CEARLoss(align_corners=align).cross_entropy(logits, target)
        torch.testing.assert_close(ce, expected)
        _, ce_fwd, _ = CEARLoss(align_corners=align)(logits, target)
        torch.testing.assert_close(ce_fwd, expected)
    a = CEARLoss(align_corners=True).cross_entropy(logits, target)
    b = CEARLoss().cross_entropy(logits, target)
    assert not torch.isclose(a, b)
    with pytest.raises(TypeError, match="align_corners must be a bool"):
        CEARLoss(align_corners=1)


def test_engine_trains_and_validates_with_the_models_convention():
    pytest.importorskip("lightning")
    from arseg.engine.config import load_config
    from arseg.engine.module import SegmentationModule

    cfg = load_config(None, ["model.name=icnet50", "model.num_classes=3"])
    module = SegmentationModule(cfg)
    assert module.criterion.align_corners is True  # ICNet: Caffe Interp
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 5, 7)
    target = torch.randint(0, 3, (1, 17, 25))
    up = F.interpolate(logits, size=(17, 25), mode="bilinear", align_corners=True)
    torch.testing.assert_close(module._ce(logits, target), F.cross_entropy(up, target))

    cfg = load_config(
        None,
        [
            "model.name=lwrefinenet_mbv2",
            "model.num_classes=3",
            "model.options.decoder_channels=8",
        ],
    )
    assert SegmentationModule(cfg).criterion.align_corners is False


# ---------------------------------------------------------------- ICNet pyramid pooling windows

# hszhao/ICNet icnet_cityscapes_bnnomerge.prototxt, conv5_3_pool1/2/3/6: kernel_h, kernel_w,
# stride_h, stride_w
PROTOTXT = {1: (33, 65, 33, 65), 2: (17, 33, 16, 32), 3: (13, 25, 10, 20), 6: (8, 15, 5, 10)}


def test_icnet_sees_the_prototxt_feature_size_at_the_reference_input():
    with torch.device("meta"):
        model = build_model("icnet50", 19, prototxt_pooling=True).eval()
        seen = []
        model.ppm.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
        model(torch.empty(1, 3, 1025, 2049))
        model(torch.empty(1, 3, 1024, 2048))
    assert seen == [(33, 65), (32, 64)]
    windows = model.ppm.pool_windows((33, 65))
    assert [(*k, *s) for k, s in windows] == [PROTOTXT[b] for b in (1, 2, 3, 6)]
    assert model.ppm.pool_windows((32, 64)) == [None] * 4  # adaptive elsewhere
    with torch.device("meta"):
        default = build_model("icnet50", 19)
    assert default.ppm.pool_windows((33, 65)) == [None] * 4  # opt-in


def _adaptive_sum(x: torch.Tensor) -> torch.Tensor:
    out = x
    for b in (1, 2, 3, 6):
        up = F.adaptive_avg_pool2d(x, b)
        out = out + F.interpolate(up, size=x.shape[-2:], mode="bilinear", align_corners=True)
    return out


def test_prototxt_pooling_uses_the_windows_at_33x65_only():
    torch.manual_seed(0)
    ppm = SumPyramidPooling((1, 2, 3, 6), PROTOTXT_POOL_WINDOWS)
    x = torch.randn(1, 4, 33, 65)
    expected = x
    for kh, kw, sh, sw in PROTOTXT.values():
        pooled = F.avg_pool2d(x, (kh, kw), (sh, sw))
        expected = expected + F.interpolate(
            pooled, size=(33, 65), mode="bilinear", align_corners=True
        )
    torch.testing.assert_close(ppm(x), expected)
    assert (ppm(x) - _adaptive_sum(x)).abs().max() > 1e-3  # bins 3 and 6 differ
    # bins 1 and 2: the prototxt windows are adaptive pooling's at this size
    for b in (1, 2):
        kh, kw, sh, sw = PROTOTXT[b]
        torch.testing.assert_close(F.avg_pool2d(x, (kh, kw), (sh, sw)), F.adaptive_avg_pool2d(x, b))
    for size in [(32, 64), (33, 64), (17, 33)]:
        y = torch.randn(1, 4, *size)
        torch.testing.assert_close(ppm(y), _adaptive_sum(y))


def test_pooling_windows_must_give_the_bins():
    with pytest.raises(ValueError, match="gives no 3x3 bins"):
        SumPyramidPooling((3,), {(33, 65): {3: ((11, 5), (11, 5))}})
    with pytest.raises(ValueError, match="does not tile"):
        SumPyramidPooling((3,), {(33, 65): {3: ((12, 25), (10, 20))}})
    with pytest.raises(TypeError, match="prototxt_pooling must be a bool"):
        build_model("icnet50", 19, prototxt_pooling="yes")
