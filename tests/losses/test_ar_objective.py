"""AR's objective ablation: ``objective="bce"`` (binary cross-entropy of A against M) beside the
paper's ``"mse"``: values by hand and by an independent float64 formulation, the exact blockwise
factorized method (no N x N buffer), ignore, weights, reductions, modules."""

from __future__ import annotations

import math

import pytest
import torch

import arseg.losses.functional as functional
from arseg.losses import ARLoss, CEARLoss, ar_loss

from .conftest import LargestTensor

EPS = 1e-6


def reference_bce(logits, target, *, ignore=255, kernel="sqrt", weight=None):
    """Per-image float64 BCE of A against M over all logit positions (scales=None, same size)."""
    p = torch.softmax(logits.double(), dim=1).flatten(2)  # (B, C, N)
    s = p.sqrt() if kernel == "sqrt" else p
    out = []
    for b in range(p.shape[0]):
        labels = target[b].flatten()
        w = torch.ones(labels.shape, dtype=torch.float64) if weight is None else weight[b].flatten()
        w = torch.where(labels == ignore, 0.0, w.double())
        a = (s[b].T @ s[b]).clamp(EPS, 1 - EPS)
        m = (labels[:, None] == labels[None, :]).double()
        bce = -(m * torch.log(a) + (1 - m) * torch.log(1 - a))
        total = (w[:, None] * w[None, :] * bce).sum()
        out.append(total / w.sum() ** 2 if w.sum() > 0 else torch.zeros((), dtype=torch.float64))
    return torch.stack(out)


@pytest.mark.parametrize("method", ["explicit", "factorized"])
def test_tiny_case_by_hand(method):
    # p1 = (1/4, 3/4), p2 = (3/4, 1/4): A_12 = sqrt(3)/2, A_ii = 1 (clamped to 1 - 1e-6).
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]]]], dtype=torch.float64)
    a12 = math.sqrt(3.0) / 2
    diagonal = -math.log(1 - EPS)
    different = torch.tensor([[[0, 1]]])
    same = torch.tensor([[[1, 1]]])
    got = ar_loss(logits, different, scales=None, method=method, objective="bce")
    assert got.item() == pytest.approx((2 * diagonal - 2 * math.log(1 - a12)) / 4, rel=1e-12)
    got = ar_loss(logits, same, scales=None, method=method, objective="bce")
    assert got.item() == pytest.approx((2 * diagonal - 2 * math.log(a12)) / 4, rel=1e-12)
    one = ar_loss(logits, torch.tensor([[[1, 255]]]), scales=None, method=method, objective="bce")
    assert one.item() == pytest.approx(diagonal, rel=1e-9)  # only the diagonal pair remains


@pytest.mark.parametrize("kernel", ["sqrt", "linear"])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_the_independent_formulation_both_methods(monkeypatch, kernel, weighted):
    monkeypatch.setattr(functional, "BCE_BLOCK_ELEMENTS", 2 * 7 * 30)  # 7 rows per block
    gen = torch.Generator().manual_seed(20)
    logits = 2 * torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    target[0, :2] = 255
    weight = torch.rand(2, 5, 6, generator=gen, dtype=torch.float64) if weighted else None
    ref = reference_bce(logits, target, kernel=kernel, weight=weight)
    grads = []
    for method in ("explicit", "factorized"):
        x = logits.clone().requires_grad_(True)
        kw = {"scales": None, "kernel": kernel, "weight": weight, "objective": "bce"}
        per_image = ar_loss(x, target, method=method, reduction="none", **kw)
        torch.testing.assert_close(per_image, ref, rtol=1e-12, atol=1e-14)
        mean = ar_loss(x, target, method=method, **kw)
        assert mean.item() == pytest.approx(ref.mean().item(), rel=1e-12)
        total = ar_loss(x, target, method=method, reduction="sum", **kw)
        assert total.item() == pytest.approx(ref.sum().item(), rel=1e-12)
        (grad,) = torch.autograd.grad(mean, x)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def test_mse_stays_the_default_and_differs_from_bce():
    gen = torch.Generator().manual_seed(21)
    logits = torch.randn(2, 5, 16, 16, generator=gen)
    target = torch.randint(0, 5, (2, 64, 64), generator=gen)
    for method in ("explicit", "factorized"):
        default = ar_loss(logits, target, method=method)
        assert torch.equal(default, ar_loss(logits, target, method=method, objective="mse"))
        assert not torch.isclose(default, ar_loss(logits, target, method=method, objective="bce"))


@pytest.mark.parametrize("method", ["explicit", "factorized"])
def test_gradcheck(monkeypatch, method):
    monkeypatch.setattr(functional, "BCE_BLOCK_ELEMENTS", 2 * 5 * 12)  # 5 rows per block
    gen = torch.Generator().manual_seed(22)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4), generator=gen)
    target[0, 0] = 255
    weight = torch.rand(2, 3, 4, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: ar_loss(x, target, scales=None, method=method, objective="bce", weight=weight),
        (logits,),
        fast_mode=True,
    )


def test_blockwise_never_allocates_an_n_by_n_buffer(monkeypatch):
    n = 16 * 40
    monkeypatch.setattr(functional, "BCE_BLOCK_ELEMENTS", 80 * n)  # 80 rows: 8 blocks
    logits = torch.randn(1, 5, 16, 40, requires_grad=True)
    target = torch.randint(0, 5, (1, 16, 40))
    target[0, :3] = 255
    with LargestTensor() as mode:
        loss = ar_loss(logits, target, scales=None, method="factorized", objective="bce")
        loss.backward()
    assert mode.largest <= 80 * n  # row blocks and (B, C, N) buffers, never N x N
    with LargestTensor() as mode:
        reference = ar_loss(logits, target, scales=None, method="explicit", objective="bce")
    assert mode.largest >= n * n
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)


def test_auto_picks_explicit_up_to_1024_positions_then_blockwise(monkeypatch):
    calls = []
    original = functional._bce_sum

    def spy(*args, blockwise):
        calls.append(blockwise)
        return original(*args, blockwise=blockwise)

    monkeypatch.setattr(functional, "_bce_sum", spy)
    for size in ((32, 32), (25, 41)):
        logits, target = torch.randn(1, 3, *size), torch.randint(0, 3, (1, *size))
        ar_loss(logits, target, scales=None, objective="bce")
    assert calls == [False, True]


@pytest.mark.parametrize("method", ["explicit", "factorized"])
def test_ignore_empty_batches_and_low_precision(method):
    gen = torch.Generator().manual_seed(23)
    logits = torch.randn(2, 4, 12, 12, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 12, 12), generator=gen)
    target[0, :4] = 255
    kw = {"scales": None, "method": method, "objective": "bce"}
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ignored] = 40.0
    torch.testing.assert_close(ar_loss(other, target, **kw), ar_loss(logits, target, **kw))
    # no labelled pixel: 0, attached, zero gradients
    x = logits.clone().requires_grad_(True)
    value = ar_loss(x, torch.full_like(target, 255), **kw)
    value.backward()
    assert value.item() == 0 and value.requires_grad and torch.all(x.grad == 0)
    # extreme and bf16 logits: finite, float32
    for dtype, scale in ((torch.float32, 1e4), (torch.bfloat16, 1e4), (torch.bfloat16, 1.0)):
        x = (scale * logits).to(dtype).requires_grad_(True)
        value = ar_loss(x, target, **kw)
        value.backward()
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert torch.isfinite(x.grad).all()


def test_modules_take_the_objective():
    gen = torch.Generator().manual_seed(24)
    logits = torch.randn(2, 5, 12, 16, generator=gen)
    target = torch.randint(0, 5, (2, 48, 64), generator=gen)
    expected = ar_loss(logits, target, objective="bce")
    torch.testing.assert_close(ARLoss(objective="bce")(logits, target), expected)
    total, ce, ar = CEARLoss(lambda_ar=0.5, objective="bce")(logits, target)
    torch.testing.assert_close(ar, expected)
    torch.testing.assert_close(total, ce + 0.5 * expected)
    assert "objective='bce'" in repr(ARLoss(objective="bce"))
    assert "objective='mse'" in repr(CEARLoss())
    for call in (
        lambda: ARLoss(objective="l1"),
        lambda: CEARLoss(objective="l1"),
        lambda: ar_loss(logits, target, objective="l1"),
    ):
        with pytest.raises(ValueError, match="objective must be one of"):
            call()
