"""mmseg's loss-call conventions shared by ARLoss and the peers' mmseg wrappers."""

from __future__ import annotations

import pytest
import torch

from arseg.losses import ARLoss
from arseg.losses.mmseg_conventions import check_loss_name, check_loss_weight, resolve_mmseg_call


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


BAD_WEIGHTS = [
    (float("nan"), ValueError, "nan"),  # every forward would be NaN
    (float("inf"), ValueError, "inf"),
    (-1.0, ValueError, "-1.0"),  # the loss would become a reward
    ("0.1", TypeError, "'0.1'"),  # was silently taken as 0.1
    ("abc", TypeError, "'abc'"),
    (None, TypeError, "None"),
    (True, TypeError, "True"),
]


@pytest.mark.parametrize(("value", "error", "shown"), BAD_WEIGHTS)
def test_arloss_refuses_a_loss_weight_that_is_no_finite_number_at_least_0(value, error, shown):
    with pytest.raises(error, match=r"^loss_weight must be a (finite )?number") as info:
        ARLoss(loss_weight=value)
    assert shown in str(info.value) and "\n" not in str(info.value)
    criterion = ARLoss(loss_weight=0.5)
    with pytest.raises(error, match="loss_weight"):  # a hook setting it later is checked too
        criterion.loss_weight = value
    assert criterion.loss_weight == 0.5


def test_arloss_takes_any_finite_loss_weight_at_least_0() -> None:
    pred, target = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randint(0, 3, (2, 8, 10))
    base = ARLoss()(pred, target)
    for value in (0, 0.0, 2, 0.1):
        criterion = ARLoss(loss_weight=value)
        assert criterion.loss_weight == float(value) and type(criterion.loss_weight) is float
        torch.testing.assert_close(criterion(pred, target), value * base)
    criterion.loss_weight = 3  # as an mmseg hook that decays a weight would set it
    torch.testing.assert_close(criterion(pred, target), 3 * base)


@pytest.mark.parametrize("name", ["ar", "", "decode_ar", "Loss_ar", "ar_loss"])
def test_arloss_refuses_a_loss_name_mmseg_would_log_but_not_train(name) -> None:
    # mmseg logs decode.<loss_name> and sums only the keys holding "loss": with loss_name="ar"
    # the run would train CE alone under a log that shows the AR term.
    with pytest.raises(
        ValueError,
        match=r"^loss_name must start with 'loss_'.*without adding them to the training loss",
    ):
        ARLoss(loss_name=name)
    with pytest.raises(TypeError, match=r"^loss_name must be a string starting with 'loss_'"):
        ARLoss(loss_name=None)
    assert ARLoss(loss_name="loss_affinity").loss_name == "loss_affinity"


def test_one_place_checks_the_loss_weight_and_name() -> None:
    assert check_loss_weight(0.25) == 0.25 and check_loss_name("loss_x") == "loss_x"
    with pytest.raises(ValueError, match="loss_weight"):
        check_loss_weight(-0.5)
    with pytest.raises(ValueError, match="'x'"):
        check_loss_name("x")


def test_a_numpy_scalar_loss_weight_is_taken_as_before() -> None:
    # float(loss_weight) took them before the check; a hook may compute a weight with numpy
    import numpy as np

    for value in (np.float32(0.5), np.float64(0.5), np.int64(2)):
        assert check_loss_weight(value) == float(value)
        assert type(ARLoss(loss_weight=value).loss_weight) is float
    with pytest.raises(ValueError, match="loss_weight"):
        check_loss_weight(np.float32("nan"))
    with pytest.raises(TypeError, match="loss_weight"):
        check_loss_weight(np.bool_(True))
