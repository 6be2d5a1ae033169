"""benchmarks/cpu_precision.py: float32 and bf16 autocast steps of one arm, side by side (a tiny
study on synthetic scenes here, random batches in place of CamVid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import CE_ONLY, write_tiny_study

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cpu_precision.py"


def test_both_precisions_are_timed_and_compared(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--study", str(write_tiny_study(tmp_path, {"ce": CE_ONLY})), "--steps", "1",
         "--rounds", "2", "--camvid", str(tmp_path / "no_camvid")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.startswith("| ")][2:]
    assert [r[1].strip() for r in rows] == ["float32", "bf16 autocast"]
    assert rows[0][4].strip() == "1.00" and float(rows[1][4]) > 0
    assert "CPU bf16 instructions:" in proc.stdout


def test_an_unknown_arm_is_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--study", str(write_tiny_study(tmp_path, {"ce": CE_ONLY})), "--arm", "nope"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--arm 'nope' is not an arm of" in proc.stderr
