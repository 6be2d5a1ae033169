"""Converted PSPNet weights compute what hszhao/semseg's pyramid pooling, head and aux head
compute, written here with functional ops from the semseg-named tensors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arseg.models import build_model, load_reference_state_dict


def _semseg_state(num_classes: int) -> dict[str, torch.Tensor]:
    # the semseg-named random state of the converter tests (importlib mode: no package import)
    path = Path(__file__).with_name("test_models_convert.py")
    spec = importlib.util.spec_from_file_location("_convert_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.semseg_pspnet50_state(num_classes)


def _bn(sd, prefix, x):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
    )


def _semseg_ppm_and_cls(sd, x):
    """semseg ``PPM`` (bins 1, 2, 3, 6; ``features.i`` = pool, conv, BN, ReLU) then ``cls``."""
    size = x.shape[-2:]
    out = [x]
    for i, b in enumerate((1, 2, 3, 6)):
        y = F.conv2d(F.adaptive_avg_pool2d(x, b), sd[f"ppm.features.{i}.1.weight"])
        y = _bn(sd, f"ppm.features.{i}.2", y).relu()
        out.append(F.interpolate(y, size=size, mode="bilinear", align_corners=True))
    y = torch.cat(out, 1)
    y = _bn(sd, "cls.1", F.conv2d(y, sd["cls.0.weight"], padding=1)).relu()
    return F.conv2d(y, sd["cls.4.weight"], sd["cls.4.bias"])  # Dropout2d: identity in eval


def _semseg_aux(sd, x):
    y = _bn(sd, "aux.1", F.conv2d(x, sd["aux.0.weight"], padding=1)).relu()
    return F.conv2d(y, sd["aux.4.weight"], sd["aux.4.bias"])


@pytest.fixture(scope="module")
def psp():
    sd = _semseg_state(7)
    gen = torch.Generator().manual_seed(5)
    for key in [k for k in sd if k.startswith(("ppm.", "cls.", "aux."))]:
        if key.endswith("running_var"):  # BN statistics away from (0, 1): they must matter
            sd[key] = 0.5 + torch.rand(sd[key].shape, generator=gen)
        elif key.endswith("running_mean"):
            sd[key] = 0.1 * torch.randn(sd[key].shape, generator=gen)
    model = build_model("pspnet50", num_classes=7)
    load_reference_state_dict(model, sd)
    return model.eval(), sd


def test_pyramid_pooling_and_head_compute_semseg_s(psp):
    model, sd = psp
    x = torch.randn(1, 3, 49, 65)
    with torch.no_grad():
        _, l3, l4 = model.encoder(x)[-3:]
        assert l4.shape[-2:] == (7, 9)  # stride 8: every bin (up to 6) pools several cells
        ours = model(x)
        torch.testing.assert_close(ours, _semseg_ppm_and_cls(sd, l4), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model.aux_head(l3), _semseg_aux(sd, l3), rtol=1e-4, atol=1e-4)
        # the check can fail: bins in another order give other logits
        swapped = dict(sd)
        for suffix in ("1.weight", "2.weight", "2.bias", "2.running_mean", "2.running_var"):
            swapped[f"ppm.features.0.{suffix}"] = sd[f"ppm.features.3.{suffix}"]
            swapped[f"ppm.features.3.{suffix}"] = sd[f"ppm.features.0.{suffix}"]
        assert (ours - _semseg_ppm_and_cls(swapped, l4)).abs().max() > 1e-3
