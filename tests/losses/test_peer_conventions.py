"""The conventions every peer loss (Lovasz-softmax, RMI, AAF, Dice) shares with ``ar_loss``:
ignore handling, batches without labels, precision, targets, errors, docstring examples."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

import arseg
from arseg.losses import aaf_loss, dice_loss, lovasz_softmax_loss, rmi_loss

PEERS = {
    "lovasz": lovasz_softmax_loss,
    "lovasz_per_image": lambda x, t, **kw: lovasz_softmax_loss(x, t, per_image=True, **kw),
    "rmi": rmi_loss,
    "aaf": aaf_loss,
    "dice": dice_loss,
    "dice_per_image": lambda x, t, **kw: dice_loss(x, t, per_image=True, **kw),
}
SOFTMAX_PEERS = ("lovasz", "lovasz_per_image", "aaf", "dice", "dice_per_image")


def batch(seed=0, num_classes=4, size=(12, 15), dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(2, num_classes, *size, generator=gen, dtype=dtype)
    target = torch.randint(0, num_classes, (2, *size), generator=gen)
    target[0, :3] = 255
    target[1, 5:8, 4:9] = 255
    return logits, target


def test_exported_from_the_package():
    for name in ("lovasz_softmax_loss", "rmi_loss", "aaf_loss", "dice_loss"):
        assert getattr(arseg, name) is getattr(arseg.losses, name)
    for name in ("LovaszSoftmaxLoss", "RMILoss", "AAFLoss", "DiceLoss"):
        assert getattr(arseg, name) is getattr(arseg.losses, name)


@pytest.mark.parametrize("name", PEERS)
def test_an_ignored_pixel_changes_nothing(name):
    fn = PEERS[name]
    logits, target = batch(1, dtype=torch.float64)
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    other = logits.clone()
    other[ignored] = 50 * torch.randn(int(ignored.sum()), dtype=torch.float64)
    for reduction in ("mean", "none"):
        torch.testing.assert_close(
            fn(other, target, reduction=reduction),
            fn(logits, target, reduction=reduction),
            rtol=1e-13,
            atol=1e-13,
        )
    x = logits.clone().requires_grad_(True)
    fn(x, target).backward()
    assert torch.all(x.grad[ignored] == 0)
    assert x.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_batch_without_labels_gives_zero_attached_with_zero_grad(name, reduction):
    fn = PEERS[name]
    logits = torch.randn(2, 3, 12, 12, requires_grad=True)
    target = torch.full((2, 12, 12), 255)
    value = fn(logits, target, reduction=reduction)
    assert value.requires_grad and torch.all(value == 0)
    value.sum().backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", PEERS)
def test_extreme_logits_give_finite_values_and_grads(name):
    fn = PEERS[name]
    _, target = batch(2)
    gen = torch.Generator().manual_seed(2)
    logits = 1e4 * torch.randn(2, 4, 12, 15, generator=gen).sign()
    logits.requires_grad_(True)
    value = fn(logits, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_run_in_float32(name, dtype):
    fn = PEERS[name]
    logits, target = batch(3)
    low = logits.to(dtype).requires_grad_(True)
    value = fn(low, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, fn(low.detach().float(), target), rtol=1e-6, atol=1e-6)
    value.backward()
    assert low.grad.dtype == dtype and torch.isfinite(low.grad).all()
    extreme = torch.full_like(low, -1e4).requires_grad_(True)  # representable in both dtypes
    with torch.no_grad():
        extreme[:, 0] = 1e4
    out = fn(extreme, target)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(extreme.grad).all()


@pytest.mark.parametrize("name", PEERS)
def test_under_bf16_autocast_equals_float32_on_the_rounded_logits(name):
    fn = PEERS[name]
    gen = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 12, 15, generator=gen)
    _, target = batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = 4 * conv(x)
        assert logits.dtype == torch.bfloat16
        value = fn(logits, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, fn(logits.detach().float(), target), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", PEERS)
def test_target_forms(name):
    fn = PEERS[name]
    logits, target = batch(5)
    expected = fn(logits, target)
    torch.testing.assert_close(fn(logits, target.unsqueeze(1)), expected)
    torch.testing.assert_close(fn(logits, target.to(torch.uint8)), expected)
    torch.testing.assert_close(fn(logits.to(memory_format=torch.channels_last), target), expected)
    # another ignore value, below C
    relabelled = torch.where(target == 255, 3, target)
    logits3 = logits[:, :3]
    got = fn(logits3, relabelled.clamp(max=3), ignore_index=3)
    torch.testing.assert_close(got, fn(logits3, torch.where(relabelled == 3, 255, relabelled)))


@pytest.mark.parametrize("name", SOFTMAX_PEERS)
def test_one_channel_is_the_two_class_sigmoid_distribution(name):
    fn = PEERS[name]
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(2, 1, 12, 15, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 12, 15), generator=gen)
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    torch.testing.assert_close(fn(z, target), fn(two, target))


@pytest.mark.parametrize("name", PEERS)
def test_bad_inputs_are_one_line_errors(name):
    fn = PEERS[name]
    logits, target = batch(7)
    cases = [
        (lambda: fn(logits, target.float()), TypeError, "integer class labels"),
        (lambda: fn(logits[0], target), ValueError, "4 dimensions"),
        (lambda: fn(logits.long(), target), TypeError, "float16"),
        (lambda: fn(logits, target[:1]), ValueError, "batch size"),
        (lambda: fn(logits, torch.full_like(target, 4)), ValueError, r"\[0, 3\]"),
        (lambda: fn(logits, target, reduction="avg"), ValueError, "reduction"),
        (lambda: fn(logits, target, ignore_index=1.0), TypeError, "ignore_index"),
    ]
    if name != "aaf":  # AAF samples a target of another size at the logit cells (test_aaf)
        cases.append((lambda: fn(logits[:, :, :6], target), ValueError, "upsample"))
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("module", ["lovasz", "rmi", "aaf", "dice", "terms"])
def test_docstring_examples(module):
    result = doctest.testmod(
        importlib.import_module(f"arseg.losses.{module}"), optionflags=doctest.ELLIPSIS
    )
    assert result.attempted > 0 and result.failed == 0
