"""best.ckpt, summary.json and the checkpoints' record of the best score always agree, through
mid-epoch checkpoints, interruptions and resumes."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from arseg.cli import main

ARGS = ["trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=4"]  # 4 steps per epoch


def _val_scores(run):
    with open(run / "metrics.csv") as f:
        return [
            (int(r["step"]), float(r["val/miou"])) for r in csv.DictReader(f) if r.get("val/miou")
        ]


def _recorded_best(ckpt):
    """The best val/miou a checkpoint carries for the next start (whatever callback keeps it)."""
    scores = []
    for state in ckpt["callbacks"].values():
        for key in ("best_miou", "best_model_score"):
            if state.get(key) is not None:
                scores.append(float(state[key]))
    assert len(scores) == 1, ckpt["callbacks"]
    return scores[0]


def test_best_checkpoint_summary_and_last_checkpoint_agree(tmp_path, tiny_config):
    cfg = tiny_config()
    run = tmp_path / "run"
    assert main(["fit", str(cfg), "--run-dir", str(run), *ARGS]) == 0
    scores = _val_scores(run)
    assert len(scores) == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    best_step, best = max(scores, key=lambda s: s[1])
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best_ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert summary["best_miou"] == pytest.approx(best, abs=1e-6)
    assert _recorded_best(last) == pytest.approx(best, abs=1e-6)
    assert _recorded_best(best_ckpt) == pytest.approx(best, abs=1e-6)
    assert best_ckpt["global_step"] == best_step + 1 or best_ckpt["global_step"] == best_step
    final = summary["final"]
    assert final["val/miou"] == pytest.approx(scores[-1][1], abs=1e-6)

    # --resume of the finished run: nothing to train, the summary keeps its best and final
    assert main(["fit", str(cfg), "--run-dir", str(run), "--resume", *ARGS]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["best_miou"] == pytest.approx(best, abs=1e-6)
    assert again["final"] == pytest.approx(final)
    assert again["steps"] == summary["steps"] == 12
