"""Soft Dice: values by hand and by an independent float64 formulation, present classes, sets."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.losses import DiceLoss, dice_loss


def reference_dice(logits, target, *, ignore=255, smooth=1.0, per_image=False):
    """Float64 Dice from the definition, one class and one set at a time (Python loops)."""
    p = torch.softmax(logits.double(), dim=1)
    sets = [[b] for b in range(logits.shape[0])] if per_image else [list(range(logits.shape[0]))]
    values = []
    for images in sets:
        coefficients = []
        for c in range(logits.shape[1]):
            inter = pred = true = 0.0
            for b in images:
                labels = target[b].flatten().tolist()
                probs = p[b, c].flatten().tolist()
                for label, prob in zip(labels, probs):
                    if label == ignore:
                        continue
                    inter += prob * (label == c)
                    pred += prob
                    true += label == c
            if true > 0:
                coefficients.append((2 * inter + smooth) / (pred + true + smooth))
        values.append(1 - sum(coefficients) / len(coefficients) if coefficients else None)
    return values


def test_two_pixels_by_hand():
    # Pixel A (label 0) and B (label 1) both predict p = (1/4, 3/4).
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # smooth 0: D0 = 2 (1/4) / (1/2 + 1) = 1/3, D1 = 2 (3/4) / (3/2 + 1) = 3/5.
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - (1 / 3 + 3 / 5) / 2)
    # smooth 1: D0 = 1.5 / 2.5, D1 = 2.5 / 3.5.
    expected = 1 - (1.5 / 2.5 + 2.5 / 3.5) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_an_absent_class_does_not_count():
    # A third class the target lacks takes probability mass but adds no Dice term.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]], [[0.0, 0.0]]]])
    target = torch.tensor([[[0, 1]]])
    p = torch.tensor([1.0, 3.0, 1.0]) / 5  # softmax at both pixels
    d0 = (2 * p[0] + 1) / (2 * p[0] + 1 + 1)
    d1 = (2 * p[1] + 1) / (2 * p[1] + 1 + 1)
    expected = 1 - (d0 + d1) / 2
    assert dice_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_matches_the_independent_formulation(per_image, smooth):
    gen = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target[0, :2] = 255
    target[1][target[1] == 3] = 0  # class 3 absent from image 1
    target[2] = 255  # an image without labelled pixels
    ref = reference_dice(logits, target, smooth=smooth, per_image=per_image)
    got = dice_loss(logits, target, smooth=smooth, per_image=per_image, reduction="none")
    if not per_image:
        assert got.shape == () and got.item() == pytest.approx(ref[0], rel=1e-12)
        for reduction in ("mean", "sum"):  # one set: the same scalar
            assert dice_loss(logits, target, smooth=smooth, reduction=reduction) == got
        return
    expected = [0.0 if v is None else v for v in ref]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    mean = dice_loss(logits, target, smooth=smooth, per_image=True)
    assert mean.item() == pytest.approx((expected[0] + expected[1]) / 2, rel=1e-12)
    total = dice_loss(logits, target, smooth=smooth, per_image=True, reduction="sum")
    assert total.item() == pytest.approx(sum(expected), rel=1e-12)


def test_perfect_prediction_gives_zero_without_smoothing():
    target = torch.randint(0, 3, (2, 6, 6))
    logits = 50 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck(per_image):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4), generator=gen)
    target[0, 0] = 255
    assert torch.autograd.gradcheck(lambda x: dice_loss(x, target, per_image=per_image), (logits,))


def test_module_matches_function_and_rejects_bad_options():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    module = DiceLoss(smooth=0.5, per_image=True, reduction="sum")
    expected = dice_loss(logits, target, smooth=0.5, per_image=True, reduction="sum")
    torch.testing.assert_close(module(logits, target), expected)
    assert "smooth=0.5" in repr(module)
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1.0)
    with pytest.raises(TypeError, match="per_image"):
        dice_loss(logits, target, per_image=1)
