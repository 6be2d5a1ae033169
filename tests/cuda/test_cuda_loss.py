"""The AR loss on CUDA: values and gradients equal to the CPU's, autocast, torch.compile, errors.

Tolerances (float32; TF32 is off in this folder, see conftest): the relative error
``||x - ref|| / ||ref||`` of a float32 value or gradient against the float64 CPU computation is
at most ``F32_TOL`` = 5e-5, on the CPU and on the GPU alike, and the GPU's float32 result is
within ``2 * F32_TOL`` of the CPU's float32 result. (Measured on the CPU, float32 lands at
4e-8 to 1.3e-6 of float64 for these cases, the factorized linear kernel at full resolution
being the worst; GPU reductions sum in another order, hence the margin.) float64 on the GPU
equals float64 on the CPU to 1e-10.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from arseg.losses import CEARLoss, ar_loss

from .conftest import on_cuda

F32_TOL = 5e-5
METHODS = ("explicit", "factorized")
KERNELS = ("sqrt", "linear")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    return float((got - ref).norm() / ref.norm().clamp(min=1e-300))


def _case(shape=(2, 19, 24, 32), label_size=(96, 128), seed=0):
    """float64 CPU logits (scale 3) and labels with 15 % ignored pixels and an ignored band."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, generator=gen, dtype=torch.float64)
    target = torch.randint(0, shape[1], (shape[0], *label_size), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.15] = 255
    target[-1, : label_size[0] // 5] = 255
    return logits, target


def _value_and_grad(logits, target, dtype, device, **kwargs):
    x = logits.to(device=device, dtype=dtype).requires_grad_(True)
    loss = ar_loss(x, target.to(device), reduction="none", **kwargs)
    weights = torch.linspace(1.0, 0.5, loss.numel(), dtype=loss.dtype, device=device)
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scales", [(12, 6), None, [(5, 7), 3]])
def test_values_and_gradients_equal_the_cpu(device, scales, method, kernel):
    logits, target = _case()
    kw = {"scales": scales, "method": method, "kernel": kernel}
    ref_value, ref_grad = _value_and_grad(logits, target, torch.float64, "cpu", **kw)
    cpu_value, cpu_grad = _value_and_grad(logits, target, torch.float32, "cpu", **kw)
    dev_value, dev_grad = _value_and_grad(logits, target, torch.float32, device, **kw)
    assert dev_value.device.type == device.type and dev_value.dtype == torch.float32
    assert rel_err(cpu_value, ref_value) <= F32_TOL and rel_err(cpu_grad, ref_grad) <= F32_TOL
    assert rel_err(dev_value, ref_value) <= F32_TOL, rel_err(dev_value, ref_value)
    assert rel_err(dev_grad, ref_grad) <= F32_TOL, rel_err(dev_grad, ref_grad)
    assert rel_err(dev_value, cpu_value) <= 2 * F32_TOL
    assert rel_err(dev_grad, cpu_grad) <= 2 * F32_TOL
    # float64 on the device: the same numbers as the CPU's float64
    dev64_value, dev64_grad = _value_and_grad(logits, target, torch.float64, device, **kw)
    assert rel_err(dev64_value, ref_value) <= 1e-10 and rel_err(dev64_grad, ref_grad) <= 1e-10


@pytest.mark.parametrize("kernel", KERNELS)
def test_full_resolution_factorized_at_scale(device, kernel):
    """N = 32768 positions a image (no N x N matrix): long reductions on the GPU."""
    logits, target = _case((2, 19, 128, 256), (512, 1024), seed=1)
    kw = {"scales": None, "method": "factorized", "kernel": kernel}
    ref_value, ref_grad = _value_and_grad(logits, target, torch.float64, "cpu", **kw)
    dev_value, dev_grad = _value_and_grad(logits, target, torch.float32, device, **kw)
    assert rel_err(dev_value, ref_value) <= F32_TOL, rel_err(dev_value, ref_value)
    assert rel_err(dev_grad, ref_grad) <= F32_TOL, rel_err(dev_grad, ref_grad)


def test_cearloss_equals_the_cpu_with_class_weights(device):
    logits, target = _case(seed=2)
    weight = torch.linspace(0.5, 2.0, 19).tolist()
    results = {}
    for where in ("cpu", device):
        crit = CEARLoss(lambda_ar=0.7, class_weight=weight).to(where)
        x = logits.float().to(where).requires_grad_(True)
        out = crit(x, target.to(where))
        (grad,) = torch.autograd.grad(out.total, x)
        results[torch.device(where).type] = (out.total, out.ce, out.ar, grad)
    cpu, dev = results["cpu"], results[device.type]
    for got, ref in zip(dev, cpu):
        assert rel_err(got, ref) <= 2 * F32_TOL


@pytest.mark.parametrize("scales", [(12, 6), None])
def test_channels_last_non_contiguous_and_narrow_targets(device, scales):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 6, 16, 24, generator=gen).to(device)
    target = torch.randint(0, 6, (2, 64, 96), generator=gen).to(device)
    target[0, :10] = 255
    ref = ar_loss(logits, target, scales=scales)
    cl = logits.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ar_loss(cl, target, scales=scales), ref, rtol=1e-5, atol=1e-7)
    strided = logits.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    torch.testing.assert_close(ar_loss(strided, target, scales=scales), ref, rtol=1e-5, atol=1e-7)
    for dtype in (torch.uint8, torch.int32):
        torch.testing.assert_close(ar_loss(logits, target.to(dtype), scales=scales), ref)


@pytest.mark.parametrize("method", METHODS)
def test_all_ignored_batch_is_zero_with_zero_gradients(device, method):
    logits = (100 * torch.randn(2, 4, 6, 6)).to(device).requires_grad_(True)
    target = torch.full((2, 24, 24), 255, device=device)
    loss = ar_loss(logits, target, method=method, scales=None)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("method", METHODS)
def test_extreme_logits_float32_are_finite(device, method):
    logits = torch.zeros(2, 4, 6, 6)
    logits[:, 0] = 1e4
    logits[1, 2, :3] = -1e4
    logits[1, 3, 3:] = 5e3
    logits = logits.to(device).requires_grad_(True)
    target = torch.randint(0, 4, (2, 12, 12), generator=torch.Generator().manual_seed(0))
    for kernel in KERNELS:
        loss = ar_loss(logits, target.to(device), scales=None, method=method, kernel=kernel)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and loss > 0 and torch.isfinite(grad).all()


# ------------------------------------------------------------------ autocast
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scales", [(12, 6), None])
def test_low_precision_logits_under_autocast(device, dtype, scales):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("CPU autocast: float16 convolutions are not what this test is about")
    gen = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 7, 3, padding=1).to(device)
    x = torch.randn(2, 3, 16, 16, generator=gen).to(device)
    target = torch.randint(0, 7, (2, 64, 64), generator=gen).to(device)
    target[1, :16] = 255
    with torch.autocast(device.type, dtype=dtype):
        logits = 20 * conv(x)
        assert logits.dtype == dtype
        loss = ar_loss(logits, target, scales=scales)
        total = CEARLoss(lambda_ar=0.5, scales=scales)(logits, target).total
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(total)
    (loss + total).backward()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
    # the value float32 gives on the rounded logits: the affinity part runs in float32
    torch.testing.assert_close(loss, ar_loss(logits.detach().float(), target, scales=scales))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_without_autocast(device, dtype):
    logits = (10 * torch.randn(2, 5, 8, 8)).to(device=device, dtype=dtype).requires_grad_(True)
    target = torch.randint(0, 5, (2, 8, 8), device=device)
    loss = ar_loss(logits, target, scales=None, method="factorized")
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad.float()).all()


# ------------------------------------------------------------------ errors
def test_bad_labels_eagerly_are_a_clear_value_error(device):
    logits = torch.randn(2, 5, 4, 4, device=device)
    target = torch.zeros(2, 8, 8, dtype=torch.long, device=device)
    for value, found in ((9, r"\[0, 4\].*found \[9\]"), (-1, r"found \[-1\]")):
        bad = target.clone()
        bad[1, 3, 4] = value
        with pytest.raises(ValueError, match=found):
            ar_loss(logits, bad)
    with pytest.raises(ValueError, match="finite and >= 0"):
        ar_loss(logits, target, weight=-torch.ones(2, 8, 8, device=device))
    if device.type == "cuda":
        with pytest.raises(ValueError, match="same device"):
            ar_loss(logits, target.cpu())
    # the device is still usable after the eager errors (no assert was triggered)
    assert torch.isfinite(ar_loss(logits, target))


# ------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize(
    ("scales", "method", "kernel"),
    [((12, 6), "explicit", "sqrt"), (None, "factorized", "linear")],
)
def test_torch_compile_fullgraph_equals_eager(device, scales, method, kernel):
    torch._dynamo.reset()
    logits, target = _case((2, 5, 16, 16), (32, 32), seed=6)
    logits, target = logits.float().to(device), target.to(device)
    compiled = torch.compile(ar_loss, fullgraph=True)  # a graph break raises
    x_eager = logits.clone().requires_grad_(True)
    x_comp = logits.clone().requires_grad_(True)
    kw = {"scales": scales, "method": method, "kernel": kernel}
    eager = ar_loss(x_eager, target, **kw)
    got = compiled(x_comp, target, **kw)
    eager.backward()
    got.backward()
    assert rel_err(got, eager) <= 2 * F32_TOL
    assert rel_err(x_comp.grad, x_eager.grad) <= 2 * F32_TOL


# A bad label under torch.compile is checked inside the graph (torch._assert_async). On CUDA
# that is a device-side assert, which leaves the process's CUDA context unusable: it runs in a
# child process. The child prints one line (OK / RAISED <type> <message>) and exits 0 / 3.
_COMPILED_BAD_LABEL = textwrap.dedent(
    """
    import sys, torch
    from arseg.losses import ar_loss
    device = sys.argv[1]
    compiled = torch.compile(ar_loss, fullgraph=True)
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 8, 8, generator=gen).to(device)
    target = torch.randint(0, 5, (2, 32, 32), generator=gen).to(device)
    good = compiled(logits, target).item()  # compiles; a valid batch passes the assert
    assert abs(good - ar_loss(logits, target).item()) < 1e-4, good
    print("GOOD", good, flush=True)
    bad = target.clone()
    bad[1, 3, 4] = 9
    try:
        value = compiled(logits, bad).item()  # .item() synchronises: the assert surfaces here
        if device == "cuda":
            torch.cuda.synchronize()
    except RuntimeError as err:
        print("RAISED", type(err).__name__, " ".join(str(err).split())[:500], flush=True)
        sys.exit(3)
    print("OK", value, flush=True)
    """
)


def test_bad_label_under_compile_is_an_in_graph_assert(device):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILED_BAD_LABEL, device.type],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    out = proc.stdout + proc.stderr
    assert "GOOD" in proc.stdout, out[-3000:]
    assert proc.returncode == 3, f"a bad label under compile did not raise:\n{out[-3000:]}"
    raised = next(line for line in proc.stdout.splitlines() if line.startswith("RAISED"))
    if on_cuda():
        # CUDA reports its own message, without arseg's ("device-side assert triggered")
        assert "device-side assert" in raised, raised
    else:
        assert "target labels must be in [0, 4]" in raised, raised
