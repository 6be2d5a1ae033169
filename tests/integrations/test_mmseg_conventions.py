"""arseg.integrations.mmseg against mmsegmentation 1.x's calling conventions, without mmseg.

A minimal stand-in registry replaces ``mmseg.registry``; a stand-in decode head calls its losses
the way mmseg's ``BaseDecodeHead.loss_by_feat`` does (logits resized to the label size, each loss
called with ``weight=seg_weight, ignore_index=head.ignore_index``, results summed per
``loss_name``) and a stand-in OHEM sampler the way ``OHEMPixelSampler.sample`` does (without
``thresh``: every loss called with ``weight=None, reduction_override="none"``, the summed
(B, H, W) maps ranked over the labelled pixels, the top ``min_kept`` per image kept).
"""

from __future__ import annotations

import ast
import importlib
import pprint
import sys

import pytest
import torch

from arseg.losses import ARLoss, ar_loss

from .conftest import MODULE, FakeCrossEntropy, FakeHead, FakeRegistry


def _batch(num_classes=6, ignore=255, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 8, 10, generator=gen, requires_grad=True)
    label = torch.randint(0, num_classes, (2, 1, 32, 40), generator=gen)
    label[0, :, :6] = ignore
    return logits, label


CE = {"type": "CrossEntropyLoss", "loss_weight": 1.0}
AR = {"type": "ARLoss", "loss_weight": 0.1}


def test_import_registers_arloss_for_custom_imports(registry):
    # mmengine's custom_imports does importlib.import_module on each name.
    module = importlib.import_module(MODULE)
    assert registry.get("ARLoss") is ARLoss
    loss = registry.build({"type": "ARLoss", "loss_weight": 0.1, "scales": [12, 6]})
    assert isinstance(loss, ARLoss) and loss.loss_name == "loss_ar"
    module.register(registry)  # idempotent
    assert "CEARLoss" not in registry.module_dict  # returns a tuple: no mmseg loss
    other = FakeRegistry()
    other.register_module(name="ARLoss", module=FakeCrossEntropy)
    with pytest.raises(KeyError, match="already holds"):
        module.register(other)


def test_clear_one_line_error_without_mmseg(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmseg", None)  # import mmseg -> ImportError
    monkeypatch.setitem(sys.modules, "mmseg.registry", None)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with pytest.raises(ImportError, match="needs mmsegmentation") as info:
        importlib.import_module(MODULE)
    message = str(info.value)
    assert "pip install mmsegmentation" in message and "\n" not in message
    sys.modules.pop(MODULE, None)


def test_loss_by_feat_uses_the_heads_ignore_index_and_logs_loss_ar(registry):
    importlib.import_module(MODULE)
    logits, label = _batch(num_classes=11, ignore=11)  # decode_head.ignore_index=11
    head = FakeHead(registry, [CE, AR], ignore_index=11)
    losses, _, resized = head.loss_by_feat(logits, label)
    assert set(losses) == {"loss_ce", "loss_ar"}
    expected = 0.1 * ar_loss(resized, label.squeeze(1), ignore_index=11)
    torch.testing.assert_close(losses["loss_ar"], expected)
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_ohem_with_ar_alone_and_beside_ce(registry):
    importlib.import_module(MODULE)
    logits, label = _batch(seed=1)
    # AR alone: the sampler gets a (B, H, W) map (mmseg indexed a scalar before: IndexError).
    alone = FakeHead(registry, [AR], min_kept=50)
    losses, weight, resized = alone.loss_by_feat(logits, label)
    assert weight.shape == label.squeeze(1).shape
    assert int(weight.sum()) == 100  # min_kept per image, from the labelled pixels
    assert torch.all(weight[label.squeeze(1) == 255] == 0)
    expected = 0.1 * ar_loss(resized, label.squeeze(1), weight=weight)
    torch.testing.assert_close(losses["loss_ar"], expected)
    assert not torch.isclose(losses["loss_ar"], 0.1 * ar_loss(resized, label.squeeze(1)))
    # Beside CE: AR takes no part in the mining, the kept pixels are CE's own choice.
    both = FakeHead(registry, [CE, AR], min_kept=50)
    ce_only = FakeHead(registry, [CE], min_kept=50)
    _, w_both, _ = both.loss_by_feat(logits, label)
    _, w_ce, _ = ce_only.loss_by_feat(logits, label)
    assert torch.equal(w_both, w_ce)


def test_config_dict_dumps_and_reloads(registry, tmp_path):
    importlib.import_module(MODULE)
    cfg = {
        "custom_imports": {"imports": [MODULE], "allow_failed_imports": False},
        "model": {
            "decode_head": {
                "loss_decode": [
                    CE,
                    {
                        "type": "ARLoss",
                        "loss_weight": 0.1,
                        "scales": [12, 6],
                        "kernel": "linear",
                        "ignore_index": 255,
                    },
                ]
            }
        },
    }
    path = tmp_path / "cfg.py"
    path.write_text(f"cfg = {pprint.pformat(cfg)}\n")  # a Python config file, as mmengine dumps
    tree = ast.parse(path.read_text())
    reloaded = ast.literal_eval(tree.body[0].value)
    assert reloaded == cfg
    ar = registry.build(reloaded["model"]["decode_head"]["loss_decode"][1])
    assert (ar.kernel, ar.loss_weight, ar.scales) == ("linear", 0.1, [12, 6])
    logits, label = _batch(seed=2)
    torch.testing.assert_close(
        ar(logits, label.squeeze(1)), 0.1 * ar_loss(logits, label.squeeze(1), kernel="linear")
    )


def test_mmengine_config_round_trip(registry, tmp_path):
    config = pytest.importorskip("mmengine.config", reason="mmengine is not installed")
    importlib.import_module(MODULE)
    cfg = config.Config(
        {
            "custom_imports": {"imports": [MODULE], "allow_failed_imports": False},
            "loss_decode": [CE, {"type": "ARLoss", "loss_weight": 0.1, "scales": [12, 6]}],
        }
    )
    cfg.dump(tmp_path / "cfg.py")
    again = config.Config.fromfile(tmp_path / "cfg.py")
    assert again.loss_decode[1].to_dict() == cfg.loss_decode[1].to_dict()
    assert isinstance(registry.build(dict(again.loss_decode[1])), ARLoss)
