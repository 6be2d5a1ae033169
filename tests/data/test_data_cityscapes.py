"""Cityscapes: the label table against the published values; a tiny official-layout tree,
labelIds and labelTrainIds, checked value by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from arseg.data import DatasetError, build_dataset
from arseg.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELS,
    CITYSCAPES_PALETTE,
    ID_TO_TRAIN_ID,
)

# The 19 benchmark classes as the Cityscapes benchmark and its scripts publish them:
# (train id, labelIds id, name, colour).
PUBLISHED_TRAIN_CLASSES = [
    (0, 7, "road", (128, 64, 128)),
    (1, 8, "sidewalk", (244, 35, 232)),
    (2, 11, "building", (70, 70, 70)),
    (3, 12, "wall", (102, 102, 156)),
    (4, 13, "fence", (190, 153, 153)),
    (5, 17, "pole", (153, 153, 153)),
    (6, 19, "traffic light", (250, 170, 30)),
    (7, 20, "traffic sign", (220, 220, 0)),
    (8, 21, "vegetation", (107, 142, 35)),
    (9, 22, "terrain", (152, 251, 152)),
    (10, 23, "sky", (70, 130, 180)),
    (11, 24, "person", (220, 20, 60)),
    (12, 25, "rider", (255, 0, 0)),
    (13, 26, "car", (0, 0, 142)),
    (14, 27, "truck", (0, 0, 70)),
    (15, 28, "bus", (0, 60, 100)),
    (16, 31, "train", (0, 80, 100)),
    (17, 32, "motorcycle", (0, 0, 230)),
    (18, 33, "bicycle", (119, 11, 32)),
]
# the 15 labels of ids 0..33 the benchmark ignores (34 - 19)
PUBLISHED_IGNORED_IDS = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}

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


def test_label_table_matches_the_published_values():
    assert len(CITYSCAPES_LABELS) == 35
    by_id = {lab.id: lab for lab in CITYSCAPES_LABELS}
    assert sorted(by_id) == list(range(-1, 34))
    for train_id, label_id, name, color in PUBLISHED_TRAIN_CLASSES:
        lab = by_id[label_id]
        assert (lab.name, lab.train_id, lab.color, lab.ignore_in_eval) == (
            name,
            train_id,
            color,
            False,
        )
    assert CITYSCAPES_CLASSES == tuple(
        n.replace(" ", "_") for _, _, n, _ in PUBLISHED_TRAIN_CLASSES
    )
    assert CITYSCAPES_PALETTE == [c for _, _, _, c in PUBLISHED_TRAIN_CLASSES]
    ignored = {lab.id for lab in CITYSCAPES_LABELS if lab.ignore_in_eval and lab.id >= 0}
    assert ignored == PUBLISHED_IGNORED_IDS
    assert all(by_id[i].train_id == 255 for i in PUBLISHED_IGNORED_IDS)
    plate = by_id[-1]
    assert (plate.name, plate.train_id, plate.category, plate.ignore_in_eval) == (
        "license plate",
        -1,
        "vehicle",
        True,
    )
    assert ID_TO_TRAIN_ID == {i: by_id[i].train_id if i not in ignored else 255 for i in range(34)}
    # categories in category-id order; instance classes are the humans and vehicles (not the
    # license plate)
    cats = {lab.category_id: lab.category for lab in CITYSCAPES_LABELS}
    assert [cats[i] for i in range(8)] == [
        "void",
        "flat",
        "construction",
        "object",
        "nature",
        "sky",
        "human",
        "vehicle",
    ]
    instances = {lab.name for lab in CITYSCAPES_LABELS if lab.has_instances}
    assert instances == {
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "caravan",
        "trailer",
        "train",
        "motorcycle",
        "bicycle",
    }
    colors = {lab.name: lab.color for lab in CITYSCAPES_LABELS}
    assert colors["dynamic"] == (111, 74, 0) and colors["ground"] == (81, 0, 81)
    assert colors["parking"] == (250, 170, 160) and colors["rail track"] == (230, 150, 140)
    assert colors["guard rail"] == (180, 165, 180) and colors["tunnel"] == (150, 120, 90)
    assert colors["caravan"] == (0, 0, 90) and colors["trailer"] == (0, 0, 110)


def test_label_table_equals_the_official_scripts_when_installed():
    # cityscapesscripts is no dependency; where it happens to be installed, compare row by row
    labels = pytest.importorskip("cityscapesscripts.helpers.labels").labels
    official = [
        (x.name, x.id, x.trainId, x.category, x.categoryId, x.hasInstances, x.ignoreInEval, x.color)
        for x in labels
    ]
    assert [tuple(lab) for lab in CITYSCAPES_LABELS] == [
        (*row[:7], tuple(row[7])) for row in official
    ]


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
    id_to_train = {lid: tid for tid, lid, _, _ in PUBLISHED_TRAIN_CLASSES}
    for (r, c), v in np.ndenumerate(ids):
        assert y[r, c] == id_to_train.get(int(v), 255)
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
