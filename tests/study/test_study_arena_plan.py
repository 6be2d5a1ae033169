"""The arena's plan: timing the recipe on the run configs it will train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from arseg.engine.config import load_config
from arseg.study.arena_plan import time_recipe

from .conftest import write_config


def _mixed_size_folder(root: Path) -> Path:
    """A folder dataset whose val images have two sizes, the first two differing."""
    rng = np.random.default_rng(0)
    shapes = {"train": [(32, 32)] * 4, "val": [(32, 32), (24, 32), (32, 32)]}
    for split, sizes in shapes.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, shape in enumerate(sizes):
            image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            mask = rng.integers(0, 3, shape, dtype=np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{split}{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def test_the_recipe_is_timed_on_val_images_of_different_sizes(tmp_path) -> None:
    root = _mixed_size_folder(tmp_path / "data")
    data = {"name": "folder", "root": str(root), "options": {}, "train_options": {}}
    data.update({"val_options": {}, "eval_resize": None, "val_batch_size": 4})
    cfg = load_config(write_config(tmp_path, data=data))
    timing = time_recipe({"ce": cfg}, steps=1, budget_s=30.0)
    assert timing["val_samples"] == 3
    assert timing["image_s"] > 0
