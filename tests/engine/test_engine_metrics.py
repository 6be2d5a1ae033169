"""Metrics against a confusion matrix computed by hand; inference modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from arseg.engine.inference import predict_logits
from arseg.engine.metrics import SegmentationMetrics, confusion_matrix, scores_from_confusion


def test_scores_match_a_hand_computed_confusion_matrix():
    # 3 classes; class 2 is never predicted nor present in image 2; 255 = ignore.
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]], [[0, 1, 1, 1], [0, 0, 255, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]], [[0, 1, 0, 1], [1, 0, 2, 1]]])
    # rows = truth, cols = prediction, by hand:
    #  image 1: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    #  image 2: (0,0) (1,1) (1,0) (1,1) (0,1) (0,0) (1,1)
    hand = np.array([[[1, 1, 0], [0, 2, 0], [1, 0, 1]], [[2, 1, 0], [1, 3, 0], [0, 0, 0]]])
    assert np.array_equal(confusion_matrix(pred, target, 3).numpy(), hand)

    total = hand.sum(0)  # [[3,2,0],[1,5,0],[1,0,1]]
    iou = [3 / (5 + 5 - 3), 5 / (6 + 7 - 5), 1 / (2 + 1 - 1)]
    metric = SegmentationMetrics(3)
    metric.update(pred[:1], target[:1])
    metric.update(pred[1:], target[1:])
    scores = metric.compute()
    assert scores["iou"].tolist() == pytest.approx(iou)
    assert float(scores["miou"]) == pytest.approx(np.mean(iou))
    assert float(scores["pixel_acc"]) == pytest.approx(9 / 13)
    assert np.array_equal(metric.confmat.numpy(), total)  # the accumulated torchmetrics state


def test_absent_class_is_left_out_of_the_mean():
    cm = torch.tensor([[4, 0, 0], [0, 0, 0], [1, 0, 5]])
    s = scores_from_confusion(cm)
    assert torch.isnan(s["iou"][1])
    assert float(s["miou"]) == pytest.approx((4 / 5 + 5 / 6) / 2)


class _Pointwise(nn.Module):
    """2x2 average pooling then a 1x1 conv: output stride 2, flip-equivariant on even sizes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(nn.functional.avg_pool2d(x, 2))


def test_predict_logits_modes():
    model = _Pointwise().eval()
    x = torch.randn(2, 3, 20, 28)
    whole = predict_logits(model, x)
    assert whole.shape == (2, 4, 20, 28)
    expected = nn.functional.interpolate(
        model(x), size=(20, 28), mode="bilinear", align_corners=False
    )
    assert torch.allclose(whole, expected)
    # a window as large as the image is the whole image
    assert torch.allclose(predict_logits(model, x, mode="slide", window=(20, 28)), whole, atol=1e-6)
    # windows larger than the image: padded, then cropped back
    assert predict_logits(model, x, mode="slide", window=(32, 32)).shape == whole.shape
    slid = predict_logits(model, x, mode="slide", window=(12, 16), stride=(8, 8))
    assert slid.shape == whole.shape and torch.isfinite(slid).all()
    # multi-scale + flip returns log-probabilities (softmax sums to 1, logsumexp = 0)
    ms = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert torch.allclose(ms.logsumexp(1), torch.zeros(2, 20, 28), atol=1e-5)
    # flip alone on a flip-equivariant model with even sizes = the plain prediction
    fl = predict_logits(model, x, flip=True)
    assert torch.allclose(fl.softmax(1), whole.softmax(1), atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        predict_logits(model, x, mode="slide")
    # a step longer than the window would leave pixels no window covers (NaN logits)
    for stride in ((30, 8), (0, 8)):
        with pytest.raises(ValueError, match="stride must be between 1 and the window"):
            predict_logits(model, x, mode="slide", window=(12, 16), stride=stride)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        predict_logits(model, x[0])


# ---------------------------------------------------------------------------- Boundary IoU
def _labels(h: int, w: int, *boxes: tuple[int, int, int, int, int]) -> torch.Tensor:
    """(1, H, W) int64 zeros with the boxes (value, row0, row1, col0, col1; ends excluded)."""
    t = torch.zeros(1, h, w, dtype=torch.long)
    for value, r0, r1, c0, c1 in boxes:
        t[0, r0:r1, c0:c1] = value
    return t


def test_boundary_width_is_two_percent_of_the_diagonal():
    from arseg.engine.metrics import boundary_width

    assert boundary_width(360, 480) == 12  # 0.02 * 600
    assert boundary_width(64, 64) == 2  # 0.02 * 90.5 = 1.81
    assert boundary_width(10, 10) == 1  # 0.28 rounds to 0: at least one pixel
    assert boundary_width(1024, 2048) == 46
    with pytest.raises(ValueError, match="> 0"):
        boundary_width(10, 10, 0.0)


def test_boundary_iou_of_a_square_shifted_by_three_pixels():
    from arseg.engine.metrics import boundary_counts, boundary_iou_from_counts

    # 64 x 64 image: d = 2. Ground truth: a 20 x 20 square (rows/cols 20..39); prediction: the
    # same square 3 px to the right (cols 23..42).
    gt = _labels(64, 64, (1, 20, 40, 20, 40))
    pred = _labels(64, 64, (1, 20, 40, 23, 43))
    counts = boundary_counts(pred, gt, 2)
    # Square: each band is a ring 2 px wide, 20^2 - 16^2 = 144 pixels. They meet on the top and
    # bottom two rows over the 17 shared columns: 4 * 17 = 68 (each square's vertical sides lie
    # inside the other's interior).
    # Background: the ring 2 px outside each square (24^2 - 20^2 = 176) plus the 2 px frame of
    # the image (64^2 - 60^2 = 496) = 672 each; the outer rings share rows 18, 19, 40, 41 over
    # cols 21..41 (4 * 21 = 84), so I = 496 + 84 = 580 and U = 672 + 672 - 580 = 764.
    assert counts.tolist() == [[[580, 68], [764, 220]]]
    scores = boundary_iou_from_counts(counts)
    assert scores["iou"].tolist() == pytest.approx([580 / 764, 68 / 220])
    assert float(scores["boundary_iou"]) == pytest.approx((580 / 764 + 68 / 220) / 2)
    # stricter than the mask IoU of the square (an overlap of 20 x 17 = 340 px of 460)
    from arseg.engine.metrics import confusion_matrix, scores_from_confusion

    mask_iou = scores_from_confusion(confusion_matrix(pred, gt, 2)[0])["iou"]
    assert mask_iou[1].item() == pytest.approx(340 / 460)
    assert scores["iou"][1].item() < mask_iou[1].item()
    # an exact prediction scores 1 everywhere
    same = boundary_counts(gt, gt, 2)
    assert same[0, 0].tolist() == same[0, 1].tolist() == [672, 144]


def test_boundary_iou_of_a_thin_structure_is_its_mask_iou():
    from arseg.engine.metrics import boundary_counts

    # A pole 3 px wide (cols 10..12, rows 5..24) in a 64 x 64 image (d = 2): every pixel of it
    # is within 2 px of its contour, so its band is the whole pole (60 px). The prediction is
    # 2 px wide (cols 11..12): band 40 px, all inside the pole: I = 40, U = 60.
    gt = _labels(64, 64, (1, 5, 25, 10, 13))
    pred = _labels(64, 64, (1, 5, 25, 11, 13))
    counts = boundary_counts(pred, gt, 2)
    assert counts[0, :, 1].tolist() == [40, 60]
    # a 1 px pole predicted 1 px to the side shares no band pixel
    gt1 = _labels(64, 64, (1, 5, 25, 10, 11))
    pred1 = _labels(64, 64, (1, 5, 25, 11, 12))
    assert boundary_counts(pred1, gt1, 2)[0, :, 1].tolist() == [0, 40]


def test_boundary_iou_ignores_unlabelled_pixels():
    from arseg.engine.metrics import boundary_counts

    # The square of the shifted-square test with an ignored strip (cols 17..19, rows 15..44)
    # along its left side: ignored pixels do not erode it, so the band loses its left side
    # (cols 20, 21 over rows 22..37): 144 - 2 * 16 = 112 px.
    gt = _labels(64, 64, (1, 20, 40, 20, 40), (255, 15, 45, 17, 20))
    pred = gt.clone()
    pred[gt == 255] = 0
    counts = boundary_counts(pred, gt, 2)
    assert counts[0, :, 1].tolist() == [112, 112]
    # whatever is predicted on ignored pixels does not change a count
    other = pred.clone()
    other[gt == 255] = torch.randint(0, 2, (int((gt == 255).sum()),))
    assert torch.equal(boundary_counts(other, gt, 2), counts)
    # a class absent from ground truth and prediction has an empty union: NaN, left out
    from arseg.engine.metrics import boundary_iou_from_counts

    scores = boundary_iou_from_counts(boundary_counts(pred, gt, 3))
    assert torch.isnan(scores["iou"][2]) and float(scores["boundary_iou"]) == 1.0


def test_the_band_width_of_a_wide_image_comes_from_its_diagonal():
    """A 24 x 120 image at ratio 0.05: d = round(0.05 * 122.4) = 6, where its height alone would
    give 2 (0.05 * 33.9) and its width alone 8 (0.05 * 169.7)."""
    from arseg.engine.metrics import boundary_counts, boundary_width

    assert boundary_width(24, 120, 0.05) == 6
    # a square of side 20 (rows 2..21, cols 50..69): its band is a ring d px wide
    square = _labels(24, 120, (1, 2, 22, 50, 70))
    counts = boundary_counts(square, square, 2, ratio=0.05)
    assert counts[0, :, 1].tolist() == [20**2 - 8**2] * 2  # 336 px: d = 6
    # the same square in the same image turned upright: the same diagonal, the same band
    tall = _labels(120, 24, (1, 50, 70, 2, 22))
    assert boundary_counts(tall, tall, 2, ratio=0.05)[0, :, 1].tolist() == [336, 336]


def test_boundary_counts_match_the_reference_erosion():
    """Same band as Cheng et al.'s code: cv2.erode (3x3, d times) of the mask padded with one zero
    pixel, here with scipy's binary erosion (border value 1, like cv2's default)."""
    from scipy import ndimage

    from arseg.engine.metrics import boundary_counts, boundary_width

    rng = np.random.default_rng(0)
    # blobby label maps: upsampled random 6 x 8 grids of 4 classes, plus noise pixels
    coarse = rng.integers(0, 4, size=(2, 6, 8))
    maps = np.kron(coarse, np.ones((9, 9), dtype=np.int64))[:, :50, :70]
    noisy = maps.copy()
    flip = rng.random(noisy.shape) < 0.05
    noisy[flip] = rng.integers(0, 4, size=int(flip.sum()))
    d = boundary_width(50, 70, 0.05)
    assert d == 4

    def band(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        eroded = ndimage.binary_erosion(
            padded, structure=np.ones((3, 3)), iterations=d, border_value=1
        )
        return mask & ~eroded[1:-1, 1:-1]

    counts = boundary_counts(torch.from_numpy(noisy), torch.from_numpy(maps), 4, ratio=0.05)
    for i in range(2):
        for c in range(4):
            g, p = band(maps[i] == c), band(noisy[i] == c)
            assert counts[i, :, c].tolist() == [int((g & p).sum()), int((g | p).sum())]
