"""Cityscapes (fine annotations), 19 train classes, in the official layout.

Layout (as the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpack)::

    ROOT/leftImg8bit/{train,val,test}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    ROOT/gtFine/.../{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (optional)

The label table (:data:`CITYSCAPES_LABELS`) is the one the dataset publishes in its official
scripts (``cityscapesscripts/helpers/labels.py``, mcordts/cityscapesScripts): 35 labels with
id, train id, name, category, category id, instances flag, ``ignoreInEval`` and colour, written
here as data so that reading Cityscapes needs no extra package. The 19 evaluated classes are
the labels with ``ignore_in_eval`` false, in train-id order (road = id 7 -> train id 0, ...,
bicycle = id 33 -> 18). Where ``*_gtFine_labelTrainIds.png`` exists (written by the official
``preparation/createTrainIdLabelImgs.py``) it is read as is; otherwise ``*_gtFine_labelIds.png``
is mapped on the fly. Ids that are not evaluated map to 255.

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("cityscapes", root="data/cityscapes", split="val")  # doctest: +SKIP
    >>> len(ds), ds.num_classes  # doctest: +SKIP
    (500, 19)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from .base import DatasetError, PairedImageDataset, check_root
from .registry import register_dataset
from .transforms import IGNORE_INDEX

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELS",
    "CITYSCAPES_PALETTE",
    "ID_TO_TRAIN_ID",
    "Cityscapes",
    "CityscapesLabel",
]


class CityscapesLabel(NamedTuple):
    """One row of the official Cityscapes label table (the fields of ``labels.py``'s ``Label``).

    Attributes:
        name: e.g. ``"road"``, ``"traffic light"``.
        id: the value in ``*_gtFine_labelIds.png`` (0..33; -1 for license plate, which no
            labelIds image holds).
        train_id: 0..18 for the evaluated classes, 255 (or -1 for license plate) otherwise.
        category: ``"void"``, ``"flat"``, ``"construction"``, ``"object"``, ``"nature"``,
            ``"sky"``, ``"human"`` or ``"vehicle"``.
        category_id: 0..7, in that order.
        has_instances: whether the label has instance annotations.
        ignore_in_eval: whether the benchmark ignores it.
        color: ``(R, G, B)`` of the official colour images.
    """

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


_L = CityscapesLabel
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = (
    _L("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    _L("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    _L("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    _L("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    _L("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    _L("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    _L("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    _L("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    _L("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    _L("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    _L("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    _L("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    _L("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    _L("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    _L("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    _L("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    _L("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    _L("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    _L("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    _L("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    _L("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    _L("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    _L("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    _L("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    _L("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    _L("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    _L("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    _L("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    _L("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    _L("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    _L("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    _L("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    _L("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    _L("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    _L("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)
del _L

_TRAIN_LABELS = sorted(
    (lab for lab in CITYSCAPES_LABELS if not lab.ignore_in_eval), key=lambda lab: lab.train_id
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name.replace(" ", "_") for lab in _TRAIN_LABELS)
CITYSCAPES_PALETTE: list[tuple[int, int, int]] = [lab.color for lab in _TRAIN_LABELS]
# labelIds value -> train id (255 where not evaluated); license plate has id -1 and never
# appears in the PNGs.
ID_TO_TRAIN_ID: dict[int, int] = {
    lab.id: IGNORE_INDEX if lab.ignore_in_eval else lab.train_id
    for lab in CITYSCAPES_LABELS
    if lab.id >= 0
}
TRAIN_ID_IDENTITY: dict[int, int] = {
    **{i: i for i in range(len(CITYSCAPES_CLASSES))},
    IGNORE_INDEX: IGNORE_INDEX,
}
_IMAGE_SUFFIX = "_leftImg8bit.png"


@register_dataset("cityscapes")
class Cityscapes(PairedImageDataset):
    """Cityscapes fine: 2975 train / 500 val / 1525 test images of 1024x2048.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: joint transform; ``None`` = full image, normalised.

    Items are ``(image float32 (3, 1024, 2048), target int64 (1024, 2048))``, targets in
    0..18 or 255. ``sample_name(i)`` is ``{city}_{seq}_{frame}``.
    """

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        root = check_root(root, "cityscapes")
        if split not in ("train", "val", "test"):
            raise ValueError(f"cityscapes: split must be 'train', 'val' or 'test', got {split!r}")
        image_root = root / "leftImg8bit" / split
        label_root = root / "gtFine" / split
        for folder in (image_root, label_root):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"cityscapes: folder {folder} not found (expected the official layout "
                    "ROOT/leftImg8bit/{split}/{city}/ and ROOT/gtFine/{split}/{city}/)"
                )
        images = sorted(image_root.glob(f"*/*{_IMAGE_SUFFIX}"))
        if not images:
            raise DatasetError(f"cityscapes: no *{_IMAGE_SUFFIX} files under {image_root}/<city>/")
        pairs, which = [], []
        for image in images:
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            city_dir = label_root / image.parent.name
            train_ids = city_dir / f"{stem}_gtFine_labelTrainIds.png"
            if train_ids.is_file():
                pairs.append((image, train_ids))
                which.append(1)
                continue
            ids = city_dir / f"{stem}_gtFine_labelIds.png"
            if not ids.is_file():
                raise FileNotFoundError(
                    f"cityscapes: label for {image} not found: neither {ids} nor {train_ids.name}"
                )
            pairs.append((image, ids))
            which.append(0)
        self.root = root
        self.split = split
        super().__init__(pairs, [ID_TO_TRAIN_ID, TRAIN_ID_IDENTITY], transform, "cityscapes", which)

    def sample_name(self, index: int) -> str:
        return self.pairs[index][0].name[: -len(_IMAGE_SUFFIX)]
