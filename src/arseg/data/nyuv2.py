"""NYUv2 with the 40-class labelling of Gupta et al. (795 train / 654 test images, 480x640).

The official files (the user downloads them; their licence forbids redistribution):

- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3, i.e. HDF5. ``images`` is stored transposed as
  ``(N, 3, W, H)`` uint8 and ``labels`` as ``(N, W, H)`` uint16 (0 = unlabelled, 1..894 the
  fine classes), N = 1449.
- ``splits.mat``: ``trainNdxs`` (795) and ``testNdxs`` (654), 1-based indices into the 1449.
- ``classMapping40.mat``: ``mapClass`` (1 x 894, fine class -> 1..40) and ``className``
  (1 x 40 cell of names).

:func:`prepare_nyuv2` converts them once to the layout that the Light-Weight RefineNet code
trains from, which :class:`NYUv2` reads (and which a copy of that preprocessed data already
has)::

    DIR/train.nyu, DIR/val.nyu       lines "<image path>\\t<label path>", relative to DIR
    DIR/train_images/000003.png ...   RGB, named by the 1-based index in the .mat
    DIR/train_labels/000003.png ...   8-bit: 0..39 = the 40 classes, 255 = unlabelled
    DIR/val_images/ DIR/val_labels/   the 654 official test images

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("nyuv2", root="data/nyuv2", split="val")  # doctest: +SKIP
    >>> len(ds), ds.num_classes  # doctest: +SKIP
    (654, 40)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetError, PairedImageDataset, check_root, read_pair_list
from .registry import register_dataset
from .transforms import IGNORE_INDEX

NYUV2_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel",
    "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip


def _bit_palette(n: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bits of the class id spread over R, G, B), skipping black."""
    palette = []
    for i in range(1, n + 1):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


NYUV2_PALETTE = _bit_palette(len(NYUV2_CLASSES))
# Split name -> (list file, image folder, label folder) in the prepared / LW-RefineNet layout.
_SPLIT_FILES = {
    "train": ("train.nyu", "train_images", "train_labels"),
    "val": ("val.nyu", "val_images", "val_labels"),
}


@register_dataset("nyuv2")
class NYUv2(PairedImageDataset):
    """NYUv2-40 from a prepared folder (see :func:`prepare_nyuv2`) or LW-RefineNet's layout.

    Args:
        root: the folder holding ``train.nyu`` / ``val.nyu``.
        split: ``"train"`` (795) or ``"val"`` (654; the official test split, also accepted as
            ``"test"``).
        transform: joint transform; ``None`` = full image, normalised.

    Items are ``(image float32 (3, 480, 640), target int64 (480, 640))``, targets in 0..39
    or 255.
    """

    classes = NYUV2_CLASSES
    palette = NYUV2_PALETTE

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
    ) -> None:
        root = check_root(root, "nyuv2")
        if split == "test":
            split = "val"
        if split not in _SPLIT_FILES:
            raise ValueError(f"nyuv2: split must be 'train', 'val' or 'test', got {split!r}")
        list_file = root / _SPLIT_FILES[split][0]
        if not list_file.is_file():
            raise FileNotFoundError(
                f"nyuv2: list file {list_file} not found; prepare the official files first "
                "with `arseg data prepare nyuv2 --mat ... --splits ... --mapping ... --out DIR`"
            )
        self.root = root
        self.split = split
        pairs = read_pair_list(list_file, lambda field: root / field, "nyuv2")
        label_map = {i: i for i in range(len(NYUV2_CLASSES))}
        label_map[IGNORE_INDEX] = IGNORE_INDEX
        super().__init__(pairs, label_map, transform, "nyuv2")


# ---------------------------------------------------------------------------- preparation


def _load_mat(path: Path, what: str) -> dict[str, np.ndarray]:
    """Read a MATLAB file with scipy (v5 / v7), falling back to HDF5 (v7.3)."""
    import h5py
    import scipy.io

    if not path.is_file():
        raise FileNotFoundError(f"nyuv2: {what} file {path} not found")
    try:
        return scipy.io.loadmat(str(path))
    except NotImplementedError:  # v7.3: HDF5
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]).T for k in f if isinstance(f[k], h5py.Dataset)}
    except (ValueError, OSError, TypeError) as err:
        raise DatasetError(
            f"nyuv2: {what} file {path} is not a readable MATLAB file ({err})"
        ) from None


def load_splits(path: str | Path) -> dict[str, np.ndarray]:
    """``splits.mat`` -> ``{"train": 1-based indices, "val": 1-based indices}`` (int64)."""
    path = Path(path)
    mat = _load_mat(path, "splits")
    out = {}
    for split, key in (("train", "trainNdxs"), ("val", "testNdxs")):
        if key not in mat:
            raise DatasetError(f"nyuv2: splits file {path} has no variable {key!r}")
        values = np.asarray(mat[key]).ravel()
        if values.size == 0 or not np.all(values == np.round(values)) or values.min() < 1:
            raise DatasetError(f"nyuv2: splits file {path}: {key} must hold 1-based indices")
        out[split] = values.astype(np.int64)
    if np.intersect1d(out["train"], out["val"]).size:
        raise DatasetError(f"nyuv2: splits file {path}: trainNdxs and testNdxs overlap")
    return out


def load_class_mapping(path: str | Path) -> np.ndarray:
    """``classMapping40.mat`` -> lookup table uint8 ``(895,)``: fine label -> 0..39 or 255.

    Entry 0 (unlabelled) maps to 255; entry ``k`` (fine class ``k``) to ``mapClass[k-1] - 1``.
    """
    path = Path(path)
    mat = _load_mat(path, "class mapping")
    if "mapClass" not in mat:
        raise DatasetError(f"nyuv2: class mapping file {path} has no variable 'mapClass'")
    map_class = np.asarray(mat["mapClass"]).ravel()
    if map_class.size == 0 or not np.issubdtype(map_class.dtype, np.number):
        raise DatasetError(f"nyuv2: class mapping file {path}: mapClass must be a numeric vector")
    if map_class.min() < 0 or map_class.max() > len(NYUV2_CLASSES):
        raise DatasetError(
            f"nyuv2: class mapping file {path}: mapClass values must lie in 1..40 "
            f"(0 = unlabelled), got {map_class.min()}..{map_class.max()}"
        )
    lut = np.full(map_class.size + 1, IGNORE_INDEX, dtype=np.uint8)
    mapped = map_class.astype(np.int64)
    lut[1:] = np.where(mapped > 0, mapped - 1, IGNORE_INDEX)
    return lut


def prepare_nyuv2(
    mat: str | Path,
    splits: str | Path,
    mapping: str | Path,
    out: str | Path,
    progress: bool = True,
) -> dict[str, int]:
    """Convert the official NYUv2 files to the folder :class:`NYUv2` reads.

    Args:
        mat: ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 / HDF5).
        splits: ``splits.mat`` (``trainNdxs``, ``testNdxs``, 1-based).
        mapping: ``classMapping40.mat`` (``mapClass``: 894 fine classes -> 1..40).
        out: output folder (created; existing files are overwritten).
        progress: show a tqdm progress bar.

    Returns:
        ``{"train": n_train, "val": n_val}``, the number of samples written per split.
    """
    import h5py
    from tqdm.auto import tqdm

    mat, out = Path(mat), Path(out)
    split_indices = load_splits(splits)
    lut = load_class_mapping(mapping)
    if not mat.is_file():
        raise FileNotFoundError(f"nyuv2: labelled data file {mat} not found")
    try:
        f = h5py.File(mat, "r")
    except OSError as err:
        raise DatasetError(
            f"nyuv2: {mat} is not a MATLAB v7.3 (HDF5) file as nyu_depth_v2_labeled.mat is ({err})"
        ) from None
    with f:
        for key in ("images", "labels"):
            if key not in f:
                raise DatasetError(f"nyuv2: {mat} has no dataset {key!r}")
        images, labels = f["images"], f["labels"]
        if images.ndim != 4 or images.shape[1] != 3 or labels.ndim != 3:
            raise DatasetError(
                f"nyuv2: {mat}: expected images (N, 3, W, H) and labels (N, W, H) as stored by "
                f"MATLAB v7.3, got {images.shape} and {labels.shape}"
            )
        if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
            raise DatasetError(
                f"nyuv2: {mat}: images {images.shape} and labels {labels.shape} do not match"
            )
        n = images.shape[0]
        for split, indices in split_indices.items():
            if indices.max() > n:
                raise DatasetError(
                    f"nyuv2: split {split!r} refers to image {indices.max()} but {mat} has {n}"
                )
        total = sum(len(v) for v in split_indices.values())
        bar = tqdm(total=total, desc="nyuv2", unit="img", disable=not progress)
        counts = {}
        for split, indices in split_indices.items():
            list_name, image_dir, label_dir = _SPLIT_FILES[split]
            (out / image_dir).mkdir(parents=True, exist_ok=True)
            (out / label_dir).mkdir(parents=True, exist_ok=True)
            lines = []
            for idx in indices.tolist():
                image = np.ascontiguousarray(images[idx - 1].transpose(2, 1, 0))  # (H, W, 3)
                fine = labels[idx - 1].T  # (H, W)
                if fine.max() >= len(lut):
                    raise DatasetError(
                        f"nyuv2: {mat}: labels of image {idx} hold value {int(fine.max())} "
                        f"but the class mapping covers 0..{len(lut) - 1}"
                    )
                name = f"{idx:06d}.png"
                Image.fromarray(image.astype(np.uint8, copy=False)).save(out / image_dir / name)
                Image.fromarray(lut[fine]).save(out / label_dir / name)
                lines.append(f"{image_dir}/{name}\t{label_dir}/{name}")
                bar.update(1)
            (out / list_name).write_text("\n".join(lines) + "\n")
            counts[split] = len(lines)
        bar.close()
    return counts
