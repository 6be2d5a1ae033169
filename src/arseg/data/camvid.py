"""CamVid in the SegNet layout (11 classes, 360x480): a preset of the folder reader.

Layout (as published with the SegNet tutorial)::

    ROOT/train/*.png  ROOT/trainannot/*.png  ROOT/train.txt
    ROOT/val/*.png    ROOT/valannot/*.png    ROOT/val.txt
    ROOT/test/*.png   ROOT/testannot/*.png   ROOT/test.txt   (optional)

Each list line is ``<image path> <label path>`` with a foreign prefix
(``/SegNet/CamVid/train/x.png``): paths are resolved by their last folder and file name,
relative to ROOT. Labels are 8-bit, 0..10 = classes, 11 = void (mapped to 255). Nothing here
reads files: ``camvid`` is :class:`arseg.data.folder.FolderDataset` with the settings of
:data:`CAMVID_LAYOUT` (the same as ``data.name: folder`` with those ``data.options``).

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("camvid", root="../shared/data/camvid", split="val")  # doctest: +SKIP
    >>> len(ds), ds.num_classes  # doctest: +SKIP
    (101, 11)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import check_root
from .folder import FolderDataset
from .registry import register_dataset

CAMVID_CLASSES: tuple[str, ...] = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
# The SegNet tutorial colours.
CAMVID_PALETTE: list[tuple[int, int, int]] = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]
CAMVID_VOID = 11


#: The folder reader's settings for the SegNet layout.
CAMVID_LAYOUT: dict[str, Any] = {
    "img_dir": "{split}",
    "ann_dir": "{split}annot",
    "img_suffix": ".png",
    "seg_map_suffix": ".png",
    "list_file": "{split}.txt",
    "list_format": "pairs",
    "classes": list(CAMVID_CLASSES),
    "palette": [list(c) for c in CAMVID_PALETTE],
    "ignore_index": CAMVID_VOID,
}


@register_dataset("camvid")
class CamVid(FolderDataset):
    """CamVid, SegNet preparation: 367 train / 101 val / 233 test images of 360x480.

    Args:
        root: the folder holding ``train.txt``, ``val.txt`` and the image folders.
        split: ``"train"``, ``"val"`` or ``"test"`` (when ``test.txt`` is present).
        transform: joint transform (see :mod:`arseg.data.transforms`); ``None`` = full image.

    Items are ``(image float32 (3, 360, 480), target int64 (360, 480))``, targets in 0..10 or
    255 (void).
    """

    dataset_name = "camvid"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        check_root(root, "camvid")
        if split not in ("train", "val", "test"):
            raise ValueError(f"camvid: split must be 'train', 'val' or 'test', got {split!r}")
        super().__init__(root, split, transform, **CAMVID_LAYOUT)
