"""``arseg demo`` keeps only what a newcomer uses, and says where its output went."""

from __future__ import annotations

import shutil

import pytest
import torch

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


@pytest.mark.slow
def test_demo_end_to_end_is_small_and_says_where_it_wrote(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "4", "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert f"output in {out.resolve()}/" in text
    assert not (out / "finetune_ar" / "checkpoints" / "last.ckpt").exists()
    assert "\r" not in text  # no progress bars outside a terminal
