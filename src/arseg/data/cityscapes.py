"""Cityscapes (fine annotations), 19 train classes, in the official layout.

Layout (as the official ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
unpack)::

    ROOT/leftImg8bit/{train,val,test}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{train,val,test}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png
    ROOT/gtFine/.../{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (optional)

The 19 classes and the id -> train id table come from the official label definitions
(``cityscapesscripts.helpers.labels``). Where ``*_gtFine_labelTrainIds.png`` exists (written by
``cityscapesscripts/preparation/createTrainIdLabelImgs.py``) it is read as is; otherwise
``*_gtFine_labelIds.png`` is mapped on the fly. Ids that are not evaluated map to 255.

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("cityscapes", root="data/cityscapes", split="val")  # doctest: +SKIP
    >>> len(ds), ds.num_classes  # doctest: +SKIP
    (500, 19)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from .base import DatasetError, PairedImageDataset, check_root
from .registry import register_dataset
from .transforms import IGNORE_INDEX

_TRAIN_LABELS = sorted(
    (lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(lab.name.replace(" ", "_") for lab in _TRAIN_LABELS)
CITYSCAPES_PALETTE: list[tuple[int, int, int]] = [tuple(lab.color) for lab in _TRAIN_LABELS]
# labelIds value -> train id (255 where not evaluated); license plate has id -1 and never
# appears in the PNGs.
ID_TO_TRAIN_ID: dict[int, int] = {
    lab.id: (lab.trainId if 0 <= lab.trainId < IGNORE_INDEX else IGNORE_INDEX)
    for lab in _CS_LABELS
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
