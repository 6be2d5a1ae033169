"""Lovasz-softmax: values by hand and by an independent float64 formulation (the Lovasz
extension as a sum over error levels of the Jaccard loss of explicit pixel sets)."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.losses import LovaszSoftmaxLoss, lovasz_softmax_loss


def lovasz_by_levels(errors, in_class):
    """sum_k (m_(k) - m_(k+1)) |T_k| / |G u T_k|, errors sorted decreasingly, m_(P+1) = 0.

    The level-set (Abel summation) form of the Lovasz extension of the Jaccard loss
    Delta(T) = |T| / |G u T|, with T_k the pixels of the k largest errors: not the
    increments-of-the-sorted-Jaccard form the implementation uses.
    """
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    ground = {i for i, g in enumerate(in_class) if g}
    total = 0.0
    for k in range(1, len(order) + 1):
        top = set(order[:k])
        nxt = errors[order[k]] if k < len(order) else 0.0
        total += (errors[order[k - 1]] - nxt) * len(top) / len(ground | top)
    return total


def reference_lovasz(logits, target, *, ignore=255, per_image=False):
    p = torch.softmax(logits.double(), dim=1)
    sets = [[b] for b in range(logits.shape[0])] if per_image else [list(range(logits.shape[0]))]
    values = []
    for images in sets:
        labels = [x for b in images for x in target[b].flatten().tolist()]
        per_class = []
        for c in range(logits.shape[1]):
            probs = [x for b in images for x in p[b, c].flatten().tolist()]
            kept = [(lab, q) for lab, q in zip(labels, probs) if lab != ignore]
            in_class = [lab == c for lab, _ in kept]
            if not any(in_class):
                continue  # only the classes present
            errors = [1 - q if g else q for (_, q), g in zip(kept, in_class)]
            per_class.append(lovasz_by_levels(errors, in_class))
        values.append(sum(per_class) / len(per_class) if per_class else None)
    return values


def test_two_pixels_by_hand():
    # Pixel A (label 0) and B (label 1) both predict p = (1/4, 3/4).
    # Class 0: errors A 3/4 (in class), B 1/4: 1/2 * 1/1 + 1/4 * 2/2 = 3/4.
    # Class 1: errors A 3/4 (not in class), B 1/4: 1/2 * 1/2 + 1/4 * 2/2 = 1/2.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), math.log(3.0)]]]])
    target = torch.tensor([[[0, 1]]])
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(0.625, rel=1e-6)
    # A third class the target lacks (p = (1/5, 3/5, 1/5)) is left out of the mean.
    three = torch.cat([logits, torch.zeros(1, 1, 1, 2)], dim=1)
    # Class 0: errors 4/5, 1/5 -> 3/5 * 1 + 1/5 * 1 = 4/5; class 1: errors 3/5, 2/5 ->
    # 1/5 * 1/2 + 2/5 * 1 = 1/2.
    assert lovasz_softmax_loss(three, target).item() == pytest.approx(0.65, rel=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_matches_the_independent_formulation(per_image):
    gen = torch.Generator().manual_seed(5)
    logits = 2 * torch.randn(3, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 5, 6), generator=gen)
    target[0, :2] = 255
    target[1][target[1] == 3] = 0  # class 3 absent from image 1
    target[2] = 255
    ref = reference_lovasz(logits, target, per_image=per_image)
    got = lovasz_softmax_loss(logits, target, per_image=per_image, reduction="none")
    if not per_image:
        assert got.shape == () and got.item() == pytest.approx(ref[0], rel=1e-12)
        for reduction in ("mean", "sum"):  # one set: the same scalar
            assert lovasz_softmax_loss(logits, target, reduction=reduction) == got
        return
    expected = [0.0 if v is None else v for v in ref]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    mean = lovasz_softmax_loss(logits, target, per_image=True)
    assert mean.item() == pytest.approx((expected[0] + expected[1]) / 2, rel=1e-12)


def test_ties_do_not_change_the_value():
    # Equal errors in any order: the extension's value does not depend on the tie-breaking.
    logits = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    ref = reference_lovasz(logits, target)[0]
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_the_torch_sort_path_gives_what_the_numpy_path_gives(monkeypatch, per_image):
    # On the CPU the sort goes through numpy's argsort where torch's numpy bridge works, else
    # through torch.sort (no numpy, CUDA, torch.compile): same values; the gradients may differ
    # only inside ties (none here).
    gen = torch.Generator().manual_seed(8)
    logits = 2 * torch.randn(3, 4, 9, 11, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 9, 11), generator=gen)
    target[0, :3] = 255
    target[2] = 255

    def value_and_grad():
        x = logits.clone().requires_grad_(True)
        value = lovasz_softmax_loss(x, target, per_image=per_image, reduction="none")
        value.sum().backward()
        return value.detach(), x.grad

    expected = value_and_grad()

    def no_numpy(self):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    got = value_and_grad()
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-14, atol=1e-16)


def test_matches_smp_where_installed():
    lovasz = pytest.importorskip("segmentation_models_pytorch.losses.lovasz")
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 6, 20, 24, generator=gen)
    target = torch.randint(0, 6, (3, 20, 24), generator=gen)
    target[0, :5] = 255
    probs = logits.softmax(1)
    for per_image in (False, True):
        ref = lovasz._lovasz_softmax(probs, target, per_image=per_image, ignore=255)
        got = lovasz_softmax_loss(logits, target, per_image=per_image)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_gradcheck(per_image):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4), generator=gen)
    target[1, 0] = 255
    assert torch.autograd.gradcheck(
        lambda x: lovasz_softmax_loss(x, target, per_image=per_image), (logits,)
    )


def test_module_matches_function():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    module = LovaszSoftmaxLoss(per_image=True, reduction="none")
    expected = lovasz_softmax_loss(logits, target, per_image=True, reduction="none")
    torch.testing.assert_close(module(logits, target), expected)
    assert "per_image=True" in repr(module)
    with pytest.raises(TypeError, match="per_image"):
        LovaszSoftmaxLoss(per_image="yes")
