"""Inference modes against hand-computed averages, predict's PNGs against the logits, and the
bf16 run against float32 losses on the same rounded logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from arseg.engine import fit, load_config, load_model, predict_logits


class _Asymmetric(nn.Module):
    """2x2 average pooling then a random 3x3 conv: output stride 2, *not* flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.copy_(torch.randn(4, generator=gen))

    def forward(self, x):
        return self.conv(F.avg_pool2d(x, 2))


def _up(t, size):
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def test_flip_averages_the_softmax_of_the_flipped_pass():
    model = _Asymmetric().eval()
    x = torch.randn(2, 3, 20, 28)
    plain = _up(model(x), (20, 28))
    flipped = _up(model(x.flip(-1)), (20, 28)).flip(-1)
    assert (plain - flipped).abs().max() > 0.1  # the model really is asymmetric
    expected = ((plain.softmax(1) + flipped.softmax(1)) / 2).log()
    torch.testing.assert_close(predict_logits(model, x, flip=True), expected)


def test_sliding_window_averages_the_window_logits():
    model = _Asymmetric().eval()
    x = torch.randn(1, 3, 20, 28)
    # window 12 x 16, stride 8: rows start at 0 and 8 (= 20 - 12), columns at 0, 8 and 12
    total = torch.zeros(1, 4, 20, 28)
    count = torch.zeros(1, 1, 20, 28)
    for top in (0, 8):
        for left in (0, 8, 12):
            crop = x[..., top : top + 12, left : left + 16]
            total[..., top : top + 12, left : left + 16] += _up(model(crop), (12, 16))
            count[..., top : top + 12, left : left + 16] += 1
    got = predict_logits(model, x, mode="slide", window=(12, 16), stride=(8, 8))
    torch.testing.assert_close(got, total / count)
    assert not torch.allclose(got, predict_logits(model, x), atol=1e-3)  # windows matter


def test_multi_scale_and_flip_average_six_softmaxes():
    model = _Asymmetric().eval()
    x = torch.randn(1, 3, 20, 28)
    probs = []
    for scale, size in ((0.5, (10, 14)), (1.0, (20, 28)), (1.5, (30, 42))):
        xs = x if scale == 1.0 else _up(x, size)
        probs.append(_up(_up(model(xs), size), (20, 28)).softmax(1))
        probs.append(_up(_up(model(xs.flip(-1)), size).flip(-1), (20, 28)).softmax(1))
    expected = torch.stack(probs).mean(0).log()
    got = predict_logits(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    torch.testing.assert_close(got, expected)


@pytest.fixture
def one_step_run(tmp_path, tiny_config):
    run = tmp_path / "run"
    cfg = load_config(
        tiny_config(),
        {"run_dir": str(run), "trainer": {"limit_train_batches": 1, "limit_val_batches": 1}},
    )
    fit(cfg)
    return run


def test_predict_writes_the_argmax_of_predict_logits_and_its_palette_colours(
    tmp_path, one_step_run
):
    from arseg.cli import main
    from arseg.data import IMAGENET_MEAN, IMAGENET_STD
    from arseg.engine.checkpoint import find_checkpoint, load_checkpoint

    images = tmp_path / "images"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "photo.png")
    grey16 = np.linspace(0, 65535, 30 * 41).reshape(30, 41).astype(np.uint16)
    Image.fromarray(grey16).save(images / "deep.png")
    out = tmp_path / "pred"
    assert main(["predict", str(one_step_run), str(images), "--out", str(out)]) == 0

    model, _ = load_model(one_step_run)
    palette = np.array(load_checkpoint(find_checkpoint(one_step_run))["arseg_palette"])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    # 16-bit grey is scaled to 8 bits (x / 257, 65535 -> 255), not clipped at 255
    deep = np.repeat(np.round(grey16 / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    predicted = set()
    for name, pixels in (("photo", rgb), ("deep", deep)):
        x = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 - mean) / std
        expected = predict_logits(model, x).argmax(1)[0].numpy()
        label = np.array(Image.open(out / f"{name}_label.png"))
        assert label.shape == (30, 41) and label.dtype == np.uint8
        assert (label == expected).mean() > 0.999  # 8-bit rounding may flip a near-tie
        color = np.array(Image.open(out / f"{name}_color.png").convert("RGB"))
        assert np.array_equal(color, palette[label])
        predicted.update(np.unique(label).tolist())
    assert len(predicted) > 1  # more than one class: the comparison could fail


def test_bf16_training_losses_equal_float32_losses_of_the_same_rounded_logits(
    tmp_path, tiny_config
):
    import lightning as L

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.hook = pl_module.model.register_forward_hook(
                lambda mod, args, out: setattr(self, "logits", out.logits.detach())
            )

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.hook.remove()
            seen.append((self.logits, batch[1], outputs["loss"].detach()))
            self.criterion = pl_module.criterion

    capture = Capture()
    cfg = load_config(
        tiny_config(),
        {
            "run_dir": str(tmp_path / "bf16"),
            "loss": {"lambda_ar": 0.1},
            "trainer": {
                "precision": "bf16-mixed",
                "limit_train_batches": 2,
                "limit_val_batches": 1,
                "deterministic": False,
            },
        },
    )
    fit(cfg, callbacks=[capture])
    assert len(seen) == 2
    for logits, target, loss in seen:
        assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
        ref = capture.criterion(logits.float(), target, {"ar": 0.1}).total
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-7)
