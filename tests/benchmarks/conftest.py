"""Shared by the benchmark scripts' tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..engine.conftest import write_config

CE_ONLY = {"label": "CE only", "seeds": [1], "overrides": {"loss.lambda_ar": 0.0}}


def write_tiny_study(folder: Path, arms: dict[str, Any]) -> Path:
    """A study on the tiny engine config (synthetic scenes): ``base.yaml``, a fine-tune
    ``ft.yaml`` equal to it, and ``study.yaml`` with control ``ce`` and ``arms``. Returns the
    study's path."""
    write_config(folder, "base.yaml")
    (folder / "ft.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml"}))
    study = {"name": "tiny", "baseline": "base.yaml", "finetune": "ft.yaml", "control": "ce"}
    (folder / "study.yaml").write_text(yaml.safe_dump({**study, "arms": arms}))
    return folder / "study.yaml"
