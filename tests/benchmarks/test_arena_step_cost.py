"""benchmarks/arena_step_cost.py: every arm of a study timed beside its control, from the
study's own run configs (a tiny study on synthetic scenes here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import CE_ONLY, write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "arena_step_cost.py"


def test_every_arm_is_timed_against_the_control(tmp_path) -> None:
    dice = {"label": "CE + Dice", "seeds": [1], "overrides": {"loss.terms.dice": {}}}
    study = write_tiny_study(tmp_path, {"ce": CE_ONLY, "dice": dice})
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--study", str(study), "--steps", "1",
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
