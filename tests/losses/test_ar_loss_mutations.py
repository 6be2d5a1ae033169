"""Claims a same-value comparison cannot see: which method ``auto`` ran, that the factorized
form never allocates an N x N buffer, and that low-precision logits give float32 values."""

from __future__ import annotations

import pytest
import torch

import arseg.losses.functional as functional
from arseg.losses import AUTO_EXPLICIT_MAX_POSITIONS, CEARLoss, ar_loss

from .conftest import LargestTensor


@pytest.mark.parametrize(("size", "expected"), [((32, 32), "explicit"), ((25, 41), "factorized")])
def test_auto_runs_explicit_up_to_1024_positions_and_factorized_above(monkeypatch, size, expected):
    assert AUTO_EXPLICIT_MAX_POSITIONS == 1024
    calls = {"explicit": 0, "factorized": 0}
    explicit, factorized = functional._explicit_sq_sum, functional.factorized_sq_sum

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(functional, "_explicit_sq_sum", count("explicit", explicit))
    monkeypatch.setattr(functional, "factorized_sq_sum", count("factorized", factorized))
    logits = torch.randn(1, 3, *size)  # scales=None: N = h * w = 1024 resp. 1025
    target = torch.randint(0, 3, (1, *size))
    ar_loss(logits, target, scales=None)
    assert calls == {
        "explicit": int(expected == "explicit"),
        "factorized": int(expected != "explicit"),
    }


@pytest.mark.parametrize("kernel", ["sqrt", "linear"])
def test_factorized_never_allocates_an_n_by_n_buffer(kernel):
    n = 64 * 64
    logits = torch.randn(1, 5, 64, 64, requires_grad=True)
    target = torch.randint(0, 5, (1, 64, 64))
    target[0, :3] = 255
    with LargestTensor() as mode:
        loss = ar_loss(logits, target, scales=None, method="factorized", kernel=kernel)
        loss.backward()
    assert mode.largest <= 2 * 5 * n  # (B, C, N) buffers at most, never (B, N, N) = 4096^2
    # the recorder sees the explicit method's matrices (it would see a factorized one too)
    with LargestTensor() as mode:
        ar_loss(logits.detach(), target, scales=None, method="explicit", kernel=kernel)
    assert mode.largest >= n * n


def test_cearloss_under_bf16_autocast_equals_float32_on_the_rounded_logits():
    """The README: CE and AR run in float32 inside, so the precision changes nothing else."""
    gen = torch.Generator().manual_seed(8)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    x = torch.randn(2, 3, 12, 16, generator=gen)
    target = torch.randint(0, 6, (2, 48, 64), generator=gen)  # CE resizes the logits by 4
    target[0, :10] = 255
    criterion = CEARLoss(lambda_ar=0.1, class_weight=[1.0, 2.0, 0.5, 1.0, 1.0, 3.0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = 8 * conv(x)
        assert logits.dtype == torch.bfloat16
        total, ce, ar = criterion(logits, target)
    ref_total, ref_ce, ref_ar = criterion(logits.detach().float(), target)
    # float32 rounding only (CE in bf16 would be off by ~1e-3 relative)
    for got, ref in ((total, ref_total), (ce, ref_ce), (ar, ref_ar)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    # ar_loss alone, both methods, under autocast
    for method in ("explicit", "factorized"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ar_loss(logits, target, method=method)
        ref = ar_loss(logits.detach().float(), target, method=method)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-8)
