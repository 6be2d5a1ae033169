"""Cityscapes: a tiny official-layout tree, labelIds and labelTrainIds, checked value by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image
from torch.utils.data import DataLoader

from arseg.data import DatasetError, build_dataset

H, W = 8, 16


def write_frame(root: Path, split: str, city: str, frame: int, label: np.ndarray, kind: str):
    stem = f"{city}_000000_{frame:06d}"
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(frame).integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png")
    Image.fromarray(label.astype(np.uint8)).save(gt_dir / f"{stem}_gtFine_{kind}.png")
    # the other official annotation files that sit beside them
    Image.fromarray(np.zeros((*label.shape, 3), dtype=np.uint8)).save(
        gt_dir / f"{stem}_gtFine_color.png"
    )
    return stem


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 34, (H, W))
    train_ids = rng.integers(0, 19, (H, W))
    train_ids[0, :3] = 255
    root = tmp_path / "cityscapes"
    write_frame(root, "train", "aachen", 19, ids, "labelIds")
    write_frame(root, "train", "bremen", 7, train_ids, "labelTrainIds")
    # a frame with both files: labelTrainIds wins
    write_frame(root, "val", "lindau", 1, train_ids, "labelTrainIds")
    write_frame(root, "val", "lindau", 1, np.zeros((H, W)), "labelIds")
    return root, ids, train_ids


def test_reads_both_label_kinds_value_by_value(tree):
    root, ids, train_ids = tree
    ds = build_dataset("cityscapes", root=root, split="train")
    assert len(ds) == 2 and ds.num_classes == 19 and len(ds.palette) == 19
    assert ds.classes[0] == "road" and ds.classes[18] == "bicycle"
    assert ds.sample_name(0) == "aachen_000000_000019"
    _, y = ds.load(0)
    for (r, c), v in np.ndenumerate(ids):
        train_id = id2label[int(v)].trainId
        assert y[r, c] == (train_id if 0 <= train_id < 255 else 255)
    _, y = ds.load(1)
    assert np.array_equal(y, train_ids)
    _, y = build_dataset("cityscapes", root=root, split="val").load(0)
    assert np.array_equal(y, train_ids)


def test_dataloader_two_workers(tree):
    root, _, _ = tree
    loader = DataLoader(build_dataset("cityscapes", root=root), batch_size=2, num_workers=2)
    ((x, y),) = list(loader)
    assert x.shape == (2, 3, H, W) and y.dtype == torch.int64


def test_errors(tree, tmp_path):
    root, _, _ = tree
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/test"):
        build_dataset("cityscapes", root=root, split="test")
    (root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"aachen_000000_000019_gtFine_labelIds\.png"):
        build_dataset("cityscapes", root=root, split="train")
    # train ids outside 0..18 / 255
    bad = np.full((H, W), 19)
    write_frame(tmp_path / "c2", "val", "x", 1, bad, "labelTrainIds")
    with pytest.raises(
        DatasetError, match=r"x_000000_000001_gtFine_labelTrainIds.png has values \[19\]"
    ):
        build_dataset("cityscapes", root=tmp_path / "c2", split="val")[0]
    # labelIds above 33
    write_frame(tmp_path / "c3", "val", "x", 1, np.full((H, W), 34), "labelIds")
    with pytest.raises(DatasetError, match=r"values \[34\]"):
        build_dataset("cityscapes", root=tmp_path / "c3", split="val")[0]
    (tmp_path / "c4/leftImg8bit/val").mkdir(parents=True)
    (tmp_path / "c4/gtFine/val").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no \*_leftImg8bit\.png"):
        build_dataset("cityscapes", root=tmp_path / "c4", split="val")
