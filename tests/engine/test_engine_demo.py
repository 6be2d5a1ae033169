"""``arseg demo`` keeps only what a newcomer uses, and says where its output went."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from arseg.cli import main


def _fake_demo(out, trained_run):
    for stage in ("baseline", "finetune_ar", "finetune_ce"):
        shutil.copytree(trained_run / "checkpoints", out / stage / "checkpoints")
    return out


def test_demo_keeps_weights_only_best_checkpoints_and_the_baseline_start(tmp_path, tiny_config):
    from arseg.engine.demo import _keep_what_a_newcomer_needs

    run = tmp_path / "run"
    args = ["fit", str(tiny_config()), "--run-dir", str(run), "trainer.limit_train_batches=1"]
    assert main(args) == 0
    out = _fake_demo(tmp_path / "demo", run)
    before = (out / "baseline" / "checkpoints" / "best.ckpt").stat().st_size
    _keep_what_a_newcomer_needs(out, ["baseline", "finetune_ar", "finetune_ce"])
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*.ckpt"))
    assert kept == [
        "baseline/checkpoints/best.ckpt",
        "baseline/checkpoints/last.ckpt",  # where the fine-tunes started (arseg trend reads it)
        "finetune_ar/checkpoints/best.ckpt",
        "finetune_ce/checkpoints/best.ckpt",
    ]
    ckpt = torch.load(out / "finetune_ar" / "checkpoints" / "best.ckpt", weights_only=True)
    assert "optimizer_states" not in ckpt and ckpt["state_dict"] and ckpt["arseg_config"]
    assert (out / "baseline" / "checkpoints" / "best.ckpt").stat().st_size < 0.6 * before
    # still what eval reads
    assert main(["eval", str(out / "finetune_ar"), "--no-progress"]) == 0


def test_demo_success_path_on_a_tiny_model(tmp_path, capsys, monkeypatch):
    """The whole demo (three stages, table, predictions, results.json, pruning) with the demo's
    own network swapped for the engine tests' tiny one; the real network runs in the slow test."""
    from arseg.engine import demo

    real_config = demo.demo_config

    def tiny_demo_config(out, *, size, steps, seed):
        cfg = real_config(out, size=size, steps=steps, seed=seed)
        cfg["model"] = {
            **cfg["model"],
            "name": "lwrefinenet_mbv2",
            "options": {"decoder_channels": 8},
        }
        cfg["data"]["train_options"] = {"num_samples": 16}
        cfg["data"]["val_options"] = {"num_samples": 5}
        return cfg

    monkeypatch.setattr(demo, "demo_config", tiny_demo_config)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--size", "32"]) == 0
    text = capsys.readouterr().out
    stages = ("baseline", "finetune_ar", "finetune_ce")
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == {"baseline": 4, "finetune": 2}
    for i, stage in enumerate(stages, 1):
        # each stage trained the steps it was given, from the baseline's last checkpoint
        ckpt = torch.load(out / stage / "checkpoints" / "best.ckpt", weights_only=True)
        assert ckpt["arseg_config"]["model"]["name"] == "lwrefinenet_mbv2"
        # 2-step epochs (16 scenes, batch 8): best.ckpt is the epoch of the highest val mIoU
        with open(out / stage / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["val/miou"]]  # the validations
        val = [(float(r["val/miou"]), int(r["step"]) + 1) for r in rows]
        assert len(val) == (2 if stage == "baseline" else 1)
        assert ckpt["global_step"] == max(val, key=lambda v: v[0])[1]
        if stage != "baseline":
            assert ckpt["arseg_config"]["init_from"] == str(out / "baseline/checkpoints/last.ckpt")
        assert f"[{i}/3]" in text
        # the table and results.json report what arseg eval wrote for the stage
        metrics = json.loads((out / stage / "eval" / "val" / "metrics.json").read_text())
        for key in ("miou", "pixel_acc", "val_ar"):
            assert results["results"][stage][key] == pytest.approx(metrics[key])
        # one label PNG per input scene, a valid class map of the input's size
        inputs = sorted((out / "predictions" / "inputs").glob("*.png"))
        labels = sorted((out / "predictions" / stage).glob("*_label.png"))
        assert len(inputs) == 4 and [p.name.replace("_label", "") for p in labels] == [
            p.name for p in inputs
        ]
        label = np.asarray(Image.open(labels[0]))
        assert label.shape == (32, 32) and label.max() < 6
    ar = results["results"]["finetune_ar"]["miou"] - results["results"]["finetune_ce"]["miou"]
    assert f"CE+AR minus CE-only: {ar:+.4f} mIoU" in text
    assert f"{results['results']['finetune_ar']['miou']:>7.4f}" in text
    assert f"output in {out.resolve()}/" in text
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*.ckpt"))
    expected = [f"{s}/checkpoints/best.ckpt" for s in stages] + ["baseline/checkpoints/last.ckpt"]
    assert kept == sorted(expected)
    last = torch.load(out / "baseline/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    # a second demo into the same folder replaces its own runs
    assert main(["demo", "--out", str(out), "--steps", "2", "--size", "32"]) == 0
    assert json.loads((out / "results.json").read_text())["steps"]["baseline"] == 2


@pytest.mark.slow
def test_demo_end_to_end_is_small_and_says_where_it_wrote(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert f"output in {out.resolve()}/" in text
    assert not (out / "finetune_ar" / "checkpoints" / "last.ckpt").exists()
    assert "\r" not in text  # no progress bars outside a terminal
