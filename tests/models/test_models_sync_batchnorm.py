"""Multi-GPU SyncBatchNorm keeps every model's function (timm's BatchNormAct2d included)."""

from __future__ import annotations

import copy

import pytest
import torch

from arseg.models import build_model, convert_sync_batchnorm


@pytest.mark.parametrize("name", ["lwrefinenet_mbv2", "lwrefinenet_efflite0", "lwrefinenet18"])
def test_converted_model_computes_what_the_model_computed(name) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, decoder_channels=8).eval()
    for m in model.modules():  # BN statistics away from the identity, so a lost op shows
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 64, 64)
    synced = convert_sync_batchnorm(copy.deepcopy(model)).eval()
    bns = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns)
    assert synced.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(synced(x), model(x))


def test_torchs_own_conversion_drops_timms_activations() -> None:
    """Why arseg converts with timm's converter and not Lightning's sync_batchnorm (torch's)."""
    torch.manual_seed(0)
    model = build_model("lwrefinenet_efflite0", num_classes=3, decoder_channels=8).eval()
    x = torch.randn(1, 3, 64, 64)
    torchs = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    with torch.no_grad():
        assert (torchs(x) - model(x)).abs().max() > 1e-2
