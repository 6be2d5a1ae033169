"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests run on small CPUs (CI: 2 cores); more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def camvid_root() -> Path:
    """The shared real CamVid data: $ARSEG_CAMVID, else ../shared/data/camvid beside the checkout."""
    return Path(os.environ.get("ARSEG_CAMVID", PROJECT_ROOT.parent / "shared" / "data" / "camvid"))


@pytest.fixture
def camvid_dir() -> Path:
    root = camvid_root()
    if not (root / "train.txt").is_file():
        pytest.skip(f"real CamVid data not found at {root}")
    return root
