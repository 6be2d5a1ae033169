"""The model registry: names, validation, output contract."""

from __future__ import annotations

import pytest
import torch

from arseg.models import build_model, list_models

EXPECTED = {
    "lwrefinenet18",
    "lwrefinenet34",
    "lwrefinenet50",
    "lwrefinenet101",
    "lwrefinenet152",
    "lwrefinenet_mbv2",
    "pspnet50",
    "pspnet101",
    "icnet50",
}


def test_list_models_has_the_contract_names():
    assert EXPECTED <= set(list_models())
    assert list_models("lwrefinenet1*") == ["lwrefinenet101", "lwrefinenet152", "lwrefinenet18"]
    assert list_models("*mbv2") == ["lwrefinenet_mbv2"]


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


@pytest.mark.parametrize(
    ("name", "timm_name"),
    [
        ("lwrefinenet50", "resnet50.tv_in1k"),
        ("lwrefinenet18", "resnet18.tv_in1k"),
        ("lwrefinenet_mbv2", "mobilenetv2_100.ra_in1k"),
        ("pspnet101", "resnet101s.gluon_in1k"),
        ("icnet50", "resnet50s.gluon_in1k"),
    ],
)
def test_pretrained_asks_timm_for_imagenet_weights(monkeypatch, name, timm_name):
    """pretrained=True goes to timm with the reference-matching weight tag (no download here)."""
    import timm

    calls = []

    class Stop(Exception):
        pass

    def fake_create_model(model_name, pretrained=False, **kwargs):
        calls.append((model_name, pretrained))
        raise Stop

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    options = {"width": 1.0} if name == "icnet50" else {}
    with pytest.raises(Stop):
        build_model(name, num_classes=3, pretrained=True, **options)
    assert calls == [(timm_name, True)]


def test_half_width_icnet_has_no_imagenet_weights():
    with pytest.raises(ValueError, match=r"width=1\.0"):
        build_model("icnet50", num_classes=19, pretrained=True)


@pytest.mark.parametrize("name", ["lwrefinenet18", "lwrefinenet_mbv2"])
def test_decoder_channels_validation(name):
    with pytest.raises(ValueError, match="decoder_channels"):
        build_model(name, num_classes=3, decoder_channels=0)
    with pytest.raises(TypeError, match="decoder_channels"):
        build_model(name, num_classes=3, decoder_channels=16.0)
    with pytest.raises(ValueError, match="crp_stages"):
        build_model(name, num_classes=3, decoder_channels=8, crp_stages=0)


@pytest.mark.parametrize("bins", [3, (), (1, 0), (1, 2.0), "1236"])
def test_pspnet_bins_validation(bins):
    with pytest.raises(ValueError, match="bins must be a non-empty sequence of positive ints"):
        build_model("pspnet50", num_classes=3, bins=bins)
