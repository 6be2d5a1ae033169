"""``lambda_ar`` schedules: values at known steps, validation, and the engine's per-step use."""

from __future__ import annotations

import csv
import itertools
import math
from types import SimpleNamespace

import pytest

from arseg.losses import LAMBDA_SCHEDULES, lambda_at


@pytest.mark.parametrize(
    ("step", "schedule", "ratio", "power", "expected"),
    [
        (0, "constant", 0.1, 0.9, 0.1),
        (77, "constant", 0.1, 0.9, 0.1),
        (25, "linear", 0.2, 0.9, 0.1 * (1 - 0.8 * 0.25)),  # 0.08
        (100, "linear", 0.0, 0.9, 0.0),
        (50, "exp", 0.01, 0.9, 0.01),  # 0.1 * 0.01 ** 0.5
        (100, "exp", 0.01, 0.9, 0.001),
        (50, "poly", 0.0, 2.0, 0.1 * 0.25),  # (1 - 1/2) ** 2
        (50, "poly", 0.5, 1.0, 0.1 * (0.5 + 0.5 * 0.5)),
        (250, "exp", 0.01, 0.9, 0.001),  # clipped to the end
        (-3, "linear", 0.0, 0.9, 0.1),  # clipped to the start
    ],
)
def test_values_at_known_steps(step, schedule, ratio, power, expected):
    got = lambda_at(step, 100, 0.1, schedule, ratio, power)
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("schedule", LAMBDA_SCHEDULES)
def test_every_schedule_starts_at_lambda_ends_at_ratio_and_never_increases(schedule):
    values = [lambda_at(s, 40, 0.3, schedule, 0.25) for s in range(41)]
    assert values[0] == pytest.approx(0.3)
    assert values[-1] == pytest.approx(0.3 if schedule == "constant" else 0.075)
    assert all(b <= a + 1e-15 for a, b in itertools.pairwise(values))
    assert lambda_at(7, 40, 0.0, schedule, 0.25) == 0.0


@pytest.mark.parametrize(
    ("schedule", "ratio", "power", "match"),
    [
        ("cosine", 0.1, 0.9, "schedule must be one of"),
        ("exp", 0.0, 0.9, r"\(0, 1\]"),  # exp never reaches 0
        ("linear", -0.1, 0.9, r"\[0, 1\]"),
        ("poly", 1.5, 0.9, r"\[0, 1\]"),
        ("poly", 0.1, 0.0, "power"),
        ("linear", "0.1", 0.9, "number"),
        ("linear", True, 0.9, "number"),
    ],
)
def test_bad_arguments_are_clear_errors(schedule, ratio, power, match):
    with pytest.raises(ValueError, match=match):
        lambda_at(3, 10, 0.1, schedule, ratio, power)


def test_config_keys_are_validated():
    pytest.importorskip("yaml")
    from arseg.engine.config import ConfigError, load_config

    cfg = load_config(None, [])["loss"]
    assert (cfg["lambda_schedule"], cfg["lambda_final_ratio"]) == ("constant", 0.1)
    ok = load_config(None, ["loss.lambda_schedule=exp", "loss.lambda_final_ratio=0.01"])
    assert ok["loss"]["lambda_schedule"] == "exp"
    for bad in (
        ["loss.lambda_schedule=cos"],
        ["loss.lambda_schedule=exp", "loss.lambda_final_ratio=0"],
    ):
        with pytest.raises(ConfigError, match=r"loss\.lambda_"):
            load_config(None, bad)


def _tiny_cfg(*overrides):
    from arseg.engine.config import load_config

    return load_config(
        None,
        [
            "model.name=lwrefinenet_mbv2",
            "model.num_classes=3",
            "model.options.decoder_channels=8",
            *overrides,
        ],
    )


def test_engine_resolves_lambda_from_the_global_step_only():
    pytest.importorskip("lightning")
    from arseg.engine.module import SegmentationModule

    cfg = _tiny_cfg(
        "loss.lambda_ar=0.2", "loss.lambda_schedule=poly", "loss.lambda_final_ratio=0.5"
    )
    module = SegmentationModule(cfg)
    for step in (0, 10, 37, 40):
        # A stand-in trainer: the value depends on global_step and the run's total steps only
        # (what a resumed run restores), not on anything the module accumulated.
        module._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=40)
        expected = 0.2 * (0.5 + 0.5 * (1 - step / 40) ** 0.9)
        assert module._term_weights()["ar"] == pytest.approx(expected, rel=1e-12)
    module._trainer = None


@pytest.mark.slow
def test_fit_logs_the_scheduled_lambda_per_step(tmp_path):
    pytest.importorskip("lightning")
    import yaml

    from arseg.cli import main

    cfg = {
        "name": "sched",
        "seed": 3,
        "model": {"name": "lwrefinenet_mbv2", "options": {"decoder_channels": 8}},
        "data": {
            "name": "synthetic",
            "options": {"size": [32, 32]},
            "train_options": {"num_samples": 8},
            "val_options": {"num_samples": 2},
            "crop_size": [32, 32],
            "batch_size": 4,
            "val_batch_size": 2,
            "num_workers": 0,
        },
        "loss": {"lambda_ar": 0.1, "lambda_schedule": "exp", "lambda_final_ratio": 0.01},
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "num_threads": 1,
        },
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/lambda_ar")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        lam = float(r["train/lambda_ar"])
        assert lam == pytest.approx(0.1 * 0.01 ** (int(r["step"]) / 4), rel=1e-6)
        total, ce, ar = (float(r[k]) for k in ("train/loss", "train/ce", "train/ar"))
        assert total == pytest.approx(ce + lam * ar, rel=1e-6)
    assert not math.isclose(float(rows[0]["train/lambda_ar"]), float(rows[-1]["train/lambda_ar"]))
