"""Factorized == explicit == the definition, in float64, with gradients; gradcheck; fp32 accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arseg.losses import ar_loss, label_affinity, sqrt_affinity

SCALES = st.one_of(
    st.none(),
    st.just((12, 6)),
    st.lists(
        st.one_of(
            st.integers(1, 7),
            st.tuples(st.integers(1, 7), st.integers(1, 7)),
        ),
        min_size=1,
        max_size=3,
    ),
)


@st.composite
def loss_cases(draw):
    batch = draw(st.integers(1, 3))
    num_classes = draw(st.integers(2, 6))  # one channel is the sigmoid case (own tests)
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    fh, fw = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 2, 4, 8]))
    big_h, big_w = h * fh + draw(st.integers(0, 3)), w * fw + draw(st.integers(0, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    ignore = draw(st.sampled_from(["none", "some", "image", "all"]))
    scale = draw(st.sampled_from([0.5, 3.0, 10.0]))
    scales = draw(SCALES)
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, num_classes, h, w, generator=gen, dtype=torch.float64)
    target = torch.randint(0, num_classes, (batch, big_h, big_w), generator=gen)
    if ignore == "some":
        target[torch.rand(target.shape, generator=gen) < 0.3] = 255
    elif ignore == "image":
        target[0] = 255
    elif ignore == "all":
        target[:] = 255
    return logits, target, scales


def reference_loss(logits, target, scales):
    """The definition, from the explicit matrices: per-image mean over valid pairs."""
    m, valid = label_affinity(target, scales=scales, size=tuple(logits.shape[-2:]))
    a = sqrt_affinity(logits, scales=scales)
    pair = (valid.unsqueeze(1) & valid.unsqueeze(2)).to(a.dtype)
    per_image = ((a - m.to(a.dtype)) ** 2 * pair).sum((1, 2)) / pair.sum((1, 2)).clamp(min=1)
    return per_image


@settings(max_examples=30, deadline=None)
@given(loss_cases())
def test_factorized_equals_explicit_float64_with_gradients(case):
    logits, target, scales = case
    values, grads = {}, {}
    for method in ("explicit", "factorized"):
        x = logits.clone().requires_grad_(True)
        loss = ar_loss(x, target, scales=scales, method=method, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=False)
        values[method], grads[method] = loss.detach(), grad
    assert values["explicit"].dtype == torch.float64
    torch.testing.assert_close(values["factorized"], values["explicit"], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads["factorized"], grads["explicit"], rtol=0, atol=1e-10)
    torch.testing.assert_close(
        values["explicit"], reference_loss(logits, target, scales), rtol=0, atol=1e-10
    )


def test_gradcheck_factorized():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 8), generator=gen)
    target[1, :2] = 255
    for scales in (None, [(2, 3), 1]):
        assert torch.autograd.gradcheck(
            lambda x, s=scales: ar_loss(x, target, scales=s, method="factorized"), (logits,)
        )


def test_gradcheck_explicit_small():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (1, 3, 3), generator=gen)
    assert torch.autograd.gradcheck(
        lambda x: ar_loss(x, target, scales=None, method="explicit"), (logits,)
    )


@pytest.mark.parametrize(("num_classes", "label_classes"), [(19, 19), (19, 3), (19, 1), (40, 5)])
@pytest.mark.parametrize("scales", [(12, 6), None])
def test_float32_factorized_accurate_near_convergence(num_classes, label_classes, scales):
    # Predictions sharpened towards the labels: losses from ~1e-1 down to the README's 1e-6
    # (the last sharpness: the largest on a grid of 0.25 whose float64 loss is still >= 1e-6).
    gen = torch.Generator().manual_seed(num_classes + label_classes)
    target = torch.randint(0, label_classes, (2, 32, 32), generator=gen)
    target[1, :5] = 255
    one_hot = F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2)
    noise = torch.randn(one_hot.shape, generator=gen, dtype=torch.float64)
    smallest = 1.0
    last = 9.0
    while (
        ar_loss((last + 0.25) * one_hot + noise, target, scales=scales, method="factorized") >= 1e-6
    ):
        last += 0.25
    for sharpness in (3.0, 6.0, 9.0, 12.0, 14.0, last):
        logits64 = sharpness * one_hot + noise
        ref = ar_loss(logits64, target, scales=scales, method="explicit")
        if ref < 1e-6:
            continue
        smallest = min(smallest, ref.item())
        got = ar_loss(logits64.float(), target, scales=scales, method="factorized")
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=0)
    assert smallest < 2e-6  # the sweep really reached losses of 1e-6


def test_naive_gram_form_would_fail_the_accuracy_bar():
    # Guard that the accuracy test above is meaningful: the textbook expansion
    # ||S S^T||^2 - 2 ||S Y||^2 + sum n_k^2 in float32 misses the bar at small losses.
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (1, 48, 48), generator=gen)
    one_hot = F.one_hot(target, 19).permute(0, 3, 1, 2).double()
    logits64 = 12.0 * one_hot + torch.randn(one_hot.shape, generator=gen, dtype=torch.float64)
    ref = ar_loss(logits64, target, scales=None, method="explicit").item()
    s = torch.exp(0.5 * F.log_softmax(logits64.float(), dim=1)).flatten(2)[0]  # (C, N)
    y = one_hot.float().flatten(2)[0]
    naive = (s @ s.T).square().sum() - 2 * (s @ y.T).square().sum() + (y @ y.T).square().sum()
    naive = naive.item() / s.shape[1] ** 2
    assert ref < 1e-4
    assert abs(naive - ref) / ref > 2e-5


@pytest.mark.parametrize("scales", [(12, 6), None])
def test_float32_factorized_gradient_accurate_near_convergence(scales):
    gen = torch.Generator().manual_seed(11)
    target = torch.randint(0, 4, (2, 32, 32), generator=gen)
    target[0, :4] = 255
    one_hot = F.one_hot(target.clamp(max=18), 19).permute(0, 3, 1, 2)
    noise = torch.randn(one_hot.shape, generator=gen, dtype=torch.float64)
    for sharpness in (3.0, 8.0, 12.0):
        logits64 = (sharpness * one_hot + noise).requires_grad_(True)
        (ref,) = torch.autograd.grad(
            ar_loss(logits64, target, scales=scales, method="explicit"), logits64
        )
        logits32 = logits64.detach().float().requires_grad_(True)
        loss = ar_loss(logits32, target, scales=scales, method="factorized")
        (got,) = torch.autograd.grad(loss, logits32)
        error = (got.double() - ref).norm() / ref.norm()
        assert error < 1e-5, (sharpness, error.item())


def test_factorized_backward_twice_gives_the_same_gradient():
    # The backward modifies its saved residual in place and restores it bit-exactly.
    logits = torch.randn(2, 5, 16, 16, requires_grad=True)
    target = torch.randint(0, 5, (2, 16, 16))
    target[1, 3:9] = 255
    loss = ar_loss(logits, target, scales=None, method="factorized")
    (first,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (second,) = torch.autograd.grad(loss, logits)
    assert torch.equal(first, second)


def numpy_reference(logits, target, scales, ignore_index=255):
    """The paper's loss written from the README's conventions alone, in numpy loops.

    Shares no code with arseg: cell-centre indices floor((i + 0.5) * size / grid) in floating
    point, sqrt of a softmax, M_ij = [L_i == L_j], mean over the valid pairs of each image.
    """
    import math

    import numpy as np

    z = logits.detach().numpy()
    t = target.numpy()
    batch, _, h, w = z.shape
    big_h, big_w = t.shape[1:]
    # scales=None: one position per logit cell, i.e. the grid of the logits' own size
    grids = [(h, w)] if scales is None else [(s, s) if isinstance(s, int) else s for s in scales]
    out = []
    for b in range(batch):
        probs, labels = [], []
        for gh, gw in grids:
            for i in range(gh):
                for j in range(gw):
                    zi = z[b, :, math.floor((i + 0.5) * h / gh), math.floor((j + 0.5) * w / gw)]
                    ri = math.floor((i + 0.5) * big_h / gh)
                    ci = math.floor((j + 0.5) * big_w / gw)
                    e = np.exp(zi - zi.max())
                    probs.append(e / e.sum())
                    labels.append(t[b, ri, ci])
        keep = [k for k, lab in enumerate(labels) if lab != ignore_index]
        if not keep:
            out.append(0.0)
            continue
        sq = [np.sqrt(probs[k]) for k in keep]
        total = 0.0
        for a, ka in zip(sq, keep):
            for c, kc in zip(sq, keep):
                total += (float(a @ c) - float(labels[ka] == labels[kc])) ** 2
        out.append(total / len(keep) ** 2)
    return torch.tensor(out, dtype=torch.float64)


@st.composite
def any_resolution_cases(draw):
    """Logits smaller, equal or larger than the label map, any grid."""
    batch, num_classes = draw(st.integers(1, 2)), draw(st.integers(2, 5))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    big_h, big_w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = 3 * torch.randn(batch, num_classes, h, w, generator=gen, dtype=torch.float64)
    target = torch.randint(0, num_classes, (batch, big_h, big_w), generator=gen)
    target[torch.rand(target.shape, generator=gen) < draw(st.sampled_from([0.0, 0.3]))] = 255
    return logits, target, draw(SCALES)


@settings(max_examples=40, deadline=None)
@given(any_resolution_cases())
def test_matches_an_independent_numpy_reference(case):
    logits, target, scales = case
    expected = numpy_reference(logits, target, scales)
    for method in ("explicit", "factorized"):
        got = ar_loss(logits, target, scales=scales, method=method, reduction="none")
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
