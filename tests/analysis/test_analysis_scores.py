"""Scores from stored counts (arseg.analysis.scores); IoU from confusions: test_analysis_stats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arseg.analysis.scores import mean_boundary_iou, mean_std


def test_mean_boundary_iou_and_mean_std():
    assert mean_boundary_iou(np.array([[[1, 0, 2], [2, 0, 4]]])) == 0.5
    assert math.isnan(mean_boundary_iou(None))
    assert math.isnan(mean_boundary_iou(np.zeros((2, 2, 3), dtype=np.int64)))
    assert mean_std([0.5, 0.6, 0.7]) == pytest.approx((0.6, 0.1))
    assert math.isnan(mean_std([0.5])[1])
    assert mean_std([0.5], one_value_std=0.0) == (0.5, 0.0)  # the study's table: "50.00 ± 0.00"
    with pytest.raises(ValueError):
        mean_std([])
