"""The model registry: names, validation, output contract."""

from __future__ import annotations

import pytest
import torch

from arseg.models import SegmentationOutput, build_model, list_models

EXPECTED = {"lwrefinenet18", "lwrefinenet34", "lwrefinenet50", "lwrefinenet101", "lwrefinenet152"}


def test_list_models_has_the_contract_names():
    assert EXPECTED <= set(list_models())
    assert list_models("lwrefinenet1*") == ["lwrefinenet101", "lwrefinenet152", "lwrefinenet18"]


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ValueError, match="lwrefinenet50"):
        build_model("refinenet9000", num_classes=3)


@pytest.mark.parametrize("bad", [0, -3])
def test_num_classes_must_be_positive(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lwrefinenet18", num_classes=bad, decoder_channels=8)


@pytest.mark.parametrize("bad", [2.0, "3", True])
def test_num_classes_must_be_int(bad):
    with pytest.raises(TypeError, match="num_classes"):
        build_model("lwrefinenet18", num_classes=bad, decoder_channels=8)


def test_unknown_option_names_the_model():
    with pytest.raises(TypeError, match="lwrefinenet18"):
        build_model("lwrefinenet18", num_classes=3, decoder_chanels=8)


def test_input_validation():
    model = build_model("lwrefinenet18", num_classes=3, decoder_channels=8).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_train_and_eval_output_types():
    model = build_model("lwrefinenet18", num_classes=5, decoder_channels=8)
    x = torch.randn(1, 3, 40, 56)
    model.train()
    out = model(x)
    assert isinstance(out, SegmentationOutput)
    assert out.aux == {} and set(out.aux) == set(model.aux_weights)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 5, 10, 14)
