"""Training claims no other engine test reaches: aux losses of models that have them (weight
0.4), and the LR of both parameter groups (encoder multiplier, poly power) at known steps."""

from __future__ import annotations

import csv

import lightning as L
import pytest

from arseg.engine import fit, load_config


def test_icnet_aux_losses_enter_the_total_with_weight_0_4(tmp_path, tiny_config):
    run = tmp_path / "icnet"
    cfg = load_config(
        tiny_config(model={"name": "icnet50", "options": {}}),
        {"run_dir": str(run), "trainer": {"limit_train_batches": 2, "limit_val_batches": 1}},
    )
    assert cfg["loss"]["aux"] and cfg["loss"]["lambda_ar"] == 0
    fit(cfg)
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/ce"]]
    assert len(rows) == 2
    for r in rows:
        sub4, sub24 = float(r["train/aux/sub4"]), float(r["train/aux/sub24"])
        assert sub4 > 0 and sub24 > 0
        expected = float(r["train/ce"]) + 0.4 * sub4 + 0.4 * sub24
        assert float(r["train/loss"]) == pytest.approx(expected, rel=1e-6)


class _GroupLRs(L.Callback):
    """The LR of every parameter group as the optimiser steps with it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_both_parameter_groups_follow_the_poly_schedule(tmp_path, tiny_config, power):
    record = _GroupLRs()
    cfg = load_config(
        tiny_config(),
        {
            "run_dir": str(tmp_path / "run"),
            "optim": {"lr": 0.02, "encoder_lr_mult": 0.1, "poly_power": power},
            "trainer": {"max_epochs": 2, "limit_val_batches": 1},
        },
    )
    fit(cfg, callbacks=[record])
    total = 8  # 16 samples / batch 4 = 4 steps per epoch, 2 epochs
    assert len(record.steps) == total
    for step, lrs in enumerate(record.steps):
        factor = (1 - step / total) ** power  # a linear schedule: 1 - step / total
        assert lrs["decoder"] == pytest.approx(0.02 * factor, rel=1e-9)
        assert lrs["encoder"] == pytest.approx(0.002 * factor, rel=1e-9)
