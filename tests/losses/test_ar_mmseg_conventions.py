"""What mmsegmentation passes to a loss: call-time ignore_index, per-pixel weight,
reduction_override, (B, 1, H, W) targets, one-channel logits; torch.compile's label check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from arseg.losses import ARLoss, CEARLoss, ar_loss, label_affinity, prediction_affinity

METHODS = ("explicit", "factorized")


def _batch(seed=0, num_classes=5, low=(6, 8), high=(24, 32), dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, num_classes, *low, generator=gen, dtype=dtype)
    target = torch.randint(0, num_classes, (2, *high), generator=gen)
    target[0, :5] = 255
    return logits, target, gen


# ------------------------------------------------------------------ ignore_index at call time
def test_call_time_ignore_index_overrides_the_constructor():
    logits, target, _ = _batch(num_classes=11)
    target[target == 255] = 11  # mmseg config with decode_head.ignore_index=11
    criterion = ARLoss()  # constructed with 255
    with pytest.raises(ValueError, match="ignore_index=255"):
        criterion(logits, target)
    got = criterion(logits, target, ignore_index=11)
    assert torch.equal(got, ar_loss(logits, target, ignore_index=11))
    # An ignore value below C is no longer counted as a class.
    low = criterion(logits, target.clamp(max=10), ignore_index=3)
    expected = ar_loss(logits, target.clamp(max=10), ignore_index=3)
    assert torch.equal(low, expected)
    assert not torch.isclose(low, criterion(logits, target.clamp(max=10)))
    assert criterion.ignore_index == 255  # the call changed nothing on the module
    with pytest.raises(TypeError, match="ignore_index"):
        criterion(logits, target, ignore_index=1.5)


# ------------------------------------------------------------------ per-pixel weight
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kernel", ["sqrt", "linear"])
@pytest.mark.parametrize("scales", [(12, 6), None])
def test_weight_one_is_the_unweighted_loss_and_zero_is_ignore(method, kernel, scales):
    logits, target, gen = _batch(1)
    kw = {"scales": scales, "method": method, "kernel": kernel, "reduction": "none"}
    plain = ar_loss(logits, target, **kw)
    ones = torch.ones(target.shape, dtype=torch.float64)
    assert torch.equal(ar_loss(logits, target, weight=ones, **kw), plain)
    drop = torch.rand(target.shape, generator=gen) < 0.4
    zeroed = ar_loss(logits, target, weight=(~drop).double(), **kw)
    assert torch.equal(zeroed, ar_loss(logits, target.masked_fill(drop, 255), **kw))
    # ... also with other weights around the zeros, and gradients agree
    w = 0.5 + torch.rand(target.shape, generator=gen, dtype=torch.float64)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    a = ar_loss(x1, target, weight=w.masked_fill(drop, 0.0), **kw)
    b = ar_loss(x2, target.masked_fill(drop, 255), weight=w, **kw)
    assert torch.equal(a, b)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(x1.grad, x2.grad)


@pytest.mark.parametrize("method", METHODS)
def test_weighted_case_by_hand(method):
    # Two positions, labels (0, 1); p_0 = (3/4, 1/4), p_1 = (1/2, 1/2); weights (2, 1).
    logits = torch.tensor([[[[math.log(3.0), 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 1]]])
    weight = torch.tensor([[[2.0, 1.0]]], dtype=torch.float64)
    # linear: A = [[5/8, 1/2], [1/2, 1/2]], A - M = [[-3/8, 1/2], [1/2, -1/2]]
    # sum_ij w_i w_j (A - M)_ij^2 = 4 (9/64) + 1 (1/4) + 2 * 2 (1/4) = 261/144 * 9; / (2 + 1)^2
    linear = ar_loss(logits, target, scales=None, method=method, kernel="linear", weight=weight)
    assert linear.item() == pytest.approx(29 / 144, rel=1e-12)
    unweighted = ar_loss(logits, target, scales=None, method=method, kernel="linear")
    assert unweighted.item() == pytest.approx(57 / 256, rel=1e-12)
    # sqrt: diagonal exact, A_01 = sqrt(3/8) + sqrt(1/8): 2 * 2 * 1 * A_01^2 / 9
    a01 = math.sqrt(3 / 8) + math.sqrt(1 / 8)
    sqrt = ar_loss(logits, target, scales=None, method=method, weight=weight)
    assert sqrt.item() == pytest.approx(4 * a01**2 / 9, rel=1e-12)


def test_weight_is_sampled_where_the_labels_are():
    # Logits 1 x 2, labels 2 x 4: the positions are pixels (1, 1) and (1, 3) of the label map.
    logits = torch.tensor([[[[1.0, -0.5]], [[0.0, 0.3]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    weight = torch.rand(1, 2, 4, dtype=torch.float64) + 7.0  # ignored positions: any value
    weight[0, 1, 1], weight[0, 1, 3] = 2.0, 1.0
    got = ar_loss(logits, target, scales=None, weight=weight)
    small = ar_loss(
        logits,
        torch.tensor([[[0, 1]]]),
        scales=None,
        weight=torch.tensor([[[2.0, 1.0]]], dtype=torch.float64),
    )
    assert torch.equal(got, small)
    assert not torch.isclose(got, ar_loss(logits, target, scales=None))


def test_all_zero_weight_gives_zero_with_zero_gradients():
    logits, target, _ = _batch(2)
    x = logits.clone().requires_grad_(True)
    for method in METHODS:
        loss = ARLoss(method=method)(x, target, weight=torch.zeros(target.shape))
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        (torch.ones(2, 24, 31), ValueError, "target's shape"),
        (torch.ones(2, 24, 32, dtype=torch.long), TypeError, "floating-point"),
        (torch.full((2, 24, 32), -1.0), ValueError, ">= 0"),
        (torch.full((2, 24, 32), float("nan")), ValueError, "finite"),
        ([1.0], TypeError, "torch.Tensor"),
    ],
)
def test_bad_weights_are_clear_errors(weight, error, match):
    logits, target, _ = _batch(3)
    with pytest.raises(error, match=match):
        ARLoss()(logits, target, weight=weight)


# ------------------------------------------------------------------ reduction_override
def test_reduction_override_and_the_per_pixel_none_map():
    logits, target, _ = _batch(4)
    criterion = ARLoss(loss_weight=0.5)
    per_image = ar_loss(logits, target, reduction="none")
    torch.testing.assert_close(
        criterion(logits, target, reduction_override="sum"), 0.5 * per_image.sum()
    )
    torch.testing.assert_close(
        criterion(logits, target, reduction_override="mean"), 0.5 * per_image.mean()
    )
    # "none" from a per-pixel caller: a zero (B, H, W) map at the target's size.
    pixel_map = criterion(logits, target, reduction_override="none", weight=None, ignore_index=255)
    assert pixel_map.shape == target.shape and pixel_map.dtype == torch.float64
    assert torch.count_nonzero(pixel_map) == 0
    # reduction="none" set on the module keeps arseg's per-image values.
    assert ARLoss(reduction="none")(logits, target).shape == (2,)
    with pytest.raises(ValueError, match="reduction_override"):
        criterion(logits, target, reduction_override="avg")
    with pytest.raises(ValueError, match=r"\[0, 4\]"):  # labels still checked on the map path
        criterion(logits, target.clamp(max=7) + 1, reduction_override="none")


# ------------------------------------------------------------------ target and logit shapes
def test_one_channel_targets_are_accepted_everywhere():
    logits, target, _ = _batch(5)
    t4 = target.unsqueeze(1)
    assert torch.equal(ar_loss(logits, t4), ar_loss(logits, target))
    assert torch.equal(ARLoss()(logits, t4, weight=torch.ones(t4.shape)), ar_loss(logits, target))
    for a, b in zip(CEARLoss()(logits, t4), CEARLoss()(logits, target)):
        assert torch.equal(a, b)
    assert torch.equal(label_affinity(t4)[0], label_affinity(target)[0])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ar_loss(logits, target.unsqueeze(1).expand(2, 2, 24, 32))


def test_one_channel_logits_are_the_sigmoid_two_class_distribution():
    logits, target, _ = _batch(6, num_classes=2)
    z = logits[:, 1:] - logits[:, :1]  # softmax((a, b)) == (1 - sigmoid(b - a), sigmoid(b - a))
    for method in METHODS:
        torch.testing.assert_close(
            ar_loss(z, target, method=method), ar_loss(logits, target, method=method)
        )
    p = torch.sigmoid(z[:, 0, 0, :3])  # (B, 3): three positions of the first row
    expected = torch.sqrt(p[:, :, None] * p[:, None, :]) + torch.sqrt(
        (1 - p)[:, :, None] * (1 - p)[:, None, :]
    )
    torch.testing.assert_close(prediction_affinity(z[:, :, :1, :3], scales=None), expected)
    # CE of one channel is the binary cross-entropy with logits.
    _, ce, _ = CEARLoss(scales=None)(z, target)
    up = F.interpolate(z, size=target.shape[-2:], mode="bilinear", align_corners=False)
    valid = target != 255
    bce = F.binary_cross_entropy_with_logits(up[:, 0][valid], target[valid].double())
    torch.testing.assert_close(ce, bce)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ar_loss(z, torch.full_like(target, 2))


def test_cearloss_has_its_own_loss_name():
    assert ARLoss().loss_name == "loss_ar"
    assert CEARLoss().loss_name != ARLoss().loss_name
    assert ARLoss(loss_name="loss_aff").loss_name == "loss_aff"


# ------------------------------------------------------------------ torch.compile
@pytest.mark.slow
def test_label_range_error_under_torch_compile_without_graph_break():
    logits, target, _ = _batch(7, dtype=torch.float32)
    compiled = torch.compile(ar_loss, fullgraph=True)  # a graph break would raise here
    torch.testing.assert_close(compiled(logits, target), ar_loss(logits, target))
    bad = target.clone()
    bad[1, 3, 4] = 9
    with pytest.raises(RuntimeError, match=r"target labels must be in \[0, 4\]"):
        compiled(logits, bad)
