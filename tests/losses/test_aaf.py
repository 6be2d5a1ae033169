"""AAF's affinity field loss: values by hand and by an independent float64 formulation (Python
loops over pixels, the 8 neighbours and the classes), borders, ignore, class weights."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.losses import AAFLoss, aaf_loss

CLIP = 1e-4


def reference_aaf(logits, target, *, ignore=255, sizes=(1, 2, 3), margin=3.0, weights=None):
    """Per-image float64 values from the definition; ``None`` for an image without pairs."""
    p = torch.softmax(logits.double(), dim=1)
    batch, num_classes, height, width = p.shape
    out = []
    for b in range(batch):
        total, any_pair = 0.0, False
        for s in sizes:
            edge, edge_n, flat, flat_n = 0.0, 0, 0.0, 0
            for y in range(height):
                for x in range(width):
                    li = int(target[b, y, x])
                    if li == ignore:
                        continue
                    for dy in (-s, 0, s):
                        for dx in (-s, 0, s):
                            if dy == dx == 0:
                                continue
                            yy, xx = y + dy, x + dx
                            if not (0 <= yy < height and 0 <= xx < width):
                                continue  # the neighbour is outside the image: dropped
                            lj = int(target[b, yy, xx])
                            if lj == ignore:
                                continue
                            w = 1.0 if weights is None else weights[li]
                            for c in range(num_classes):
                                pi, pj = float(p[b, c, y, x]), float(p[b, c, yy, xx])
                                qi, qj = min(max(pi, CLIP), 1.0), min(max(pj, CLIP), 1.0)
                                ri = min(max(1 - pi, CLIP), 1.0)
                                rj = min(max(1 - pj, CLIP), 1.0)
                                kl = qj * math.log(qj / qi) + rj * math.log(rj / ri)
                                if (li == c) != (lj == c):
                                    edge += w * max(0.0, margin - kl)
                                    edge_n += 1
                                else:
                                    flat += w * kl
                                    flat_n += 1
            any_pair |= edge_n + flat_n > 0
            total += (edge / edge_n if edge_n else 0.0) + (flat / flat_n if flat_n else 0.0)
        out.append(total if any_pair else None)
    return out


def test_two_pixels_by_hand():
    uniform = torch.zeros(1, 2, 1, 2)  # p = (1/2, 1/2) at both pixels: every KL is 0
    # Different labels: both classes are edges in both directions, each max(0, 3 - 0) = 3.
    assert aaf_loss(uniform, torch.tensor([[[0, 1]]]), sizes=(1,)).item() == pytest.approx(3.0)
    # Same labels: no edge, KL 0.
    assert aaf_loss(uniform, torch.tensor([[[0, 0]]]), sizes=(1,)).item() == 0.0
    # p_A = (0.8, 0.2), p_B = (0.2, 0.8), same labels: every element is a non-edge with
    # KL = 0.2 ln(0.2/0.8) + 0.8 ln(0.8/0.2) = 0.6 ln 4 (both classes, both directions).
    logits = torch.tensor([[[[math.log(4.0), 0.0]], [[0.0, math.log(4.0)]]]])
    value = aaf_loss(logits, torch.tensor([[[1, 1]]]), sizes=(1,)).item()
    assert value == pytest.approx(0.6 * math.log(4.0), rel=1e-6)
    # Different labels: all edges, each max(0, 3 - 0.6 ln 4).
    value = aaf_loss(logits, torch.tensor([[[0, 1]]]), sizes=(1,)).item()
    assert value == pytest.approx(3.0 - 0.6 * math.log(4.0), rel=1e-6)
    # Size 2 on a 1 x 2 image: no pair inside the image -> 0 (not a wrapped-around pair).
    assert aaf_loss(logits, torch.tensor([[[0, 1]]]), sizes=(2,)).item() == 0.0


@pytest.mark.parametrize(
    ("sizes", "weights"), [((1,), None), ((1, 2, 3), None), ((2, 1), [0.5, 2.0, 1.0])]
)
def test_matches_the_independent_formulation(sizes, weights):
    gen = torch.Generator().manual_seed(8)
    logits = 3 * torch.randn(3, 3, 5, 6, generator=gen, dtype=torch.float64)
    logits[0, 0, 0, 0] = 15.0  # a clipped probability
    target = torch.randint(0, 3, (3, 5, 6), generator=gen)
    target[0, 1:3, 2:4] = 255
    target[2] = 255
    target[2, 0, 0] = 1  # one labelled pixel: no pair
    ref = reference_aaf(logits, target, sizes=sizes, weights=weights)
    got = aaf_loss(logits, target, sizes=sizes, class_weights=weights, reduction="none")
    expected = [0.0 if v is None else v for v in ref]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    mean = aaf_loss(logits, target, sizes=sizes, class_weights=weights)
    assert mean.item() == pytest.approx((expected[0] + expected[1]) / 2, rel=1e-12)
    total = aaf_loss(logits, target, sizes=sizes, class_weights=weights, reduction="sum")
    assert total.item() == pytest.approx(sum(expected), rel=1e-12)


def test_margin_and_single_size_int():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 4, 4), generator=gen)
    ref = reference_aaf(logits, target, sizes=(2,), margin=1.5)[0]
    assert aaf_loss(logits, target, sizes=2, margin=1.5).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]])
def test_gradcheck(weights):
    """The hand-written backward, also where probabilities are clipped (zero gradient there)."""
    gen = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    logits[0, 1, 2, 2] = 15.0  # p ~ 1 - 6e-7: 1 - p and the other classes clipped to 1e-4
    logits.requires_grad_(True)
    target = torch.randint(0, 3, (2, 4, 4), generator=gen)
    target[0, 0, :2] = 255
    assert torch.autograd.gradcheck(
        lambda x: aaf_loss(x, target, sizes=(1, 2), class_weights=weights, margin=2.0),
        (logits,),
    )


def test_module_matches_function_and_rejects_bad_options():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    module = AAFLoss(sizes=[1, 2], margin=2.0, class_weights=[1.0, 0.5, 2.0])
    expected = aaf_loss(logits, target, sizes=(1, 2), margin=2.0, class_weights=[1.0, 0.5, 2.0])
    torch.testing.assert_close(module(logits, target), expected)
    assert "margin=2.0" in repr(module)
    for bad in ((), (0, 1), (1, 1), "12", (1.5,)):
        with pytest.raises(ValueError, match="sizes"):
            AAFLoss(sizes=bad)
    with pytest.raises(ValueError, match="margin"):
        AAFLoss(margin=-1.0)
    with pytest.raises(ValueError, match="class_weights"):
        AAFLoss(class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        aaf_loss(logits, target, class_weights=[1.0, 1.0])


# --- at the network's output resolution: the target sampled at the logit cells' centres ---


def labels_at_cell_centres(target, height, width):
    """(B, H, W) labels picked at floor((i + 0.5) * H / h), floor((j + 0.5) * W / w), in Python
    floating point (shares no code with arseg.losses.sampling)."""
    big_h, big_w = target.shape[-2:]
    out = torch.empty(target.shape[0], height, width, dtype=target.dtype)
    for i in range(height):
        for j in range(width):
            row = math.floor((i + 0.5) * big_h / height)
            col = math.floor((j + 0.5) * big_w / width)
            out[:, i, j] = target[:, row, col]
    return out


@pytest.mark.parametrize("big", [(20, 24), (23, 37), (5, 6)])
def test_a_larger_target_is_read_at_the_logit_cell_centres(big):
    # stride 4 exactly, a ratio that is no integer, and the logits' own size
    gen = torch.Generator().manual_seed(11)
    logits = 2 * torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, *big), generator=gen)
    target[0, : big[0] // 3] = 255
    small = labels_at_cell_centres(target, 5, 6)
    got = aaf_loss(logits, target, reduction="none")
    torch.testing.assert_close(got, aaf_loss(logits, small, reduction="none"), rtol=0, atol=0)
    ref = reference_aaf(logits, small)
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))
    # (B, 1, H, W) and uint8 targets, and the module, read the same labels
    torch.testing.assert_close(aaf_loss(logits, target.unsqueeze(1).to(torch.uint8)), got.mean())
    torch.testing.assert_close(AAFLoss()(logits, target), got.mean())


def test_ignore_handling_at_the_logit_resolution():
    gen = torch.Generator().manual_seed(12)
    logits = 2 * torch.randn(2, 3, 6, 8, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 24, 32), generator=gen)  # stride 4: centres at 4 i + 2
    target[0, 2::4, 2::4][1:3, 2:5] = 255  # six ignored cell centres
    target[1, 9:11] = 255  # rows 9 and 10: the centres of logit row 2 (row 10)
    small = labels_at_cell_centres(target, 6, 8)
    assert (small[0] == 255).sum() == 6 and (small[1, 2] == 255).all()
    assert (small[1, [0, 1, 3, 4, 5]] != 255).all()
    expected = torch.tensor(reference_aaf(logits, small), dtype=torch.float64)
    torch.testing.assert_close(aaf_loss(logits, target, reduction="none"), expected)
    # Labels away from the centres, ignored or not, change nothing.
    other = target.clone()
    off_centre = torch.ones(24, 32, dtype=torch.bool)
    off_centre[2::4, 2::4] = False
    other[:, off_centre] = 255
    torch.testing.assert_close(aaf_loss(logits, other, reduction="none"), expected)
    # A logit cell whose centre is ignored has no pair: no gradient, whatever its logits.
    x = logits.clone().requires_grad_(True)
    aaf_loss(x, target).backward()
    ignored = (small == 255).unsqueeze(1).expand_as(x)
    assert torch.all(x.grad[ignored] == 0) and x.grad[~ignored].abs().sum() > 0
    # every label is checked, also where no centre falls
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[0, 2\]") as info:
        aaf_loss(logits, bad)
    assert "\n" not in str(info.value)


def test_a_smaller_target_repeats_its_labels_as_ar_loss():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(1, 3, 8, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 4, 3), generator=gen)
    repeated = target.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert repeated.equal(labels_at_cell_centres(target, 8, 6))
    torch.testing.assert_close(aaf_loss(logits, target), aaf_loss(logits, repeated))


def test_the_engine_hands_aaf_the_native_logits():
    from arseg.losses import CompositeLoss

    gen = torch.Generator().manual_seed(14)
    native = torch.randn(2, 4, 6, 8, generator=gen, requires_grad=True)  # 1/4 of the labels
    target = torch.randint(0, 4, (2, 24, 32), generator=gen)
    target[1, :6] = 255
    out = CompositeLoss({"aaf": {"sizes": [1, 2]}})(native, target, {"aaf": 1.0})
    direct = aaf_loss(native, target, sizes=(1, 2))
    assert out.terms["aaf"].item() == direct.item()
    upsampled = torch.nn.functional.interpolate(native, size=(24, 32), mode="bilinear")
    assert abs(aaf_loss(upsampled, target, sizes=(1, 2)).item() - direct.item()) > 1e-3
    # its gradient reaches the native logits as the direct call's does
    (grad,) = torch.autograd.grad(out.total - out.ce, native)
    (expected,) = torch.autograd.grad(direct, native)
    torch.testing.assert_close(grad, expected)
