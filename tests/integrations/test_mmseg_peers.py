"""The peers arseg registers in mmseg (``ArsegRMILoss``, ``ArsegAAFLoss``, ``ArsegDiceLoss``) under
mmseg's calling conventions, with a stand-in registry, decode head and OHEM sampler (no mmseg needed)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arseg.losses import aaf_loss, dice_loss, rmi_loss

from .conftest import MODULE, FakeCrossEntropy, FakeHead, FakeRegistry


class MMSegLovasz(nn.Module):
    """A stand-in for one of mmseg's own losses, registered before arseg's."""


@pytest.fixture
def registry(registry):
    """The shared stand-in registry, holding one of mmseg's own losses before arseg's import."""
    registry.register_module(name="LovaszLoss", module=MMSegLovasz)
    return registry


def _batch(num_classes=5, ignore=255, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 8, 10, generator=gen, requires_grad=True)
    label = torch.randint(0, num_classes, (2, 1, 32, 40), generator=gen)
    label[0, :, :6] = ignore
    return logits, label


CE = {"type": "CrossEntropyLoss", "loss_weight": 1.0}
RMI = {"type": "ArsegRMILoss", "loss_weight": 0.5}
AAF = {"type": "ArsegAAFLoss", "loss_weight": 0.25, "sizes": [1, 2]}
DICE = {"type": "ArsegDiceLoss", "loss_weight": 0.75, "per_image": True}
PEERS = {
    "ArsegRMILoss": (RMI, rmi_loss, {}),
    "ArsegAAFLoss": (AAF, aaf_loss, {"sizes": (1, 2)}),
    "ArsegDiceLoss": (DICE, dice_loss, {"per_image": True}),
}


def test_import_registers_the_peers_mmseg_lacks_without_touching_its_own(registry):
    module = importlib.import_module(MODULE)
    assert registry.get("ArsegRMILoss") is module.ArsegRMILoss
    assert registry.get("ArsegAAFLoss") is module.ArsegAAFLoss
    assert registry.get("ArsegDiceLoss") is module.ArsegDiceLoss  # mmseg's DiceLoss differs
    assert registry.get("LovaszLoss") is MMSegLovasz  # mmseg's own name untouched
    assert "DiceLoss" not in registry.module_dict and "RMILoss" not in registry.module_dict
    module.register(registry)  # idempotent
    rmi, aaf, dice = registry.build(RMI), registry.build(AAF), registry.build(DICE)
    assert (rmi.loss_name, aaf.loss_name, dice.loss_name) == ("loss_rmi", "loss_aaf", "loss_dice")
    assert "bce_weight=0.5" in repr(rmi) and "sizes=(1, 2)" in repr(aaf)
    assert "smooth=1.0, per_image=True" in repr(dice)
    with pytest.raises(ValueError, match="smooth"):
        registry.build({"type": "ArsegDiceLoss", "smooth": -1.0})
    other = FakeRegistry()
    other.register_module(name="ArsegRMILoss", module=FakeCrossEntropy)
    with pytest.raises(KeyError, match="already holds"):
        module.register(other)


@pytest.mark.parametrize("name", PEERS)
def test_loss_by_feat_resizes_uses_the_heads_ignore_index_and_logs(registry, name):
    importlib.import_module(MODULE)
    cfg, fn, options = PEERS[name]
    logits, label = _batch(num_classes=7, ignore=7)  # decode_head.ignore_index=7, below 255
    head = FakeHead(registry, [CE, cfg], ignore_index=7)
    losses, _, resized = head.loss_by_feat(logits, label)
    key = registry.build(cfg).loss_name
    assert set(losses) == {"loss_ce", key}
    expected = cfg["loss_weight"] * fn(resized, label.squeeze(1), ignore_index=7, **options)
    torch.testing.assert_close(losses[key], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PEERS)
def test_logits_at_another_size_are_resized_to_the_labels(registry, name):
    importlib.import_module(MODULE)
    cfg, fn, options = PEERS[name]
    loss = registry.build({**cfg, "loss_weight": 1.0})
    logits, label = _batch(seed=1)
    up = F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss(logits, label), fn(up, label.squeeze(1), **options))
    corners = registry.build({**cfg, "loss_weight": 1.0, "align_corners": True})
    up = F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=True)
    torch.testing.assert_close(corners(logits, label), fn(up, label.squeeze(1), **options))


@pytest.mark.parametrize("name", PEERS)
def test_ohem_beside_ce_and_alone(registry, name):
    importlib.import_module(MODULE)
    cfg, fn, options = PEERS[name]
    logits, label = _batch(seed=2)
    # Beside CE: the peer's zero "none" map leaves the mining to CE.
    both = FakeHead(registry, [CE, cfg], min_kept=200)
    ce_only = FakeHead(registry, [CE], min_kept=200)
    losses, weight, resized = both.loss_by_feat(logits, label)
    _, ce_weight, _ = ce_only.loss_by_feat(logits, label)
    assert torch.equal(weight, ce_weight)
    # The kept pixels are the labelled ones; the others are dropped as ignore_index.
    dropped = torch.where(weight > 0, label.squeeze(1), 255)
    key = registry.build(cfg).loss_name
    expected = cfg["loss_weight"] * fn(resized, dropped, **options)
    torch.testing.assert_close(losses[key], expected)
    assert not torch.isclose(losses[key], cfg["loss_weight"] * fn(resized, label, **options))
    # Alone: the sampler runs (a (B, H, W) map, no IndexError).
    alone, weight, _ = FakeHead(registry, [cfg], min_kept=200).loss_by_feat(logits, label)
    assert weight.shape == label.squeeze(1).shape and torch.isfinite(alone[key])


@pytest.mark.parametrize("name", PEERS)
def test_calling_conventions_and_errors(registry, name):
    importlib.import_module(MODULE)
    cfg, fn, options = PEERS[name]
    loss = registry.build({**cfg, "loss_weight": 2.0})
    logits, label = _batch(seed=3)
    up = F.interpolate(logits, size=(32, 40), mode="bilinear", align_corners=False)
    per_image = fn(up, label, reduction="none", **options)
    torch.testing.assert_close(loss(up, label, reduction_override="sum"), 2 * per_image.sum())
    torch.testing.assert_close(loss(up, label, unknown_kwarg=1), 2 * fn(up, label, **options))
    none = loss(up, label, reduction_override="none")
    assert none.shape == label.squeeze(1).shape and torch.all(none == 0)
    with pytest.raises(ValueError, match="avg_factor"):
        loss(up, label, avg_factor=10.0)
    with pytest.raises(ValueError, match="0/1 pixel weights"):
        loss(up, label, weight=torch.full(label.squeeze(1).shape, 0.5))
    with pytest.raises(ValueError, match="reduction"):
        loss(up, label, reduction_override="avg")
    empty = loss(up, torch.full_like(label, 255))
    empty.backward()
    assert empty.item() == 0 and torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", ["ARLoss", *PEERS])
@pytest.mark.parametrize(
    ("value", "error"),
    [(float("nan"), ValueError), (-1.0, ValueError), ("0.1", TypeError), (None, TypeError)],
)
def test_a_loss_weight_that_is_no_finite_number_at_least_0_is_one_line(
    registry, name, value, error
):
    importlib.import_module(MODULE)
    with pytest.raises(error, match=r"^loss_weight must be a (finite )?number.*, got ") as info:
        registry.build({"type": name, "loss_weight": value})
    assert repr(value) in str(info.value) and "\n" not in str(info.value)
    loss = registry.build({"type": name, "loss_weight": 0})
    assert loss.loss_weight == 0.0
    with pytest.raises(error, match="loss_weight"):  # a hook that sets it is checked too
        loss.loss_weight = value


@pytest.mark.parametrize("name", ["ARLoss", *PEERS])
def test_a_loss_name_without_the_loss_prefix_is_refused(registry, name):
    """mmseg logs ``decode.rmi`` but trains only its ``loss`` keys: refused, not left out."""
    importlib.import_module(MODULE)
    for bad in ("rmi", "ar", ""):
        with pytest.raises(ValueError, match=r"^loss_name must start with 'loss_', mmseg's"):
            registry.build({"type": name, "loss_name": bad})
    assert registry.build({"type": name, "loss_name": "loss_mine"}).loss_name == "loss_mine"


def test_docstring_examples(registry):
    module = importlib.import_module(MODULE)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for cls in (module.ArsegRMILoss, module.ArsegAAFLoss, module.ArsegDiceLoss):
        for test in finder.find(cls, globs={"torch": torch, cls.__name__: cls}):
            runner.run(test)
    assert runner.tries > 0 and runner.failures == 0
