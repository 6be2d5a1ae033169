"""arseg.integrations.mmseg in a real mmsegmentation 1.x decode head (skipped without mmseg).

mmseg imports ``mmcv.ops`` unconditionally; with ``mmcv-lite`` (no compiled ops, the only mmcv
that installs where no build toolchain matches torch) a stand-in ``mmcv._ext`` lets it import.
The loss path below uses no compiled op.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import pytest
import torch

pytestmark = pytest.mark.slow  # importing mmseg takes tens of seconds


def _stub_missing_mmcv_ops() -> None:
    if importlib.util.find_spec("mmcv") is None or "mmcv._ext" in sys.modules:
        return
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        ext = types.ModuleType("mmcv._ext")

        def missing(name: str):
            if name.startswith("__"):
                raise AttributeError(name)

            def op(*args, **kwargs):
                raise RuntimeError(f"mmcv op {name} is not compiled in this environment")

            return op

        ext.__getattr__ = missing
        sys.modules["mmcv._ext"] = ext


@pytest.fixture(scope="module")
def mmseg():
    _stub_missing_mmcv_ops()
    try:
        importlib.import_module("mmseg.registry")
    except Exception as err:  # not installed, or an incompatible mmcv / mmengine
        pytest.skip(f"mmseg does not import here: {type(err).__name__}: {err}")
    importlib.import_module("arseg.integrations.mmseg")
    return sys.modules["mmseg"]


def _head(ignore_index: int, sampler: dict | None):
    from mmseg.registry import MODELS

    return MODELS.build(
        {
            "type": "FCNHead",
            "in_channels": 8,
            "channels": 8,
            "num_convs": 1,
            "num_classes": 5,
            "ignore_index": ignore_index,
            "sampler": sampler,
            "loss_decode": [
                {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0},
                {"type": "ARLoss", "loss_weight": 0.1},
            ],
        }
    )


def _samples(label):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    out = []
    for lab in label:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=lab.unsqueeze(0))
        out.append(sample)
    return out


def test_registered_and_used_by_a_real_decode_head(mmseg):
    from mmseg.registry import MODELS

    from arseg.losses import ARLoss, ar_loss

    assert MODELS.get("ARLoss") is ARLoss
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 32, 32), generator=gen)
    label[0, :4] = 7  # the head's ignore_index, not the loss's 255
    logits = torch.randn(2, 5, 8, 8, generator=gen, requires_grad=True)
    head = _head(7, None)
    losses = head.loss_by_feat(logits, _samples(label))
    assert {"loss_ce", "loss_ar", "acc_seg"} <= set(losses)
    up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(losses["loss_ar"], 0.1 * ar_loss(up, label, ignore_index=7))
    (losses["loss_ce"] + losses["loss_ar"]).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("with_ce", [True, False])
def test_ohem_sampler_with_ar(mmseg, with_ce):
    gen = torch.Generator().manual_seed(1)
    label = torch.randint(0, 5, (2, 32, 32), generator=gen)
    logits = torch.randn(2, 5, 8, 8, generator=gen, requires_grad=True)
    head = _head(255, {"type": "OHEMPixelSampler", "min_kept": 100})
    if not with_ce:
        head.loss_decode = torch.nn.ModuleList([head.loss_decode[1]])
    losses = head.loss_by_feat(logits, _samples(label))
    assert torch.isfinite(losses["loss_ar"]) and losses["loss_ar"] > 0


@pytest.mark.parametrize("name", ["ArsegRMILoss", "ArsegAAFLoss"])
def test_the_peers_in_a_real_decode_head_with_ohem(mmseg, name):
    from mmseg.registry import MODELS

    from arseg.losses import aaf_loss, rmi_loss

    fn, key = {"ArsegRMILoss": (rmi_loss, "loss_rmi"), "ArsegAAFLoss": (aaf_loss, "loss_aaf")}[name]
    assert MODELS.get(name) is not None and MODELS.get("LovaszLoss") is not MODELS.get(name)
    gen = torch.Generator().manual_seed(2)
    label = torch.randint(0, 5, (2, 32, 32), generator=gen)
    label[0, :4] = 7
    logits = torch.randn(2, 5, 8, 8, generator=gen, requires_grad=True)
    head = _head(7, None)
    head.loss_decode[1] = MODELS.build({"type": name, "loss_weight": 0.5})
    losses = head.loss_by_feat(logits, _samples(label))
    up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear")
    torch.testing.assert_close(losses[key], 0.5 * fn(up, label, ignore_index=7))
    (losses["loss_ce"] + losses[key]).backward()
    assert torch.isfinite(logits.grad).all()
    ohem = _head(255, {"type": "OHEMPixelSampler", "min_kept": 100})
    ohem.loss_decode[1] = MODELS.build({"type": name})
    losses = ohem.loss_by_feat(logits, _samples(label.clamp(max=4)))
    assert torch.isfinite(losses[key])


@pytest.mark.parametrize("name", ["ARLoss", "ArsegRMILoss", "ArsegAAFLoss"])
def test_mmseg_builds_refuse_a_bad_loss_weight_or_a_name_it_would_not_train(mmseg, name):
    from mmengine.model import BaseModel
    from mmseg.registry import MODELS

    for value, error in ((float("nan"), ValueError), (-1.0, ValueError), ("0.1", TypeError)):
        with pytest.raises(error, match=r"^loss_weight must be a (finite )?number"):
            MODELS.build({"type": name, "loss_weight": value})
    with pytest.raises(ValueError, match=r"^loss_name must start with 'loss_'"):
        MODELS.build({"type": name, "loss_name": "rmi"})
    # why: mmseg's total is the sum of the keys holding "loss"; decode.rmi would be left out
    ce, term = torch.tensor(1.0), torch.tensor(2.0)
    total, _ = BaseModel.parse_losses(None, {"decode.loss_ce": ce, "decode.rmi": term})
    assert total == ce
    total, _ = BaseModel.parse_losses(None, {"decode.loss_ce": ce, "decode.loss_rmi": term})
    assert total == ce + term


def _peer_batch(seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(3, 5, 8, 8, generator=gen, requires_grad=True)
    label = torch.randint(0, 5, (3, 32, 32), generator=gen)
    label[0, :6] = 7  # the head's ignore_index
    label[1][label[1] == 4] = 0  # a class absent from one image
    return logits, label


def _head_with(second: dict, ignore_index: int = 7):
    head = _head(ignore_index, None)
    from mmseg.registry import MODELS

    head.loss_decode[1] = MODELS.build(second)
    return head


def test_mmsegs_lovasz_loss_is_arsegs_lovasz_term(mmseg):
    """mmseg's own LovaszLoss, per batch, gives arseg's ``lovasz`` term (the arena's setting):
    softmax, the classes present, ignored pixels removed (the head's ignore_index reaches it)."""
    from arseg.losses import lovasz_softmax_loss

    logits, label = _peer_batch()
    up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear")
    # per_image=False needs reduction="none" (its default "mean" is refused for it)
    head = _head_with({"type": "LovaszLoss", "per_image": False, "reduction": "none"})
    losses = head.loss_by_feat(logits, _samples(label))
    torch.testing.assert_close(
        losses["loss_lovasz"], lovasz_softmax_loss(up, label, ignore_index=7)
    )
    # per image: the same while every image has labelled pixels
    head = _head_with({"type": "LovaszLoss", "per_image": True})
    losses = head.loss_by_feat(logits, _samples(label))
    expected = lovasz_softmax_loss(up, label, ignore_index=7, per_image=True)
    torch.testing.assert_close(losses["loss_lovasz"], expected)
    # where they differ: a batch without labelled pixels is an empty tensor there (NaN once
    # mmseg averages it for the log and the total), 0 with zero gradients here
    empty = torch.full_like(label, 7)
    mm = head.loss_decode[1].__class__(per_image=False, reduction="none")(up, empty, ignore_index=7)
    assert mm.numel() == 0 and torch.isnan(mm.mean())
    assert lovasz_softmax_loss(up, empty, ignore_index=7).item() == 0


def test_mmsegs_dice_loss_is_another_loss_arsegs_dice_is_registered(mmseg):
    """mmseg 1.2's DiceLoss pools all the classes of an image into one Dice and keeps the
    ignored pixels in its sums: with softmax, linear denominators and eps = 1 it is
    1 - mean over images of (2 sum p_true + 1) / (pixels + labelled + 1), not arseg's mean
    Dice over the classes present; ArsegDiceLoss is."""
    from arseg.losses import dice_loss

    logits, label = _peer_batch()
    up = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear").detach()
    cfg = {"type": "DiceLoss", "use_sigmoid": False, "naive_dice": True, "eps": 1.0}
    mm = _head_with(cfg).loss_by_feat(logits, _samples(label))["loss_dice"]
    p = up.softmax(dim=1)
    labelled = label != 7
    p_true = p.gather(1, label.clamp(max=4).unsqueeze(1)).squeeze(1) * labelled
    pooled = (2 * p_true.sum((1, 2)) + 1) / (32 * 32 + labelled.sum((1, 2)) + 1)
    torch.testing.assert_close(mm, 1 - pooled.mean())
    # A rare class the network misses: arseg's Dice counts it as one class of two, the pooled
    # Dice by its pixels. 10 % class 1, predicted class 0 everywhere (p = 0.99):
    rare = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    rare[..., :1, :] = 1
    confident = torch.zeros(1, 2, 10, 10)
    confident[:, 0] = math.log(99.0)
    pooled_loss = mmseg.registry.MODELS.build(cfg)(confident, rare.squeeze(1))
    ours = dice_loss(confident, rare)
    # pooled: 1 - (2 * (90 * 0.99 + 10 * 0.01) + 1) / (100 + 100 + 1) = 0.107; arseg: class 0's
    # Dice (2 * 89.1 + 1) / (99 + 90 + 1) = 0.943, class 1's (2 * 0.1 + 1) / (1 + 10 + 1) = 0.1
    torch.testing.assert_close(pooled_loss, torch.tensor(1 - 179.4 / 201))
    torch.testing.assert_close(ours, torch.tensor(1 - (179.2 / 190 + 1.2 / 12) / 2))
    for default in ({"type": "DiceLoss"}, {**cfg, "naive_dice": False}):  # sigmoid; squares
        other = mmseg.registry.MODELS.build(default)(confident, rare.squeeze(1))
        assert abs(other.item() - ours.item()) > 0.1
    # the registered wrapper is arseg's term, under mmseg's call
    for per_image in (False, True):
        cfg = {"type": "ArsegDiceLoss", "per_image": per_image}
        ours = _head_with(cfg).loss_by_feat(logits, _samples(label))["loss_dice"]
        torch.testing.assert_close(ours, dice_loss(up, label, ignore_index=7, per_image=per_image))
