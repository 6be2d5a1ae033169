"""The ``kernel`` option: ``"sqrt"`` (the paper, A = sqrt(P)^T sqrt(P)) vs ``"linear"`` (P^T P)."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.losses import ARLoss, CEARLoss, ar_loss, label_affinity, prediction_affinity
from arseg.losses.affinity import sqrt_affinity

KERNELS = ("sqrt", "linear")


def _case(seed: int, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(2, 5, 7, 9, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 14, 18), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    target[1, :, :4] = 255
    return logits, target


def _definition(logits, target, scales, kernel):
    """Per-image mean over valid pairs of (A - M)^2, from the explicit matrices."""
    m, valid = label_affinity(target, scales=scales, size=tuple(logits.shape[-2:]))
    a = prediction_affinity(logits, scales=scales, kernel=kernel)
    pair = (valid.unsqueeze(1) & valid.unsqueeze(2)).to(a.dtype)
    return ((a - m.to(a.dtype)) ** 2 * pair).sum((1, 2)) / pair.sum((1, 2)).clamp(min=1)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scales", [None, (12, 6), [(3, 5), 2]])
@pytest.mark.parametrize("seed", [0, 1])
def test_factorized_equals_explicit_float64_with_gradients(kernel, scales, seed):
    logits, target = _case(seed)
    values, grads = {}, {}
    for method in ("explicit", "factorized"):
        x = logits.clone().requires_grad_(True)
        loss = ar_loss(x, target, scales=scales, method=method, kernel=kernel, reduction="none")
        (grads[method],) = torch.autograd.grad((loss * torch.tensor([1.0, 0.7])).sum(), x)
        values[method] = loss.detach()
    torch.testing.assert_close(values["factorized"], values["explicit"], rtol=0, atol=1e-12)
    torch.testing.assert_close(grads["factorized"], grads["explicit"], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        values["explicit"], _definition(logits, target, scales, kernel), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", ["explicit", "factorized"])
def test_gradcheck(kernel, method):
    logits, target = _case(2, scale=1.5)
    x = logits[:, :3, :2, :3].clone().requires_grad_(True)
    t = target[:, :4, :6].clamp(max=2)  # labels 0..2 and 255 kept ignored
    t[target[:, :4, :6] == 255] = 255
    assert torch.autograd.gradcheck(
        lambda z: ar_loss(z, t, scales=None, method=method, kernel=kernel, reduction="sum"), (x,)
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", ["explicit", "factorized"])
def test_extreme_logits_float32_are_finite(kernel, method):
    logits = torch.zeros(2, 4, 6, 6)
    logits[:, 0] = 1e4  # softmax underflows to exactly 0 in the other classes
    logits[1, 2, :3] = -1e4
    logits[1, 3, 3:] = 5e3
    logits.requires_grad_(True)
    target = torch.randint(0, 4, (2, 12, 12), generator=torch.Generator().manual_seed(0))
    loss = ar_loss(logits, target, scales=None, method=method, kernel=kernel)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(logits.grad).all()


def test_tiny_case_by_hand_linear_differs_from_sqrt():
    # Two positions, both labelled 0 (M = all ones); p_0 = (3/4, 1/4), p_1 = (1/2, 1/2).
    logits = torch.tensor([[[[math.log(3.0), 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    target = torch.zeros(1, 1, 2, dtype=torch.int64)
    # linear: A = [[5/8, 1/2], [1/2, 1/2]] -> ((3/8)^2 + 2 (1/2)^2 + (1/2)^2) / 4
    linear = ((3 / 8) ** 2 + 2 * 0.25 + 0.25) / 4
    # sqrt: A_00 = A_11 = 1, A_01 = sqrt(3/8) + sqrt(1/8) -> 2 (1 - A_01)^2 / 4
    sqrt = 2 * (1 - math.sqrt(3 / 8) - math.sqrt(1 / 8)) ** 2 / 4
    for method in ("explicit", "factorized"):
        for kernel, expected in (("linear", linear), ("sqrt", sqrt)):
            got = ar_loss(logits, target, scales=None, method=method, kernel=kernel)
            assert got.item() == pytest.approx(expected, rel=1e-12, abs=0)
    assert linear > 100 * sqrt
    a = prediction_affinity(logits, scales=None, kernel="linear")[0]
    torch.testing.assert_close(a, torch.tensor([[5 / 8, 0.5], [0.5, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(
        prediction_affinity(logits, scales=None), sqrt_affinity(logits, scales=None)
    )


def test_modules_pass_the_kernel_and_default_is_sqrt():
    logits, target = _case(3)
    for kernel in KERNELS:
        expected = ar_loss(logits, target, kernel=kernel)
        assert ARLoss(kernel=kernel)(logits, target).item() == pytest.approx(expected.item())
        total, ce, ar = CEARLoss(lambda_ar=0.5, kernel=kernel)(logits, target)
        assert ar.item() == pytest.approx(expected.item())
        assert total.item() == pytest.approx((ce + 0.5 * expected).item())
        assert "kernel" in repr(ARLoss(kernel=kernel)) and kernel in repr(CEARLoss(kernel=kernel))
    assert ar_loss(logits, target).item() == ar_loss(logits, target, kernel="sqrt").item()
    assert ARLoss().kernel == CEARLoss().kernel == "sqrt"


@pytest.mark.parametrize("bad", ["Linear", "rbf", None, 1])
def test_unknown_kernel_is_a_clear_error(bad):
    logits, target = _case(4)
    for call in (
        lambda: ar_loss(logits, target, kernel=bad),
        lambda: ARLoss(kernel=bad),
        lambda: CEARLoss(kernel=bad),
        lambda: prediction_affinity(logits, kernel=bad),
    ):
        with pytest.raises(ValueError, match="kernel must be one of"):
            call()


def test_config_key_loss_kernel_validated():
    pytest.importorskip("yaml")
    from arseg.engine.config import ConfigError, load_config

    assert load_config(None, [])["loss"]["kernel"] == "sqrt"
    assert load_config(None, ["loss.kernel=linear"])["loss"]["kernel"] == "linear"
    for bad in ("cosine", "null", "1"):
        with pytest.raises(ConfigError, match=r"loss\.kernel"):
            load_config(None, [f"loss.kernel={bad}"])


def test_config_key_loss_kernel_reaches_the_criterion():
    pytest.importorskip("lightning")
    from arseg.engine.config import load_config
    from arseg.engine.module import SegmentationModule

    cfg = load_config(
        None,
        [
            "loss.kernel=linear",
            "model.name=lwrefinenet_mbv2",
            "model.num_classes=3",
            "model.options.decoder_channels=8",
        ],
    )
    module = SegmentationModule(cfg)
    assert module.terms["ar"].options["kernel"] == "linear"
    logits, target = _case(5)
    logits, target = logits[:, :3].float(), target.clamp(max=2)
    expected = ar_loss(logits, target, kernel="linear")
    assert module._ar(logits, target).item() == pytest.approx(expected.item())
