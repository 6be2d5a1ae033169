"""benchmarks/cpu_precision.py: float32 and bf16 autocast steps of one arm, side by side (a tiny
study on synthetic scenes here, random batches in place of CamVid)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ..engine.conftest import write_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cpu_precision.py"


def _study(tmp_path: Path) -> Path:
    write_config(tmp_path, "base.yaml")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml"}))
    study = {
        "name": "tiny",
        "baseline": "base.yaml",
        "finetune": "ft.yaml",
        "control": "ce",
        "arms": {"ce": {"label": "CE only", "seeds": [1], "overrides": {"loss.lambda_ar": 0.0}}},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "study.yaml"


def test_both_precisions_are_timed_and_compared(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--study", str(_study(tmp_path)), "--steps", "1",
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
        [sys.executable, str(SCRIPT), "--study", str(_study(tmp_path)), "--arm", "nope"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--arm 'nope' is not an arm of" in proc.stderr
