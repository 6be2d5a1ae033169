"""Shared reading and checking of image/label file pairs.

Every file-backed dataset (CamVid, Cityscapes, NYUv2) is a :class:`PairedImageDataset`: a list
of ``(image path, label path)`` pairs, a lookup table mapping raw label values to train ids,
and the metadata. Reading checks every sample as it goes (cheap numpy checks): unreadable or
truncated files, image/label size mismatch and label values that are neither a class nor
ignored raise :class:`DatasetError` naming the file. Nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .transforms import IGNORE_INDEX, build_eval_transform

__all__ = [
    "DatasetError",
    "PairedImageDataset",
    "apply_transform",
    "check_root",
    "check_same_size",
    "make_label_lut",
    "read_image",
    "read_label",
    "read_pair_list",
]


class DatasetError(ValueError):
    """A dataset file is unreadable or its content is not what the dataset expects."""


def check_root(root: str | Path | None, dataset: str) -> Path:
    """Return ``root`` as a Path, or raise a clear error when it is unset or not a folder."""
    if root is None:
        raise ValueError(f"{dataset}: root is required (the dataset folder), got None")
    if not isinstance(root, (str, Path)):
        raise TypeError(f"{dataset}: root must be a str or Path, got {type(root).__name__}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: root folder {path} does not exist")
    return path


def read_pair_list(
    list_file: Path, resolve: Callable[[str], Path], dataset: str
) -> list[tuple[Path, Path]]:
    """Parse a list file of ``<image path> <label path>`` lines (any whitespace between them).

    ``resolve`` turns each path as written into a file path (list files often carry a foreign
    prefix or are relative to the dataset root). Blank lines are skipped; a line without exactly
    two fields or an empty list is a :class:`DatasetError` naming the file and line.
    """
    pairs = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DatasetError(
                f"{dataset}: {list_file} line {lineno}: expected '<image path> <label path>', "
                f"got {line!r}"
            )
        try:
            pairs.append((resolve(fields[0]), resolve(fields[1])))
        except ValueError as err:
            raise DatasetError(f"{dataset}: {list_file} line {lineno}: {err}") from None
    if not pairs:
        raise DatasetError(f"{dataset}: list file {list_file} is empty")
    return pairs


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to a uint8 RGB array ``(H, W, 3)``; errors name the file.

    Grey, palette and RGBA images are converted to RGB. Integer grey images wider than 8 bits
    (PIL modes ``I;16*`` and ``I``) are kept as they are when their values fit in 0..255, and
    otherwise scaled down (0..65535 -> 0..255, or by their maximum beyond that): PIL's own
    conversion would clip them at 255. Float images (``F``) are read as [0, 1] when they fit in
    it, else clipped to [0, 255].
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I") or im.mode == "F":
                grey = np.asarray(im, dtype=np.float64)
                top = float(grey.max()) if grey.size else 0.0
                if im.mode == "F":
                    grey = grey * 255 if top <= 1 else grey
                elif top > 255:
                    grey = grey * (255 / 65535 if top <= 65535 else 255 / top)
                grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.array(im)  # a writable copy (torch.from_numpy needs one)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"image file {path}: not a readable image") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data
        raise DatasetError(f"image file {path}: cannot decode ({err})") from None


def read_label(path: Path, hint: str = "") -> np.ndarray:
    """Decode a single-channel label file to an integer array ``(H, W)``; errors name the file.

    A palette PNG (mode ``P``) gives its indices. ``hint`` is added to the error of a file
    that is not single-channel.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    f"label file {path}: expected a single-channel image (mode L, P, I or I;16), "
                    f"got mode {im.mode}{hint}"
                )
            return np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"label file {path} not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"label file {path}: not a readable image") from None
    except (OSError, SyntaxError) as err:
        raise DatasetError(f"label file {path}: cannot decode ({err})") from None


def check_same_size(
    image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path, dataset: str
) -> None:
    """A :class:`DatasetError` naming both files when the label's size is not the image's."""
    if label.shape[:2] != image.shape[:2]:
        raise DatasetError(
            f"{dataset}: size mismatch, image {image_path} is {image.shape[0]}x{image.shape[1]} "
            f"but label {label_path} is {label.shape[0]}x{label.shape[1]} (HxW)"
        )


def make_label_lut(mapping: Mapping[int, int], size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables for raw label values ``0..size-1``.

    Args:
        mapping: raw value -> train id (``0..C-1`` or 255); raw values absent are invalid.

    Returns:
        ``(lut uint8 (size,), valid bool (size,))``.
    """
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    valid = np.zeros(size, dtype=bool)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
        valid[raw] = True
    return lut, valid


def apply_transform(
    transform: Callable, image: np.ndarray, target: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a joint transform on an (H, W, 3) uint8 image and its (H, W) label array."""
    return transform(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
        tv_tensors.Mask(torch.from_numpy(target)),
    )


class PairedImageDataset(Dataset):
    """Images and single-channel label maps listed as file pairs.

    Subclasses fill ``classes``, ``palette`` and call ``__init__`` with their pairs and label
    mapping.

    Args:
        pairs: ``(image path, label path)`` per sample; each must exist (checked here).
        label_map: raw label value -> train id (``0..C-1`` or 255). Raw values not in the map
            raise :class:`DatasetError` when read.
        transform: ``(Image uint8, Mask uint8) -> (image, target)``; ``None`` = full image,
            normalised (:func:`build_eval_transform`).
        name: the dataset name used in error messages.
        label_map_index: with several label maps, which one each sample uses (e.g. Cityscapes
            ``labelIds`` vs ``labelTrainIds`` files); ``None`` = the single map for all.
    """

    classes: tuple[str, ...] = ()
    palette: list[tuple[int, int, int]] = []  # noqa: RUF012 - overwritten per subclass
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        label_map: Mapping[int, int] | Sequence[Mapping[int, int]],
        transform: Callable | None,
        name: str,
        label_map_index: Sequence[int] | None = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(
                f"{name}: transform must be callable or None, got {type(transform).__name__}"
            )
        for image_path, label_path in pairs:
            for kind, path in (("image", image_path), ("label", label_path)):
                if not path.is_file():
                    raise FileNotFoundError(f"{name}: {kind} file {path} listed but not found")
        self.name = name
        self.pairs = list(pairs)
        self.transform = transform if transform is not None else build_eval_transform()
        maps = [label_map] if isinstance(label_map, Mapping) else list(label_map)
        self._luts = [make_label_lut(m, 1 << 16) for m in maps]
        self._lut_index = list(label_map_index) if label_map_index is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.pairs)

    def sample_name(self, index: int) -> str:
        """The image file stem of sample ``index``."""
        return self.pairs[index][0].stem

    def image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of sample ``index``'s image, from its file header (nothing decoded)."""
        path = self.pairs[index][0]
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(
                f"{self.name}: image file {path}: not a readable image ({err})"
            ) from None
        return height, width

    def read_label_file(self, path: Path) -> np.ndarray:
        """The raw label array of a label file (a dataset may decode its own encoding)."""
        return read_label(path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw sample: ``(image uint8 (H, W, 3), target uint8 (H, W) in train ids / 255)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        raw = self.read_label_file(label_path)
        check_same_size(image, raw, image_path, label_path, self.name)
        lut, valid = self._luts[0 if self._lut_index is None else self._lut_index[index]]
        if raw.dtype != np.uint8 and raw.dtype != np.uint16:
            if raw.min() < 0 or raw.max() >= len(lut):
                raise DatasetError(
                    f"{self.name}: label file {label_path} has values outside 0..{len(lut) - 1}"
                )
            raw = raw.astype(np.int64)
        ok = valid[raw]
        if not ok.all():
            bad = np.unique(raw[~ok])
            raise DatasetError(
                f"{self.name}: label file {label_path} has values {bad.tolist()[:10]} that are "
                f"neither classes nor ignored (allowed raw values: {_ranges(np.flatnonzero(valid))})"
            )
        return image, lut[raw]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_transform(self.transform, *self.load(index))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={getattr(self, 'split', '?')!r}, samples={len(self)})"


def _ranges(values: np.ndarray) -> str:
    """Compact text for sorted ints: ``0..10, 255``."""
    parts: list[str] = []
    start = prev = None
    for v in values.tolist():
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}..{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}..{prev}" if prev != start else f"{start}")
    return ", ".join(parts)
