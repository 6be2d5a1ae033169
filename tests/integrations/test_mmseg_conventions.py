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
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arseg.losses import ARLoss, ar_loss

MODULE = "arseg.integrations.mmseg"


class FakeRegistry:
    """The part of mmengine's ``Registry`` that registration and ``build`` use."""

    def __init__(self) -> None:
        self.module_dict: dict[str, type] = {}

    def get(self, name: str):
        return self.module_dict.get(name)

    def register_module(self, name=None, force=False, module=None):
        if name in self.module_dict and not force:
            raise KeyError(f"{name} is already registered")
        self.module_dict[name] = module
        return module

    def build(self, cfg: dict):
        cfg = dict(cfg)
        return self.module_dict[cfg.pop("type")](**cfg)


class FakeCrossEntropy(nn.Module):
    """mmseg's ``CrossEntropyLoss`` signature: per-pixel CE, weighted, mean over all pixels."""

    def __init__(self, loss_weight: float = 1.0, loss_name: str = "loss_ce") -> None:
        super().__init__()
        self.loss_weight, self.loss_name = loss_weight, loss_name

    def forward(self, pred, target, weight=None, ignore_index=-100, reduction_override=None, **kw):
        loss = F.cross_entropy(pred, target, ignore_index=ignore_index, reduction="none")
        if weight is not None:
            loss = loss * weight
        if reduction_override == "none":
            return self.loss_weight * loss
        return self.loss_weight * loss.mean()


@pytest.fixture
def registry(monkeypatch):
    """A fresh stand-in ``mmseg.registry.MODELS``; the integration module imported against it."""
    models = FakeRegistry()
    models.register_module(name="CrossEntropyLoss", module=FakeCrossEntropy)
    mmseg = types.ModuleType("mmseg")
    reg = types.ModuleType("mmseg.registry")
    reg.MODELS = models
    mmseg.registry = reg
    monkeypatch.setitem(sys.modules, "mmseg", mmseg)
    monkeypatch.setitem(sys.modules, "mmseg.registry", reg)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield models
    sys.modules.pop(MODULE, None)


def ohem_weights(head, seg_logit, seg_label, min_kept):
    """Stand-in for ``OHEMPixelSampler.sample`` without ``thresh``; labels (B, 1, H, W)."""
    with torch.no_grad():
        label = seg_label.squeeze(1).long()
        valid = label != head.ignore_index
        losses = 0.0
        for loss in head.loss_decode:
            losses += loss(
                seg_logit,
                label,
                weight=None,
                ignore_index=head.ignore_index,
                reduction_override="none",
            )
        weight = seg_logit.new_zeros(label.shape)
        kept = weight[valid]
        _, order = losses[valid].sort(descending=True)
        kept[order[: min_kept * label.shape[0]]] = 1.0
        weight[valid] = kept
        return weight


class FakeHead:
    """Stand-in for ``BaseDecodeHead.loss_by_feat`` (loss part)."""

    def __init__(self, models, loss_cfgs, ignore_index=255, min_kept=None):
        self.loss_decode = nn.ModuleList(models.build(c) for c in loss_cfgs)
        self.ignore_index = ignore_index
        self.min_kept = min_kept

    def loss_by_feat(self, seg_logits, seg_label):
        seg_logits = F.interpolate(
            seg_logits, size=seg_label.shape[2:], mode="bilinear", align_corners=False
        )
        seg_weight = None
        if self.min_kept is not None:
            seg_weight = ohem_weights(self, seg_logits, seg_label, self.min_kept)
        label = seg_label.squeeze(1)
        out: dict[str, torch.Tensor] = {}
        for loss in self.loss_decode:
            value = loss(seg_logits, label, weight=seg_weight, ignore_index=self.ignore_index)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        return out, seg_weight, seg_logits


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
