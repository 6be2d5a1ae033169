"""CamVid in the SegNet layout (11 classes, 360x480).

Layout (as published with the SegNet tutorial)::

    ROOT/train/*.png  ROOT/trainannot/*.png  ROOT/train.txt
    ROOT/val/*.png    ROOT/valannot/*.png    ROOT/val.txt
    ROOT/test/*.png   ROOT/testannot/*.png   ROOT/test.txt   (optional)

Each list line is ``<image path> <label path>`` with a foreign prefix
(``/SegNet/CamVid/train/x.png``): paths are resolved by their last folder and file name,
relative to ROOT. Labels are 8-bit, 0..10 = classes, 11 = void (mapped to 255).

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("camvid", root="../shared/data/camvid", split="val")  # doctest: +SKIP
    >>> len(ds), ds.num_classes  # doctest: +SKIP
    (101, 11)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .base import PairedImageDataset, check_root, read_pair_list
from .registry import register_dataset
from .transforms import IGNORE_INDEX

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


def _resolve_by_folder_and_name(root: Path) -> Callable[[str], Path]:
    """Map a listed path with a foreign prefix (``/SegNet/CamVid/train/x.png``) under ``root``."""

    def resolve(field: str) -> Path:
        parts = Path(field).parts
        if len(parts) < 2:
            raise ValueError(f"path {field!r} has no folder")
        return root / parts[-2] / parts[-1]

    return resolve


@register_dataset("camvid")
class CamVid(PairedImageDataset):
    """CamVid, SegNet preparation: 367 train / 101 val / 233 test images of 360x480.

    Args:
        root: the folder holding ``train.txt``, ``val.txt`` and the image folders.
        split: ``"train"``, ``"val"`` or ``"test"`` (when ``test.txt`` is present).
        transform: joint transform (see :mod:`arseg.data.transforms`); ``None`` = full image.

    Items are ``(image float32 (3, 360, 480), target int64 (360, 480))``, targets in 0..10 or
    255 (void).
    """

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        root = check_root(root, "camvid")
        if split not in ("train", "val", "test"):
            raise ValueError(f"camvid: split must be 'train', 'val' or 'test', got {split!r}")
        list_file = root / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"camvid: list file {list_file} for split {split!r} not found")
        self.root = root
        self.split = split
        label_map = {i: i for i in range(len(CAMVID_CLASSES))}
        label_map[CAMVID_VOID] = IGNORE_INDEX
        label_map[IGNORE_INDEX] = IGNORE_INDEX
        pairs = read_pair_list(list_file, _resolve_by_folder_and_name(root), "camvid")
        super().__init__(pairs, label_map, transform, "camvid")
