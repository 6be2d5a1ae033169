"""``trainer.channels_last``: the model and every stage's images in NHWC, the same math."""

from __future__ import annotations

import csv

import torch

from arseg.cli import main


def _train_losses(run) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]


def test_channels_last_trains_the_same_losses_up_to_float_rounding(tmp_path, tiny_config) -> None:
    from arseg.engine.config import load_config
    from arseg.engine.module import SegmentationModule

    cfg = tiny_config(loss={"lambda_ar": 1.0})
    module = SegmentationModule(
        load_config(cfg, ["trainer.channels_last=true", "model.num_classes=3"])
    )
    convs = [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    images, target = module.on_after_batch_transfer((torch.randn(2, 3, 8, 8), torch.zeros(2)), 0)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert not images.is_contiguous() and target.shape == (2,)

    runs = {}
    for flag in ("false", "true"):
        runs[flag] = tmp_path / f"cl_{flag}"
        argv = ["fit", str(cfg), "--run-dir", str(runs[flag]), f"trainer.channels_last={flag}"]
        assert main(argv) == 0
    plain, nhwc = _train_losses(runs["false"]), _train_losses(runs["true"])
    assert len(plain) == len(nhwc) == 4
    assert abs(nhwc[0] - plain[0]) < 1e-5 * plain[0]  # the same first step up to rounding


def test_channels_last_gradients_stay_near_float64() -> None:
    """Later steps of a tiny BatchNorm network drift apart from any rounding, so the layout is
    judged on one step's gradients against float64. At this size both layouts are ~1e-3 from
    float64 (the tiny batch's BatchNorm dominates); at the CamVid size channels_last's CPU
    BatchNorm statistics are 30-100x less accurate (benchmarks/train_step.py --setting camvid),
    which is why the option is off by default. A wrong layout conversion would fail this."""
    import copy

    from arseg.losses import CEARLoss
    from arseg.models import build_model

    torch.manual_seed(0)
    model = build_model("lwrefinenet_efflite0", num_classes=3, decoder_channels=16).train()
    images, target = torch.randn(2, 3, 32, 48), torch.randint(0, 3, (2, 32, 48))
    criterion = CEARLoss(lambda_ar=1.0)

    def grads(net, x):
        total, _, _ = criterion(net(x).logits, target)
        total.backward()
        return torch.cat([p.grad.flatten().double() for p in net.parameters()])

    reference = grads(copy.deepcopy(model).double(), images.double())
    plain = grads(copy.deepcopy(model), images)
    nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    nhwc = grads(nhwc_model, images.contiguous(memory_format=torch.channels_last))
    err_plain = ((plain - reference).norm() / reference.norm()).item()
    err_nhwc = ((nhwc - reference).norm() / reference.norm()).item()
    assert err_plain < 1e-2 and err_nhwc < 3 * err_plain + 1e-6, (err_plain, err_nhwc)
