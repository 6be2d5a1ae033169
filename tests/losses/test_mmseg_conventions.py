"""mmseg's loss-call conventions shared by ARLoss and the peers' mmseg wrappers."""

from __future__ import annotations

import pytest
import torch

from arseg.losses import ARLoss
from arseg.losses.mmseg_conventions import resolve_mmseg_call


def _call(pred, target, **changes):
    args = {
        "weight": None,
        "ignore_index": None,
        "default_ignore_index": 255,
        "reduction_override": None,
        "avg_factor": None,
        "no_avg_factor": "no per-pixel sum",
        **changes,
    }
    return resolve_mmseg_call("SomeLoss", pred, target, **args)


def test_the_calls_ignore_index_wins_and_only_none_gives_a_zero_map() -> None:
    pred, target = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randint(0, 3, (2, 1, 8, 10))
    assert _call(pred, target) == (255, None)
    assert _call(pred, target, ignore_index=-1, reduction_override="sum") == (-1, None)
    ignore, zeros = _call(pred, target, reduction_override="none")
    assert ignore == 255 and zeros.shape == (2, 8, 10) and zeros.dtype == torch.float64
    assert not zeros.any()


def test_bad_calls_are_one_line_naming_the_loss() -> None:
    pred, target = torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 8, 10))
    with pytest.raises(ValueError, match=r"SomeLoss takes no avg_factor \(no per-pixel sum\)"):
        _call(pred, target, avg_factor=4.0)
    with pytest.raises(ValueError, match="reduction_override must be None or one of"):
        _call(pred, target, reduction_override="avg")
    target[0, 0, 0] = 7  # checked in the zero-map branch too: OHEM never hides a bad label
    with pytest.raises(ValueError, match="target labels must be in"):
        _call(pred, target, reduction_override="none")
    with pytest.raises(ValueError, match="reduction_override must be None or one of"):
        ARLoss()(pred, target.clamp(max=2), reduction_override="avg")
