"""RMI (sigmoid variant): values by hand and by an independent float64 formulation (explicit
pooling windows, region vectors, the textbook posterior covariance with an explicit inverse and
an eigenvalue log-determinant); float32 against float64 where the textbook float32 form fails."""

from __future__ import annotations

import math

import pytest
import torch

from arseg.losses import RMILoss, rmi_loss

EPS = 5e-4


def max_pool(maps, size, stride):
    """(B, C, H, W) -> max over the size x size windows at stride = size, padding size // 2.

    Written as windows of a padded map (-inf padding, as max-pooling pads), reshaped.
    """
    if stride == 1:
        return maps
    assert size == stride  # the reference's own assertion
    pad = size // 2
    batch, classes, height, width = maps.shape
    out_h = (height + 2 * pad - size) // stride + 1
    out_w = (width + 2 * pad - size) // stride + 1
    padded = torch.full(
        (batch, classes, out_h * size + pad, out_w * size + pad), -math.inf, dtype=maps.dtype
    )
    rows, cols = min(height, out_h * size - pad), min(width, out_w * size - pad)
    padded[:, :, pad : pad + rows, pad : pad + cols] = maps[:, :, :rows, :cols]
    windows = padded[:, :, : out_h * size, : out_w * size]
    return windows.reshape(batch, classes, out_h, size, out_w, size).amax(dim=(3, 5))


def region_vectors(maps, radius):
    """(B, C, h, w) -> (B, C, radius^2, n): every radius x radius window as a column."""
    h, w = maps.shape[-2:]
    rows = []
    for dy in range(radius):
        for dx in range(radius):
            rows.append(maps[:, :, dy : dy + h - radius + 1, dx : dx + w - radius + 1].flatten(2))
    return torch.stack(rows, dim=2)


def reference_terms(logits, target, *, ignore=255, radius=3, pool=3, stride=3, eps=EPS):
    """Per image: (BCE sum over labelled pixels and classes, labelled pixels, RMI term)."""
    z = logits.double()
    classes = z.shape[1]
    valid = target != ignore
    safe = torch.where(valid, target, 0)
    if classes == 1:
        y = (safe == 1).unsqueeze(1).double()
    else:
        y = torch.nn.functional.one_hot(safe, classes).permute(0, 3, 1, 2).double()
    y = y * valid.unsqueeze(1)
    s = torch.sigmoid(z)
    bce = -(y * torch.log(s) + (1 - y) * torch.log(1 - s)) * valid.unsqueeze(1)
    probs = s * valid.unsqueeze(1) + 1e-6
    la = region_vectors(max_pool(y, pool, stride), radius)
    pr = region_vectors(max_pool(probs, pool, stride), radius)
    la = la - la.mean(dim=-1, keepdim=True)
    pr = pr - pr.mean(dim=-1, keepdim=True)
    eye = torch.eye(radius * radius, dtype=torch.float64)
    cross = la @ pr.transpose(-1, -2)
    sigma = la @ la.transpose(-1, -2) - cross @ torch.linalg.inv(
        pr @ pr.transpose(-1, -2) + eps * eye
    ) @ cross.transpose(-1, -2)
    logdet = torch.linalg.eigvalsh(sigma + eps * eye).log().sum(dim=-1)  # (B, C)
    rmi = (0.5 * logdet).sum(dim=1) / radius**2
    return bce.sum(dim=(1, 2, 3)), valid.sum(dim=(1, 2)).double(), rmi


def reference_rmi(logits, target, reduction="mean", bce_weight=0.5, **kw):
    bce, n, rmi = reference_terms(logits, target, **kw)
    keep = n > 0
    if reduction == "mean":
        return bce_weight * bce.sum() / n.sum() + (1 - bce_weight) * rmi[keep].mean()
    per_image = torch.where(keep, bce_weight * bce / n.clamp(min=1) + (1 - bce_weight) * rmi, 0)
    return per_image if reduction == "none" else per_image.sum()


def test_two_pixels_by_hand():
    # radius 1, no pooling: each class a 1-D variable over the 2 pixels. Logits 0: p = 1/2 at
    # both pixels (no variance), labels (0, 1): each class has var 1/2 (unnormalised), so
    # Sigma = 1/2 and the term is 0.5 log(1/2 + eps) per class; BCE = ln 2 per class & pixel.
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    got = rmi_loss(logits, target, radius=1, pool_stride=1).item()
    bce = 2 * math.log(2.0)
    rmi = 2 * 0.5 * math.log(0.5 + EPS)
    assert got == pytest.approx(0.5 * bce + 0.5 * rmi, rel=1e-6)
    # Predictions (a, b) at the two pixels for both classes: with d = a - b the centred values
    # are +-1/2 (labels) and +-d/2, Sigma = 1/2 - (d/2)^2 / (d^2/2 + eps) for class 0 and the
    # same for class 1 (the sign of the covariance squares away).
    a, b = 0.9, 0.2
    logits = torch.log(torch.tensor([a, b]) / (1 - torch.tensor([a, b]))).view(1, 1, 1, 2)
    logits = logits.expand(1, 2, 1, 2).contiguous()
    d = a - b
    sigma = 0.5 - (d / 2) ** 2 / (d * d / 2 + EPS)
    bce = -(math.log(a) + math.log(1 - b)) - (math.log(1 - a) + math.log(b))  # 2 pixels
    expected = 0.5 * bce / 2 + 0.5 * 2 * 0.5 * math.log(sigma + EPS)
    got = rmi_loss(logits, target, radius=1, pool_stride=1).item()
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kw",
    [{}, {"radius": 2, "pool_size": 2, "pool_stride": 2}, {"pool_stride": 1}, {"eps": 1e-3}],
)
def test_matches_the_independent_formulation(kw):
    gen = torch.Generator().manual_seed(11)
    logits = 2 * torch.randn(3, 3, 15, 16, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (3, 15, 16), generator=gen)
    target[0, :4] = 255
    target[2] = 255
    opts = {"radius": kw.get("radius", 3), "eps": kw.get("eps", EPS)}
    opts["pool"], opts["stride"] = kw.get("pool_size", 3), kw.get("pool_stride", 3)
    for reduction in ("mean", "none", "sum"):
        got = rmi_loss(logits, target, reduction=reduction, **kw)
        torch.testing.assert_close(got, reference_rmi(logits, target, reduction, **opts))


def float64_rounding_bound(*, classes, positions, radius=3, eps=EPS, bce_weight=0.5):
    """How far two float64 computations of the RMI part may differ by rounding alone (absolute).

    Each class and image gives ``0.5 log det`` of a regularised moment matrix J of size
    m = 2 radius^2 (arseg's joint Cholesky form; the reference's inverse, product and
    eigenvalues work on its d x d blocks, d < m). Factorising an m x m matrix in float64 has a
    backward error ||E|| <= m (m + 1) u ||J|| (u = 2^-53: the m pivots' accumulations of length
    m + 1), and a symmetric positive definite J moves its log det by at most
    m ||E|| / lambda_min(J) to first order. lambda_min(J) >= eps (the regulariser) and
    ||J|| <= trace J <= m (positions + eps) (centred values in [-1, 1]): the condition number is
    at most m positions / eps, about 1.4e5 here, which is why RMI's rounding is far above the
    few-ulp error of a plain sum (the BCE part's ~300-term sum adds ~3e-14, left out).
    The loss weights each log det by (1 - bce_weight) * 0.5 / radius^2, summed over the classes
    (the mean over images adds nothing), and two implementations each err by up to that.
    """
    u = torch.finfo(torch.float64).eps / 2
    m = 2 * radius * radius
    norm = m * (positions + eps)
    per_logdet = m * (m * (m + 1) * u * norm) / eps
    return 2 * (1 - bce_weight) * 0.5 / radius**2 * classes * per_logdet


def test_mean_pools_bce_over_the_batch_as_the_reference():
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 2, 12, 12, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 12, 12), generator=gen)
    same = rmi_loss(logits, target)
    assert same.item() == pytest.approx(rmi_loss(logits, target, reduction="none").mean().item())
    target[0, :6] = 255  # fewer labelled pixels in image 0: pooled mean != mean of the images
    pooled = rmi_loss(logits, target)
    # 12 x 12 pooled to 4 x 4: (4 - 3 + 1)^2 = 4 region positions per map. The bound is 1.1e-8;
    # measured: 9e-13 (Intel, MKL's AVX-512 path), 7e-12 (its SSE4.2 path), 9e-12 (an AMD
    # EPYC, where rel=1e-12 failed); the pooled and per-image BCE means differ by 1.2e-2.
    tol = float64_rounding_bound(classes=2, positions=4)
    assert pooled.item() == pytest.approx(reference_rmi(logits, target).item(), rel=0, abs=tol)
    assert pooled.item() != pytest.approx(rmi_loss(logits, target, reduction="none").mean().item())


def test_one_channel_is_the_foreground_map():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 12, 12), generator=gen)
    target[1, :3] = 255
    torch.testing.assert_close(rmi_loss(logits, target), reference_rmi(logits, target))
    with pytest.raises(ValueError, match="target labels"):
        rmi_loss(logits, torch.full((2, 12, 12), 2))


@pytest.mark.parametrize("gap", [0.0, 4.0, 12.0, 30.0])
def test_float32_matches_float64_where_the_textbook_float32_form_fails(gap):
    """Near-perfect predictions make Sigma a near-cancelling difference of large matrices."""
    gen = torch.Generator().manual_seed(14)
    target = torch.randint(0, 4, (2, 90, 90), generator=gen)
    target[0, :10] = 255
    onehot = torch.nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2)
    logits64 = torch.randn(2, 4, 90, 90, generator=gen, dtype=torch.float64) + gap * (
        2 * onehot - 1
    )
    logits32 = logits64.float().requires_grad_(True)
    logits64 = logits32.detach().double().requires_grad_(True)  # the same rounded inputs
    got = rmi_loss(logits32, target)
    ref = reference_rmi(logits64, target)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 2e-5 * max(1.0, abs(ref.item()))
    # gradients: float32 within float32 rounding of the float64 gradients
    (g32,) = torch.autograd.grad(got, logits32)
    (g64,) = torch.autograd.grad(ref, logits64)
    scale = g64.abs().max().item()
    assert (g32.double() - g64).abs().max().item() < 1e-3 * scale + 1e-9
    if gap >= 12:
        # the textbook formula in float32 is off by orders of magnitude more here
        _, _, rmi32 = reference_terms_float32(logits32.detach(), target)
        _, _, rmi64 = reference_terms(logits64.detach(), target)
        assert (rmi32.double() - rmi64).abs().max().item() > 1e-3


def test_a_perfect_prediction_on_a_large_map_against_its_closed_form():
    """Probabilities that are an affine function of the labels, P_c = a Y_c (centred), make
    Sigma = G - a^2 G (a^2 G + eps)^-1 G with G = Y_c Y_c^T: in G's eigenbasis
    log det(Sigma + eps I) = sum_g log(eps (1 + g / (a^2 g + eps))), exact from G's eigenvalues.

    Moments of ~10^3-10^4 here: float32 rounds them by more than eps, so the textbook form in
    float32 is far off (and in float64 it already loses ~1e-4 through its explicit inverse).
    """
    target = torch.zeros(1, 192, 256, dtype=torch.int64)
    target[:, :, 128:] = 1  # two half-planes, a straight boundary
    onehot = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2)
    logits = 20.0 * (2 * onehot - 1).float()  # sigmoid: 1 - 2e-9 rounds to 1 in float32
    probs = (torch.sigmoid(logits) + 1e-6).double()  # the float32 values the loss sees
    a = (probs.max() - probs.min()).item()
    labels = region_vectors(max_pool(onehot.double(), 3, 3), 3)
    labels = labels - labels.mean(dim=-1, keepdim=True)
    expected = 0.0
    for c in range(2):
        g = torch.linalg.eigvalsh(labels[0, c] @ labels[0, c].T).clamp(min=0)
        expected += 0.5 * torch.log(EPS * (1 + g / (a * a * g + EPS))).sum().item() / 9
    got = rmi_loss(logits, target, bce_weight=0.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6)
    _, _, rmi32 = reference_terms_float32(logits, target)
    assert abs(rmi32.sum().item() - expected) > 1e-2


def reference_terms_float32(logits, target, radius=3, eps=EPS):
    """The textbook Sigma (difference of products, explicit inverse) evaluated in float32."""
    valid = target != 255
    y = torch.nn.functional.one_hot(torch.where(valid, target, 0), logits.shape[1])
    y = y.permute(0, 3, 1, 2).float() * valid.unsqueeze(1)
    probs = torch.sigmoid(logits) * valid.unsqueeze(1) + 1e-6
    pool = torch.nn.functional.max_pool2d
    la = region_vectors(pool(y, 3, 3, 1), radius)
    pr = region_vectors(pool(probs, 3, 3, 1), radius)
    la, pr = la - la.mean(-1, keepdim=True), pr - pr.mean(-1, keepdim=True)
    eye = torch.eye(radius * radius)
    cross = la @ pr.transpose(-1, -2)
    sigma = la @ la.transpose(-1, -2) - cross @ torch.linalg.inv(
        pr @ pr.transpose(-1, -2) + eps * eye
    ) @ cross.transpose(-1, -2)
    logdet = torch.linalg.slogdet(sigma + eps * eye)[1]
    return None, None, (0.5 * logdet).sum(dim=1) / radius**2


def test_gradcheck():
    gen = torch.Generator().manual_seed(15)
    logits = torch.randn(2, 2, 12, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (2, 12, 12), generator=gen)
    target[0, :2] = 255
    assert torch.autograd.gradcheck(lambda x: rmi_loss(x, target), (logits,), fast_mode=True)


def test_too_small_after_pooling_and_bad_options():
    logits, target = torch.randn(1, 2, 6, 30), torch.randint(0, 2, (1, 6, 30))
    with pytest.raises(ValueError, match="after pooling"):
        rmi_loss(logits, target)  # 6 rows -> 2 pooled rows < radius 3
    assert torch.isfinite(rmi_loss(logits, target, radius=2))
    for kwargs, error in (
        ({"radius": 0}, ValueError),
        ({"radius": 2.0}, TypeError),
        ({"pool_stride": 0}, ValueError),
        ({"bce_weight": 1.5}, ValueError),
        ({"eps": 0.0}, ValueError),
        ({"eps": float("nan")}, ValueError),
    ):
        with pytest.raises(error):
            RMILoss(**kwargs)


def test_module_matches_function():
    logits, target = torch.randn(2, 3, 15, 15), torch.randint(0, 3, (2, 15, 15))
    module = RMILoss(radius=2, bce_weight=0.25, reduction="none")
    expected = rmi_loss(logits, target, radius=2, bce_weight=0.25, reduction="none")
    torch.testing.assert_close(module(logits, target), expected)
    assert "bce_weight=0.25" in repr(module)
