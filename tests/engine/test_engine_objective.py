"""The training loss a config names: ``loss.lambda_ar`` as before, ``loss.terms`` beside it."""

from __future__ import annotations

import csv

import pytest
import torch

from arseg.cli import main
from arseg.engine.config import ConfigError, load_config
from arseg.engine.objective import resolve_terms


def test_the_composite_of_ce_and_ar_is_ceARloss_to_the_bit() -> None:
    """Every existing config trains the numbers it trained: CE + lambda AR through the new
    criterion equals the paper's objective (CEARLoss), value and gradient, bit for bit."""
    from arseg.losses import CEARLoss, CompositeLoss

    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 48, 64))
    target[0, :5] = 255
    for weight in (0.0, 0.1, 1.0):
        old_logits = torch.randn(2, 5, 12, 16, requires_grad=True)
        new_logits = old_logits.detach().clone().requires_grad_(True)
        old = CEARLoss(lambda_ar=weight, scales=(12, 6))
        new = CompositeLoss({"ar": {"scales": (12, 6)}})
        if weight > 0:
            old_total = old(old_logits, target).total
        else:  # the engine's CE-only path: AR logged without grad, not added
            old_total = old.cross_entropy(old_logits, target)
        out = new(new_logits, target, {"ar": weight})
        assert torch.equal(out.total, old_total)
        assert torch.equal(out.terms["ar"], old(old_logits.detach(), target).ar)
        old_total.backward()
        out.total.backward()
        assert torch.equal(new_logits.grad, old_logits.grad)


def test_legacy_keys_and_terms_resolve_to_the_same_ar_term(tmp_path, tiny_config) -> None:
    cfg = tiny_config(loss={"lambda_ar": 0.5, "lambda_schedule": "exp"})
    legacy = resolve_terms(load_config(cfg)["loss"])
    named = resolve_terms(
        load_config(
            cfg,
            [
                "loss.lambda_ar=0",
                "loss.terms.ar.weight=0.5",
                "loss.terms.ar.schedule=exp",
                "loss.terms.ar.scales=[12,6]",
            ],
        )["loss"]
    )
    assert list(legacy) == ["ar"] and legacy == named
    assert legacy["ar"].at(0, 10) == 0.5 and legacy["ar"].at(10, 10) == pytest.approx(0.05)


def test_terms_merge_key_by_key_and_null_removes_one(tiny_config) -> None:
    cfg = tiny_config(loss={"terms": {"aaf": {"weight": 1.0, "schedule": "exp", "margin": 2.0}}})
    loss = load_config(cfg, ["loss.terms.aaf.weight=0.5", "loss.terms.dice.weight=1"])["loss"]
    assert loss["terms"]["aaf"] == {"weight": 0.5, "schedule": "exp", "margin": 2.0}
    terms = resolve_terms(loss)
    assert list(terms) == ["ar", "aaf", "dice"]
    assert terms["aaf"].options["margin"] == 2.0 and terms["aaf"].schedule == "exp"
    assert "schedule" not in terms["aaf"].options and "weight" not in terms["aaf"].options
    removed = load_config(cfg, ["loss.terms.aaf=null"])["loss"]
    assert list(resolve_terms(removed)) == ["ar"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.terms.focal.weight=1", r"unknown loss term 'focal'; known: ar, "),
        ("loss.terms.dice.weight=-1", r"'loss.terms.dice.weight' must be a number >= 0"),
        ("loss.terms.dice.schedule=cosine", r"'loss.terms.dice': lambda schedule must be"),
        ("loss.terms.rmi.radious=3", r"'loss.terms.rmi': .*radious"),
        ("loss.terms.lovasz=1", r"'loss.terms.lovasz' expects a mapping"),
    ],
)
def test_bad_terms_are_one_line_config_errors(tiny_config, override, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(tiny_config(), [override])
    assert "\n" not in str(err.value)


def test_ar_weighted_twice_is_refused(tiny_config) -> None:
    with pytest.raises(ConfigError, match="AR's weight is set twice"):
        load_config(tiny_config(), ["loss.lambda_ar=0.1", "loss.terms.ar.weight=1"])


def test_a_run_logs_every_term_its_weight_and_its_val_value(tmp_path, tiny_config) -> None:
    from arseg.losses import lambda_at

    cfg = tiny_config(
        loss={
            "lambda_ar": 0.1,
            "aux": False,
            "terms": {
                "dice": {"weight": 1.0},
                "aaf": {"weight": 0.5, "schedule": "exp", "final_ratio": 0.1},
            },
        }
    )
    run = tmp_path / "run"
    assert main(["fit", str(cfg), "--run-dir", str(run)]) == 0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["train/loss"]]
    assert len(train) == 4
    for r in train:
        step = int(r["step"])
        assert float(r["train/lambda_aaf"]) == pytest.approx(lambda_at(step, 4, 0.5, "exp", 0.1))
        assert float(r["train/lambda_dice"]) == 1.0
        assert float(r["train/lambda_ar"]) == pytest.approx(0.1)
        expected = (
            float(r["train/ce"])
            + 0.1 * float(r["train/ar"])
            + float(r["train/dice"])
            + float(r["train/lambda_aaf"]) * float(r["train/aaf"])
        )
        assert float(r["train/loss"]) == pytest.approx(expected, rel=1e-5)
    val = [r for r in rows if r.get("val/miou")]
    assert val and all(0 < float(r["val/dice"]) < 1 and float(r["val/aaf"]) >= 0 for r in val)


def test_val_terms_take_the_logits_they_train_on(tiny_config) -> None:
    """AAF samples the native logits (as in training), Dice takes them at the label size."""
    import torch.nn.functional as F

    from arseg.engine.module import SegmentationModule
    from arseg.losses import aaf_loss, dice_loss

    cfg = load_config(
        tiny_config(),
        ["model.num_classes=3", "loss.terms.aaf.weight=1", "loss.terms.dice.weight=1"],
    )
    module = SegmentationModule(cfg)
    torch.manual_seed(0)
    native = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 32, 32))
    up = F.interpolate(native, size=(32, 32), mode="bilinear", align_corners=False)
    module._update_terms(native, up, target)
    assert module.val_terms["aaf"].compute().item() == pytest.approx(
        aaf_loss(native, target).item(), rel=1e-6
    )
    assert module.val_terms["dice"].compute().item() == pytest.approx(
        dice_loss(up, target).item(), rel=1e-6
    )


@pytest.mark.parametrize("corners", [True, False])
def test_the_objective_resizes_with_the_models_align_corners(tiny_config, monkeypatch, corners):
    """A model declaring ``align_corners=True`` (PSPNet, ICNet) trains on logits resized so."""
    import torch.nn.functional as F

    import arseg.models
    from arseg.engine.module import SegmentationModule
    from arseg.losses import dice_loss

    build = arseg.models.build_model

    def declaring(*args, **kwargs):
        model = build(*args, **kwargs)
        model.align_corners = corners
        return model

    monkeypatch.setattr(arseg.models, "build_model", declaring)
    cfg = load_config(tiny_config(), ["model.num_classes=3", "loss.terms.dice.weight=1"])
    module = SegmentationModule(cfg)
    torch.manual_seed(0)
    native = 3 * torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 32, 32))
    out = module.criterion(native, target, {**dict.fromkeys(module.terms, 0.0), "dice": 1.0})
    up = F.interpolate(native, size=(32, 32), mode="bilinear", align_corners=corners)
    torch.testing.assert_close(out.terms["dice"], dice_loss(up, target))
    torch.testing.assert_close(out.ce, F.cross_entropy(up, target))
