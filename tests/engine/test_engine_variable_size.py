"""Validation on images of different sizes: each image is evaluated at its own size, batched
with images of its size only, so the scores do not depend on ``data.val_batch_size``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from arseg.engine.config import load_config
from arseg.engine.datamodule import SeedDataModule, SizeGroupedBatchSampler
from arseg.models import is_model, register_model

from ..conftest import write_folder_dataset


def test_tiny_cnn(num_classes: int, pretrained: bool = False) -> nn.Module:
    """A 3-layer CNN (stride 2, BatchNorm, a dilated 3x3): its outputs near an image's border
    depend on what lies beyond it, so a padded batch would change them."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, num_classes, 1),
    )


test_tiny_cnn.__test__ = False  # a model builder, not a test
if not is_model("test_tiny_cnn"):
    register_model(test_tiny_cnn)


def test_size_grouped_batches_hold_one_size_and_every_index_once():
    sizes = [(2, 3), (3, 2), (2, 3), (2, 3), (4, 4), (3, 2), (2, 3)]
    indices = [10, 11, 12, 13, 14, 15, 16]  # e.g. a process's shard
    sampler = SizeGroupedBatchSampler(indices, sizes, batch_size=3)
    batches = list(sampler)
    assert batches == [[10, 12, 13], [16], [11, 15], [14]]
    assert len(sampler) == 4 and sampler.order == [10, 12, 13, 16, 11, 15, 14]
    size_of = dict(zip(indices, sizes))
    assert all(len({size_of[i] for i in batch}) == 1 for batch in batches)
    with pytest.raises(ValueError, match="2 indices but 1 sizes"):
        SizeGroupedBatchSampler([0, 1], [(1, 1)], 2)


def _folder(root: Path) -> Path:
    """4 train and 7 val images of 3 sizes (one portrait), 3 classes."""
    val = [(32, 40), (24, 40), (32, 40), (40, 32), (24, 40), (32, 40), (40, 32)]
    write_folder_dataset(root, {"train": [(32, 40)] * 4, "val": val}, classes=["a", "b", "c"])
    return root


def test_evaluate_gives_the_same_scores_and_rows_at_any_val_batch_size(tmp_path, tiny_config):
    from arseg.cli import main
    from arseg.engine import evaluate

    root = _folder(tmp_path / "data")
    data = {"name": "folder", "root": str(root), "options": {}, "train_options": {}}
    data.update({"val_options": {}, "crop_size": [32, 32], "val_batch_size": 4})
    config = tiny_config(data=data, trainer={"max_steps": 2})
    run = tmp_path / "run"
    assert main(["fit", str(config), "--run-dir", str(run)]) == 0
    results = {}
    for batch in (1, 8):
        out = tmp_path / f"eval{batch}"
        results[batch] = evaluate(
            run,
            out_dir=out,
            data_overrides={"val_batch_size": batch},
            accelerator="cpu",
            progress=False,
        )
        results[batch]["rows"] = np.load(out / "per_image_confusion.npy")
        results[batch]["bands"] = np.load(out / "per_image_boundary.npy")
    one, eight = results[1], results[8]
    assert one["num_images"] == 7 and one["sample_names"] == [f"val{i}" for i in range(7)]
    assert one["miou"] == eight["miou"] and one["boundary_iou"] == eight["boundary_iou"]
    assert one["val_ar"] == pytest.approx(eight["val_ar"], rel=1e-6)
    # the per-image rows come back in the dataset's order (the batches were not)
    assert np.array_equal(one["rows"], eight["rows"])
    assert np.array_equal(one["bands"], eight["bands"])
    pixels = one["rows"].sum(axis=(1, 2))
    masks = [np.array(Image.open(root / "masks" / "val" / f"val{i}.png")) for i in range(7)]
    assert pixels.tolist() == [int((m != 255).sum()) for m in masks]


def _val_scores(cfg: dict, batch_size: int) -> dict[str, float]:
    """The engine's validation (its loader and validation step) at one val batch size."""
    from arseg.engine.module import SegmentationModule

    cfg = {**cfg, "data": {**cfg["data"], "val_batch_size": batch_size}}
    data = SeedDataModule(cfg)
    data.setup("validate")
    torch.manual_seed(0)
    module = SegmentationModule(cfg, class_names=data.val_set.classes).eval()
    with torch.no_grad():
        for k, batch in enumerate(data.val_dataloader()):
            module.validation_step(batch, k)
    scores = module.val_metrics.compute()
    return {"miou": float(scores["miou"]), "pixel_acc": float(scores["pixel_acc"])}


def test_real_stanford_val_miou_is_the_same_at_val_batch_size_8_and_1(stanford_dir, tiny_config):
    config = tiny_config(
        data={
            "name": "folder",
            "root": str(stanford_dir),
            **{"options": {}, "train_options": {}, "val_options": {}, "num_workers": 0},
        },
        model={"name": "test_tiny_cnn", "num_classes": 8, "options": {}},
    )
    cfg = load_config(config)
    one, eight = _val_scores(cfg, 1), _val_scores(cfg, 8)
    assert one == eight
    assert 0 < one["miou"] < 1
