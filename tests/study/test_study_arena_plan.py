"""The arena's plan: timing the recipe on the run configs it will train."""

from __future__ import annotations

from pathlib import Path

from arseg.engine.config import load_config
from arseg.study.arena_plan import time_recipe

from ..conftest import write_folder_dataset
from .conftest import write_config


def _mixed_size_folder(root: Path) -> Path:
    """A folder dataset whose val images have two sizes, the first two differing."""
    sizes = {"train": [(32, 32)] * 4, "val": [(32, 32), (24, 32), (32, 32)]}
    write_folder_dataset(root, sizes, values=(0, 1, 2), classes=["a", "b", "c"])
    return root


def test_the_recipe_is_timed_on_val_images_of_different_sizes(tmp_path) -> None:
    root = _mixed_size_folder(tmp_path / "data")
    data = {"name": "folder", "root": str(root), "options": {}, "train_options": {}}
    data.update({"val_options": {}, "eval_resize": None, "val_batch_size": 4})
    cfg = load_config(write_config(tmp_path, data=data))
    timing = time_recipe({"ce": cfg}, steps=1, budget_s=30.0)
    assert timing["val_samples"] == 3
    assert timing["image_s"] > 0
