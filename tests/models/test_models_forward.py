"""Forward shapes, train/eval outputs, gradient flow; full-size and torch.compile runs are slow."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.models import SegmentationOutput, build_model, list_models

# small but odd input: exercises every ceil / align_corners path
H, W = 97, 129

# tiny options where they exist, so the default run stays fast on 2 cores
SMALL = {
    name: ({"decoder_channels": 16} if name.startswith("lwrefinenet") else {})
    for name in list_models()
}
AUX_STRIDES = {"aux": 8, "sub4": 16, "sub24": 8}


def _native(size: int, stride: int) -> int:
    return math.ceil(size / stride)


# one model per family by default (the deeper variants only stack more blocks, and their
# parameter counts are checked on the meta device); every other model in the slow run
FAST_EVAL = ("lwrefinenet18", "lwrefinenet_mbv2", "pspnet50", "icnet50")
EVAL_CASES = [
    name if name in FAST_EVAL else pytest.param(name, marks=pytest.mark.slow)
    for name in list_models()
]


@pytest.mark.parametrize("name", EVAL_CASES)
def test_eval_returns_native_resolution_logits(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **SMALL[name]).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, H, W))
    s = model.output_stride
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (1, 5, _native(H, s), _native(W, s))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["lwrefinenet18", "pspnet50", "icnet50"])
def test_train_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, **SMALL[name]).train()
    x = torch.randn(2, 3, 41, 57)
    out = model(x)
    assert isinstance(out, SegmentationOutput)
    s = model.output_stride
    assert out.logits.shape == (2, 4, _native(41, s), _native(57, s))
    assert set(out.aux) == set(model.aux_weights)
    for key, aux in out.aux.items():
        # aux logits are at their own stride (±1 from rounding in the cascades)
        assert aux.shape[:2] == (2, 4)
        assert abs(aux.shape[-1] - 57 / AUX_STRIDES[key]) <= 1.5, (key, aux.shape)
    target = torch.randint(0, 4, (2, 41, 57))
    loss = 0
    for key, logits in [("main", out.logits), *out.aux.items()]:
        up = torch.nn.functional.interpolate(logits, size=(41, 57), mode="bilinear")
        loss = loss + model.aux_weights.get(key, 1.0) * torch.nn.functional.cross_entropy(
            up, target
        )
    loss.backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert no_grad == []


def test_eval_output_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_model("icnet50", num_classes=3).eval()
    x = torch.randn(2, 3, 57, 73)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("lwrefinenet18", num_classes=3, decoder_channels=8)
    x = torch.randn(1, 3, 48, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(x).logits, model(x).logits
    assert not torch.allclose(c, d)  # Dropout(0.5) on layer3/layer4 features


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "classes", "size"),
    [
        ("lwrefinenet50", 40, (481, 641)),
        ("lwrefinenet101", 40, (481, 641)),
        ("lwrefinenet152", 40, (481, 641)),
        ("pspnet50", 40, (473, 633)),
        ("pspnet101", 40, (473, 633)),
        ("icnet50", 19, (1025, 2049)),
    ],
)
def test_full_size_forward(name, classes, size):
    model = build_model(name, num_classes=classes).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    s = model.output_stride
    assert logits.shape == (1, classes, _native(size[0], s), _native(size[1], s))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lwrefinenet18", "icnet50"])
def test_torch_compile_smoke(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **SMALL[name]).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
