"""ARLoss and CEARLoss modules: equivalence with the functional form, CE part, mmseg calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from arseg import ARLoss, CEARLoss, CEARLossOutput, ar_loss


def make_batch(seed=0, num_classes=5, low=(12, 16), high=(48, 64)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, *low, generator=gen)
    target = torch.randint(0, num_classes, (2, *high), generator=gen)
    target[0, :10] = 255
    return logits, target


def test_arloss_matches_functional_under_mmseg_style_calls():
    logits, target = make_batch()
    criterion = ARLoss(scales=[(6, 8), 3], method="factorized")
    expected = ar_loss(logits, target, scales=[(6, 8), 3], method="factorized")
    torch.testing.assert_close(criterion(logits, target), expected)
    # mmseg decode heads call loss(seg_logits, seg_label, weight=..., ignore_index=...).
    got = criterion(logits, target, weight=torch.ones(2, 48, 64), ignore_index=255, other=3)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="avg_factor"):
        criterion(logits, target, avg_factor=3)
    assert criterion.loss_name == "loss_ar"
    assert "scales" in repr(criterion)


def test_arloss_loss_weight_and_reduction():
    logits, target = make_batch(1)
    per_image = ARLoss(reduction="none")(logits, target)
    assert per_image.shape == (2,)
    weighted = ARLoss(loss_weight=0.1)(logits, target)
    torch.testing.assert_close(weighted, 0.1 * ar_loss(logits, target))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scales": (0, 6)}, ValueError),
        ({"reduction": "batchmean"}, ValueError),
        ({"method": "fast"}, ValueError),
        ({"ignore_index": 2.5}, TypeError),
    ],
)
def test_arloss_rejects_bad_options(kwargs, error):
    with pytest.raises(error):
        ARLoss(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"scales": (0, 6)}, ValueError),
        ({"method": "fast"}, ValueError),
        ({"ignore_index": 2.5}, TypeError),
        ({"lambda_ar": -1.0}, ValueError),
        ({"lambda_ar": float("nan")}, ValueError),
        ({"lambda_ar": float("inf")}, ValueError),
    ],
)
def test_cearloss_rejects_bad_options(kwargs, error):
    with pytest.raises(error):
        CEARLoss(**kwargs)


def test_cearloss_parts_and_total():
    logits, target = make_batch(2)
    logits.requires_grad_(True)
    out = CEARLoss(lambda_ar=0.1)(logits, target)
    assert isinstance(out, CEARLossOutput)
    total, ce, ar = out
    upsampled = F.interpolate(logits, size=(48, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ce, F.cross_entropy(upsampled, target, ignore_index=255))
    torch.testing.assert_close(ar, ar_loss(logits, target))
    torch.testing.assert_close(total, ce + 0.1 * ar)
    assert all(t.dtype == torch.float32 and t.ndim == 0 for t in out)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_cearloss_same_resolution_and_class_weight():
    logits, target = make_batch(3, low=(48, 64))
    weights = [1.0, 2.0, 0.5, 3.0, 1.5]
    criterion = CEARLoss(lambda_ar=0.5, class_weight=weights, scales=None)
    total, ce, ar = criterion(logits, target)
    expected_ce = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    torch.testing.assert_close(ce, expected_ce)
    torch.testing.assert_close(ar, ar_loss(logits, target, scales=None))
    torch.testing.assert_close(total, ce + 0.5 * ar)
    assert "class_weight" in dict(criterion.named_buffers())
    assert criterion.loss_name == "loss_ce_ar"  # a tuple-returning loss, not mmseg's "loss_ar"
    with pytest.raises(ValueError, match="no per-pixel weight"):
        criterion(logits, target, weight=torch.ones(2, 48, 64))
    with pytest.raises(TypeError):
        criterion(logits, target, ignore_index=255)  # never silently dropped


def test_cearloss_all_ignored_is_zero_with_zero_gradients():
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.full((2, 32, 32), 255)
    for criterion in (CEARLoss(), CEARLoss(class_weight=[1.0, 2.0, 3.0, 4.0])):
        total, ce, ar = criterion(logits, target)
        assert total.item() == 0 and ce.item() == 0 and ar.item() == 0
        (grad,) = torch.autograd.grad(total, logits)
        assert torch.all(grad == 0)


def test_cearloss_validates_inputs():
    logits, target = make_batch(4)
    with pytest.raises(ValueError, match="batch size"):
        CEARLoss()(logits, target[:1])
    with pytest.raises(TypeError, match="integer class labels"):
        CEARLoss()(logits, target.float())
    with pytest.raises(ValueError, match="class_weight has 3 entries"):
        CEARLoss(class_weight=[1.0, 1.0, 1.0])(logits, target)
    with pytest.raises(ValueError, match="1-D"):
        CEARLoss(class_weight=[[1.0, 1.0]])


def test_cearloss_under_bfloat16_autocast():
    logits, target = make_batch(5)
    conv = torch.nn.Conv2d(5, 5, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, ce, ar = CEARLoss()(conv(logits), target)
    assert total.dtype == ce.dtype == ar.dtype == torch.float32
    total.backward()
    assert torch.isfinite(conv.weight.grad).all()
