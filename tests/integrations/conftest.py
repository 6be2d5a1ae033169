"""Stand-ins for mmsegmentation 1.x's calling conventions, without mmseg (shared by the tests
of ``ARLoss`` and of the peers arseg registers).

A minimal stand-in registry replaces ``mmseg.registry``; a stand-in decode head calls its losses
the way mmseg's ``BaseDecodeHead.loss_by_feat`` does (logits resized to the label size, each loss
called with ``weight=seg_weight, ignore_index=head.ignore_index``, results summed per
``loss_name``) and ranks pixels the way ``OHEMPixelSampler.sample`` does (without ``thresh``:
every loss called with ``weight=None, reduction_override="none"``, the summed (B, H, W) maps
ranked over the labelled pixels, the top ``min_kept`` per image kept).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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


class FakeHead:
    """Stand-in for ``BaseDecodeHead.loss_by_feat`` (loss part), with the OHEM sampler's
    ranking without ``thresh`` when ``min_kept`` is given."""

    def __init__(self, models, loss_cfgs, ignore_index=255, min_kept=None):
        self.loss_decode = nn.ModuleList(models.build(c) for c in loss_cfgs)
        self.ignore_index = ignore_index
        self.min_kept = min_kept

    def ohem(self, seg_logit, label):
        with torch.no_grad():
            valid = label != self.ignore_index
            losses = 0.0
            for loss in self.loss_decode:
                losses = losses + loss(
                    seg_logit,
                    label,
                    weight=None,
                    ignore_index=self.ignore_index,
                    reduction_override="none",
                )
            weight = seg_logit.new_zeros(label.shape)
            kept = weight[valid]
            _, order = losses[valid].sort(descending=True)
            kept[order[: self.min_kept * label.shape[0]]] = 1.0
            weight[valid] = kept
            return weight

    def loss_by_feat(self, seg_logits, seg_label):
        seg_logits = F.interpolate(
            seg_logits, size=seg_label.shape[2:], mode="bilinear", align_corners=False
        )
        label = seg_label.squeeze(1)
        seg_weight = self.ohem(seg_logits, label) if self.min_kept is not None else None
        out: dict[str, torch.Tensor] = {}
        for loss in self.loss_decode:
            value = loss(seg_logits, label, weight=seg_weight, ignore_index=self.ignore_index)
            out[loss.loss_name] = out[loss.loss_name] + value if loss.loss_name in out else value
        return out, seg_weight, seg_logits
