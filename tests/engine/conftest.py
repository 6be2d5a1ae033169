"""Fixtures of the engine tests: tiny configs (a 1.8M-parameter model on 32x32 synthetic scenes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "lwrefinenet_mbv2", "options": {"decoder_channels": 8}},
    "data": {
        "name": "synthetic",
        "options": {"size": [32, 32]},
        "train_options": {"num_samples": 16},
        "val_options": {"num_samples": 7},
        "crop_size": [32, 32],
        "scale_range": [0.75, 1.25],
        "batch_size": 4,
        "val_batch_size": 2,
        "num_workers": 0,
    },
    "optim": {"lr": 0.01},
    "trainer": {
        "max_epochs": 1,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "num_threads": 1,
        "deterministic": True,
    },
}


def write_config(directory: Path, name: str = "tiny.yaml", **sections) -> Path:
    """Write TINY (with ``sections`` merged one level deep) to ``directory/name``."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = directory / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Factory: ``tiny_config(**sections)`` -> path of a tiny YAML config in ``tmp_path``."""

    def make(name: str = "tiny.yaml", **sections) -> Path:
        return write_config(tmp_path, name, **sections)

    return make


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here with one BLAS thread (``one_thread`` of tests/conftest.py)."""
