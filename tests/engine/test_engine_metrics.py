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
