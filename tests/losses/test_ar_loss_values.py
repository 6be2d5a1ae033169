"""Known values, alignment across resolutions, reductions, ignore handling, numerics, layouts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import arseg
from arseg.losses import ar_loss

METHODS = ("explicit", "factorized")


def confident_logits(labels: torch.Tensor, num_classes: int, gap: float = 30.0) -> torch.Tensor:
    """Logits (B, C, h, w) whose argmax is ``labels`` (B, h, w), with the given gap."""
    safe = labels.clamp(0, num_classes - 1)
    return gap * F.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()


def block_labels(batch, blocks_h, blocks_w, block, num_classes, seed):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (batch, blocks_h, blocks_w), generator=gen)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def test_reexported_from_package():
    assert arseg.ar_loss is ar_loss
    for name in ("ARLoss", "CEARLoss", "CEARLossOutput", "label_affinity", "sqrt_affinity"):
        assert hasattr(arseg, name)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scales", [(12, 6), None, [(5, 7), 3]])
def test_confident_matching_logits_give_zero(method, scales):
    target = torch.randint(0, 5, (2, 24, 36))
    target[0, :4] = 255
    loss = ar_loss(confident_logits(target, 5), target, scales=scales, method=method)
    assert loss.item() < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_uniform_logits_give_fraction_of_different_pairs(method):
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 30, 40), generator=gen)
    target[1, 10:] = 255
    logits = torch.zeros(3, 4, 30, 40)  # uniform softmax: A = 1 everywhere
    per_image = ar_loss(logits, target, scales=None, method=method, reduction="none")
    for b in range(3):
        labels = target[b].flatten()
        labels = labels[labels != 255]
        different = (labels[:, None] != labels[None, :]).double().mean().item()
        assert per_image[b].item() == pytest.approx(different, rel=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_tiny_case_by_hand(method):
    # Two positions, two classes: p1 = (1/4, 3/4), p2 = (3/4, 1/4).
    # A_12 = 2 sqrt(3/16) = sqrt(3)/2, A_ii = 1.
    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[math.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    different = torch.tensor([[[0, 1]]])
    same = torch.tensor([[[1, 1]]])
    one_ignored = torch.tensor([[[1, 255]]])
    a12 = math.sqrt(3.0) / 2
    assert ar_loss(logits, different, scales=None, method=method).item() == pytest.approx(
        2 * a12**2 / 4, rel=1e-6
    )
    assert ar_loss(logits, same, scales=None, method=method).item() == pytest.approx(
        2 * (1 - a12) ** 2 / 4, rel=1e-5
    )
    # One valid position: only the diagonal pair, A_11 = M_11 = 1.
    assert ar_loss(logits, one_ignored, scales=None, method=method).item() == pytest.approx(
        0.0, abs=1e-7
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("scales", [(12, 6), [(7, 11), 5], None])
def test_low_resolution_logits_from_label_map_are_aligned(method, factor, scales):
    # Labels constant on 8x8 blocks; the 1/4 and 1/8 logits are derived by averaging the one-hot
    # map over each logit cell, so every logit cell is pure and pairs with a label inside it.
    target = block_labels(2, 12, 20, 8, 6, seed=factor)
    target[1, 16:40] = 255
    one_hot = F.one_hot(target.clamp(max=5), 6).permute(0, 3, 1, 2).float()
    logits = 30.0 * F.avg_pool2d(one_hot, factor)
    assert logits.shape[-2:] == (96 // factor, 160 // factor)
    assert ar_loss(logits, target, scales=scales, method=method).item() < 1e-10
    # Control: the same logits against labels shifted by one block are far from 0.
    shifted = torch.roll(target, shifts=8, dims=2)
    assert ar_loss(logits, shifted, scales=scales, method=method).item() > 1e-2


def test_reductions_and_images_without_valid_positions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 8, 8, generator=gen)
    target = torch.randint(0, 5, (3, 32, 32), generator=gen)
    target[1] = 255
    per_image = ar_loss(logits, target, reduction="none")
    assert per_image.shape == (3,) and per_image.dtype == torch.float32
    assert per_image[1].item() == 0.0 and per_image[0] > 0 and per_image[2] > 0
    torch.testing.assert_close(ar_loss(logits, target, reduction="sum"), per_image.sum())
    # "mean" skips the image that has no valid position.
    torch.testing.assert_close(ar_loss(logits, target), (per_image[0] + per_image[2]) / 2)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_batch_is_zero_with_zero_gradients(method, reduction):
    logits = (100 * torch.randn(2, 4, 6, 6)).requires_grad_(True)
    target = torch.full((2, 24, 24), 255)
    loss = ar_loss(logits, target, method=method, reduction=reduction)
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert logits.grad is not None
    assert torch.all(logits.grad == 0)


def test_ignored_pixels_do_not_influence_the_loss():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 4, 12, 12, generator=gen, requires_grad=True)
    target = torch.randint(0, 4, (1, 12, 12), generator=gen)
    target[0, :, :6] = 255
    loss = ar_loss(logits, target, scales=None)
    loss.backward()
    # Gradient vanishes exactly at ignored positions.
    assert torch.all(logits.grad[0, :, :, :6] == 0)
    assert logits.grad[0, :, :, 6:].abs().sum() > 0
    # And the value equals the loss over the valid half alone.
    half = ar_loss(logits[..., 6:].detach(), target[..., 6:], scales=None)
    torch.testing.assert_close(loss.detach(), half)


@pytest.mark.parametrize("method", METHODS)
def test_extreme_logits_float32_are_finite(method):
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 6, (2, 16, 16), generator=gen)
    predicted = torch.randint(0, 6, (2, 16, 16), generator=gen)
    logits = confident_logits(predicted, 6, gap=1e4).requires_grad_(True)
    loss = ar_loss(logits, target, scales=None, method=method)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # Hard predictions: A is the predicted-label affinity, the loss counts disagreeing pairs.
    p, t = predicted.flatten(1), target.flatten(1)
    disagree = ((p[:, :, None] == p[:, None, :]) != (t[:, :, None] == t[:, None, :])).double()
    assert loss.item() == pytest.approx(disagree.mean().item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scales", [(12, 6), None])
def test_low_precision_logits_under_autocast(dtype, scales):
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 7, 3, padding=1)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    target = torch.randint(0, 7, (2, 64, 64), generator=gen)
    with torch.autocast("cpu", dtype=dtype):
        logits = 20 * conv(x)
        assert logits.dtype == dtype
        loss = ar_loss(logits, target, scales=scales)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    # Same value as float32 computed from the rounded logits.
    torch.testing.assert_close(loss, ar_loss(logits.detach().float(), target, scales=scales))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_without_autocast(dtype):
    logits = (10 * torch.randn(2, 5, 8, 8)).to(dtype).requires_grad_(True)
    target = torch.randint(0, 5, (2, 8, 8))
    loss = ar_loss(logits, target, scales=None, method="factorized")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("scales", [(12, 6), None])
def test_channels_last_and_non_contiguous_inputs(scales):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 16, 24, generator=gen)
    target = torch.randint(0, 6, (2, 64, 96), generator=gen)
    ref = ar_loss(logits, target, scales=scales)
    torch.testing.assert_close(
        ar_loss(logits.to(memory_format=torch.channels_last), target, scales=scales), ref
    )
    wide = torch.randn(2, 6, 24, 16, generator=gen)
    wide[:] = logits.transpose(2, 3)
    strided_logits = wide.transpose(2, 3)  # non-contiguous view with the same values
    strided_target = target.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided_logits.is_contiguous() and not strided_target.is_contiguous()
    torch.testing.assert_close(ar_loss(strided_logits, strided_target, scales=scales), ref)
    # int32 / uint8 labels are accepted too.
    torch.testing.assert_close(ar_loss(logits, target.to(torch.uint8), scales=scales), ref)


def test_auto_matches_both_methods():
    logits = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    target = torch.randint(0, 3, (1, 40, 40))
    for scales in ((12, 6), None):  # N = 180 (explicit) and N = 1600 (factorized)
        auto = ar_loss(logits, target, scales=scales)
        torch.testing.assert_close(auto, ar_loss(logits, target, scales=scales, method="explicit"))


@pytest.mark.parametrize(
    ("logits", "target", "kwargs", "error", "match"),
    [
        (
            torch.randn(5, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {},
            ValueError,
            "4 dimensions",
        ),
        (
            torch.randn(1, 5, 4, 4),
            torch.zeros(4, 4, dtype=torch.long),
            {},
            ValueError,
            "3 dimensions",
        ),
        (
            torch.randn(2, 5, 4, 4),
            torch.zeros(3, 4, 4, dtype=torch.long),
            {},
            ValueError,
            "batch size",
        ),
        (torch.randn(1, 5, 4, 4), torch.zeros(1, 4, 4), {}, TypeError, "integer class labels"),
        (torch.randn(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), {}, TypeError, "integer"),
        (
            torch.zeros(1, 5, 4, 4, dtype=torch.long),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {},
            TypeError,
            "float16",
        ),
        (
            torch.randn(1, 5, 4, 4),
            torch.full((1, 4, 4), 5),
            {},
            ValueError,
            r"\[0, 4\].*found \[5\]",
        ),
        (torch.randn(1, 5, 4, 4), torch.full((1, 4, 4), -1), {}, ValueError, r"found \[-1\]"),
        (
            torch.randn(1, 5, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"scales": (12, 0)},
            ValueError,
            "positive",
        ),
        (
            torch.randn(1, 5, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"scales": -2},
            ValueError,
            "positive",
        ),
        (
            torch.randn(1, 5, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"reduction": "avg"},
            ValueError,
            "reduction",
        ),
        (
            torch.randn(1, 5, 4, 4),
            torch.zeros(1, 4, 4, dtype=torch.long),
            {"method": "gram"},
            ValueError,
            "method",
        ),
        ([[1.0]], torch.zeros(1, 4, 4, dtype=torch.long), {}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(logits, target, kwargs, error, match):
    with pytest.raises(error, match=match):
        ar_loss(logits, target, **kwargs)


def test_custom_ignore_index_and_negative_ignore():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0] = -1
    with pytest.raises(ValueError, match="ignore_index=255"):
        ar_loss(logits, target, scales=None)
    as_ignored = ar_loss(logits, target, scales=None, ignore_index=-1)
    torch.testing.assert_close(as_ignored, ar_loss(logits[..., 1:, :], target[:, 1:], scales=None))


def test_narrow_integer_targets_compare_ignore_index_as_int64():
    """255 does not fit int8 and -1 does not fit uint8: no wrap-around may make them 'ignored'."""
    logits = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"found \[-1\]"):
        ar_loss(logits, torch.full((1, 8, 8), -1, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"ignore_index=-1, found \[255\]"):
        ar_loss(logits, torch.full((1, 8, 8), 255, dtype=torch.uint8), ignore_index=-1)
    target = torch.randint(0, 3, (1, 8, 8))
    target[0, :3] = 255
    expected = ar_loss(logits, target, scales=None)
    torch.testing.assert_close(ar_loss(logits, target.to(torch.uint8), scales=None), expected)
    target[0, :3] = -1
    torch.testing.assert_close(
        ar_loss(logits, target.to(torch.int8), scales=None, ignore_index=-1), expected
    )


def test_logits_and_target_on_different_devices_is_a_clear_error():
    logits = torch.randn(1, 3, 4, 4, device="meta")
    with pytest.raises(ValueError, match="same device"):
        ar_loss(logits, torch.zeros(1, 4, 4, dtype=torch.long))


@pytest.mark.slow
@pytest.mark.parametrize(("scales", "method"), [((12, 6), "auto"), (None, "factorized")])
def test_torch_compile(scales, method):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 16, 16, generator=gen)
    target = torch.randint(0, 5, (2, 32, 32), generator=gen)
    target[0, :8] = 255
    compiled = torch.compile(ar_loss)
    x_eager = logits.clone().requires_grad_(True)
    x_comp = logits.clone().requires_grad_(True)
    eager = ar_loss(x_eager, target, scales=scales, method=method)
    got = compiled(x_comp, target, scales=scales, method=method)
    eager.backward()
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(x_comp.grad, x_eager.grad)
