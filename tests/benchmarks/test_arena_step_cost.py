"""benchmarks/arena_step_cost.py: every arm of a study timed beside its control, from the
study's own run configs (a tiny study on synthetic scenes here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ..engine.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "arena_step_cost.py"


def test_every_arm_is_timed_against_the_control(tmp_path) -> None:
    write_config(tmp_path, "base.yaml")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml"}))
    study = {
        "name": "tiny",
        "baseline": "base.yaml",
        "finetune": "ft.yaml",
        "control": "ce",
        "arms": {
            "ce": {"label": "CE only", "seeds": [1], "overrides": {"loss.lambda_ar": 0.0}},
            "dice": {"label": "CE + Dice", "seeds": [1], "overrides": {"loss.terms.dice": {}}},
        },
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--study", str(tmp_path / "study.yaml"), "--steps", "1",
         "--rounds", "2", "--loss-reps", "1", "--camvid", str(tmp_path / "no_camvid")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| CE")]
    assert [r[1].strip() for r in rows] == ["CE only", "CE + Dice"]
    assert rows[0][3].strip() == "1.00"  # the control against itself
    assert float(rows[1][3]) > 0 and rows[1][4].strip().endswith("ms")
    assert "round 2/2 done" in proc.stdout


def test_a_bad_count_is_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "0"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--steps must be at least 1, got 0" in proc.stderr
