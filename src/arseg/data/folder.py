"""Your own data from settings alone: a folder of images and masks (``data.name: folder``).

The default layout (every name below is a setting)::

    ROOT/images/{split}/NAME.jpg     (.jpg, .jpeg or .png; sub-folders allowed)
    ROOT/masks/{split}/NAME.png      the mask of NAME.jpg, the same size
    ROOT/{split}.txt                 optional: the names of the split, one a line
    ROOT/classes.txt                 the class names, one a line, in index order

Images and masks are paired by name (the path under their folder, without the suffix). With
a list file only the listed names are read (a name may carry its image's extension); without
one, every image of the folder is read and an image without a mask, or a mask without an
image, is an error naming the file.

Masks are single-channel PNGs (mode ``L``, or ``P``: a palette PNG's indices are the labels;
16-bit ``I;16`` too) whose values are the class indices, or RGB colour masks read through a
colour table (``mask_colors``). The options and their meaning follow mmsegmentation's
``BaseSegDataset`` where it has a name for them: ``img_dir``, ``ann_dir``, ``img_suffix``,
``seg_map_suffix``, ``reduce_zero_label`` (0 becomes ignored and every other value shifts
down by one, as mmseg's ``LoadAnnotations``) and ``ignore_index`` (the mask value of
unlabelled pixels). Whatever the mask file's ignore value, targets carry 255 there, arseg's
ignore label; 255 in a mask file is always read as ignored.

Images may differ in size: training crops pad with the ignore label, and the engine batches
validation images of one size together (:mod:`arseg.engine.datamodule`).

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("folder", root="../shared/data/stanford_background",
    ...                    split="val")  # doctest: +SKIP
    >>> len(ds), ds.classes[:3]  # doctest: +SKIP
    (107, ('sky', 'tree', 'road'))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .base import (
    DatasetError,
    PairedImageDataset,
    check_root,
    check_same_size,
    read_image,
    read_label,
    read_pair_list,
)
from .colors import default_palette
from .registry import register_dataset
from .transforms import IGNORE_INDEX

__all__ = ["FolderDataset", "colors_to_labels", "read_color_mask"]

#: Image suffixes read by default (matched case-insensitively).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _strings(value: Any, key: str, dataset: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, Sequence)
        or not value
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise ValueError(f"{dataset}: {key} must be a string or a list of strings, got {value!r}")
    return tuple(value)


def _colors(value: Any, key: str, dataset: str) -> list[tuple[int, int, int]]:
    """``[[r, g, b], ...]`` checked: three ints in 0..255 each."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{dataset}: {key} must be a list of [r, g, b] colours, got {value!r}")
    out = []
    for color in value:
        if (
            not isinstance(color, Sequence)
            or isinstance(color, str)
            or len(color) != 3
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
            )
        ):
            raise ValueError(
                f"{dataset}: {key} entries must be [r, g, b] with ints in 0..255, got {color!r}"
            )
        out.append((int(color[0]), int(color[1]), int(color[2])))
    return out


def read_color_mask(path: Path, hint: str = "") -> np.ndarray:
    """Decode an RGB colour mask to ``(H, W, 3)`` uint8 (palette PNGs through their palette)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("RGB", "RGBA", "P"):
                raise DatasetError(
                    f"mask file {path}: expected an RGB colour mask{hint}, got mode {im.mode}"
                )
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"mask file {path} not found") from None
    except UnidentifiedImageError:
        raise DatasetError(f"mask file {path}: not a readable image") from None
    except (OSError, SyntaxError) as err:
        raise DatasetError(f"mask file {path}: cannot decode ({err})") from None


def colors_to_labels(
    rgb: np.ndarray, table: Mapping[tuple[int, int, int], int], path: Path | str = "mask"
) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours -> ``(H, W)`` uint8 labels through ``table``.

    A colour absent from the table is a :class:`DatasetError` naming the file, the colour and
    one pixel that has it.
    """
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    found, inverse = np.unique(codes.ravel(), return_inverse=True)
    keys = {(c >> 16, (c >> 8) & 255, c & 255): c for c in found.tolist()}
    values = np.empty(len(found), dtype=np.uint8)
    for i, (color, code) in enumerate(keys.items()):
        if color not in table:
            y, x = (int(v[0]) for v in np.nonzero(codes == code))
            raise DatasetError(
                f"mask file {path}: colour {list(color)} (e.g. at row {y}, column {x}) is not in "
                f"the colour table (data.options.mask_colors / ignore_colors)"
            )
        values[i] = table[color]
    return values[inverse].reshape(codes.shape)


def _resolve_by_folder_and_name(root: Path) -> Callable[[str], Path]:
    """A listed path with a foreign prefix (``/SegNet/CamVid/train/x.png``): its last folder
    and file name, under ``root``."""

    def resolve(field: str) -> Path:
        parts = Path(field).parts
        if len(parts) < 2:
            raise ValueError(f"path {field!r} has no folder")
        return root / parts[-2] / parts[-1]

    return resolve


@register_dataset("folder")
class FolderDataset(PairedImageDataset):
    """Images and masks in folders, read from settings alone (the module docstring).

    Args:
        root: the dataset folder; the patterns below are relative to it.
        split: any split name; ``{split}`` in the patterns is replaced by it.
        transform: joint transform; ``None`` = full image, normalised.
        img_dir, ann_dir: the folders of the split's images and masks.
        img_suffix: the image file ending(s), e.g. ``".jpg"`` or ``"_leftImg8bit.png"``.
        seg_map_suffix: the mask file ending, e.g. ``".png"`` or ``"_mask.png"``.
        list_file: a file of the split's names, one a line; ``None`` = ``{split}.txt`` where
            it exists, else every image of ``img_dir``. A list file that is set must exist.
        list_format: ``"names"`` (one name a line) or ``"pairs"`` (``<image path> <mask path>``
            a line, each resolved by its last folder and file name under ``root``, as the
            SegNet lists of CamVid; ``img_dir`` and ``ann_dir`` are then unused).
        classes: the class names in index order; ``None`` = the lines of ``classes_file``.
        classes_file: the file of class names under ``root`` when ``classes`` is not given.
        palette: display colours ``[[r, g, b], ...]`` of the classes (pictures, predictions);
            default ``mask_colors`` or distinct hues.
        mask_colors: RGB masks: the colour of each class in the masks, in class order.
        ignore_colors: RGB masks: colours of unlabelled pixels (default none).
        ignore_index: mask value(s) of unlabelled pixels (an int or a list); 255 always is.
        reduce_zero_label: mask value 0 is unlabelled and value ``k`` is class ``k - 1``.

    Items are ``(image float32 (3, H, W), target int64 (H, W))``, targets in ``0..C-1`` or
    255; every sample is checked as it is read (:class:`PairedImageDataset`).
    """

    #: the name in error messages (a preset, e.g. :class:`arseg.data.camvid.CamVid`, sets its own)
    dataset_name = "folder"

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable | None = None,
        *,
        img_dir: str = "images/{split}",
        ann_dir: str = "masks/{split}",
        img_suffix: str | Sequence[str] = IMAGE_SUFFIXES,
        seg_map_suffix: str = ".png",
        list_file: str | None = None,
        list_format: str = "names",
        classes: Sequence[str] | None = None,
        classes_file: str = "classes.txt",
        palette: Sequence[Sequence[int]] | None = None,
        mask_colors: Sequence[Sequence[int]] | None = None,
        ignore_colors: Sequence[Sequence[int]] | None = None,
        ignore_index: int | Sequence[int] = IGNORE_INDEX,
        reduce_zero_label: bool = False,
    ) -> None:
        name = self.dataset_name
        root = check_root(root, name)
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(f"{name}: split must be a name such as 'train', got {split!r}")
        self.root = root
        self.split = split
        self.img_suffixes = _strings(img_suffix, "img_suffix", name)
        mask_suffixes = _strings(seg_map_suffix, "seg_map_suffix", name)
        if len(mask_suffixes) > 1:  # one mask per image: which of several would be read?
            raise ValueError(
                f"{name}: seg_map_suffix must be one suffix, got {list(mask_suffixes)!r}"
            )
        self.seg_map_suffix = mask_suffixes[0]
        if list_format not in ("names", "pairs"):
            raise ValueError(f"{name}: list_format must be 'names' or 'pairs', got {list_format!r}")
        if not isinstance(reduce_zero_label, bool):
            raise ValueError(
                f"{name}: reduce_zero_label must be true or false, got {reduce_zero_label!r}"
            )
        self.classes = self._read_classes(classes, classes_file, reduce_zero_label)
        num = len(self.classes)
        self.mask_colors = (
            None if mask_colors is None else _colors(mask_colors, "mask_colors", name)
        )
        if self.mask_colors is not None and len(self.mask_colors) != num:
            raise ValueError(
                f"{name}: mask_colors has {len(self.mask_colors)} colours for {num} classes"
            )
        if ignore_colors is not None and self.mask_colors is None:
            raise ValueError(f"{name}: ignore_colors needs mask_colors (RGB masks)")
        if self.mask_colors is not None:  # they read mask values, which RGB masks do not hold
            for key, value, default in (
                ("reduce_zero_label", reduce_zero_label, False),
                ("ignore_index", ignore_index, IGNORE_INDEX),
            ):
                if value != default:
                    raise ValueError(
                        f"{name}: {key} applies to mask values, not to RGB masks read through "
                        f"mask_colors (got {key}={value!r}): mark unlabelled colours with "
                        "ignore_colors"
                    )
        self.palette = _colors(palette, "palette", name) if palette is not None else None
        if self.palette is not None and len(self.palette) != num:
            raise ValueError(f"{name}: palette has {len(self.palette)} colours for {num} classes")
        self.palette = self.palette or self.mask_colors or default_palette(num)
        self._color_table = self._make_color_table(ignore_colors)
        label_map = self._make_label_map(ignore_index, reduce_zero_label)
        self.img_dir = root / img_dir.format(split=split)
        self.ann_dir = root / ann_dir.format(split=split)
        self.list_file = self._find_list_file(list_file)
        if self.list_file is not None and list_format == "pairs":
            pairs = read_pair_list(self.list_file, _resolve_by_folder_and_name(root), name)
        elif self.list_file is not None:
            pairs = self._listed_pairs(self.list_file)
        else:
            pairs = self._scanned_pairs()
        super().__init__(pairs, label_map, transform, name)

    # ---------------------------------------------------------------- settings
    def _read_classes(
        self, classes: Sequence[str] | None, classes_file: str, reduce_zero_label: bool
    ) -> tuple[str, ...]:
        name = self.dataset_name
        if classes is None:
            path = self.root / classes_file
            if not path.is_file():
                raise FileNotFoundError(
                    f"{name}: no classes: set data.options.classes (the names in index order) "
                    f"or write {path} (one name a line)"
                )
            classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            where = str(path)
        else:
            where = "classes"
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise ValueError(f"{name}: classes must be a list of names, got {classes!r}")
        if not classes or not all(isinstance(c, str) and c.strip() for c in classes):
            raise ValueError(f"{name}: {where} must name at least one class, got {list(classes)!r}")
        twice = sorted({c for c in classes if list(classes).count(c) > 1})
        if twice:
            raise ValueError(f"{name}: {where} names {twice} more than once")
        limit = 254 if reduce_zero_label else 255  # train ids 0..C-1 stay below 255 (ignore)
        if len(classes) > limit:
            raise ValueError(f"{name}: {where} has {len(classes)} classes, at most {limit} fit")
        return tuple(classes)

    def _make_label_map(self, ignore_index: Any, reduce_zero_label: bool) -> dict[int, int]:
        name = self.dataset_name
        ignored = [ignore_index] if isinstance(ignore_index, int) else ignore_index
        if (
            isinstance(ignore_index, bool)
            or not isinstance(ignored, Sequence)
            or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 16 for v in ignored
            )
        ):
            raise ValueError(
                f"{name}: ignore_index must be a mask value (0..65535) or a list of them, "
                f"got {ignore_index!r}"
            )
        shift = 1 if reduce_zero_label else 0
        label_map = {k + shift: k for k in range(len(self.classes))}
        for value in ignored:
            if value in label_map:
                raise ValueError(
                    f"{name}: ignore_index {value} is also the mask value of class "
                    f"{self.classes[label_map[value]]!r}"
                    + (" (with reduce_zero_label, class k is value k + 1)" if shift else "")
                )
        for value in (*ignored, IGNORE_INDEX, *([0] if reduce_zero_label else [])):
            label_map[value] = IGNORE_INDEX
        return label_map

    def _make_color_table(self, ignore_colors: Any) -> dict[tuple[int, int, int], int] | None:
        if self.mask_colors is None:
            return None
        table: dict[tuple[int, int, int], int] = {}
        for k, color in enumerate(self.mask_colors):
            if color in table:
                raise ValueError(
                    f"{self.dataset_name}: mask_colors gives {list(color)} to both "
                    f"{self.classes[table[color]]!r} and {self.classes[k]!r}"
                )
            table[color] = k
        for color in _colors(ignore_colors or [], "ignore_colors", self.dataset_name):
            if table.get(color, IGNORE_INDEX) != IGNORE_INDEX:
                raise ValueError(
                    f"{self.dataset_name}: ignore_colors holds {list(color)}, the colour of "
                    f"{self.classes[table[color]]!r}"
                )
            table[color] = IGNORE_INDEX
        return table

    def _find_list_file(self, list_file: str | None) -> Path | None:
        if list_file is None:
            default = self.root / f"{self.split}.txt"
            return default if default.is_file() else None
        path = self.root / list_file.format(split=self.split)
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.dataset_name}: list file {path} for split {self.split!r} not found"
            )
        return path

    # ---------------------------------------------------------------- pairing
    def _strip_suffix(self, filename: str, suffixes: Sequence[str]) -> str | None:
        """``filename`` without the longest of ``suffixes`` it ends with (case-insensitive), so
        that ``a_mask.png`` is ``a`` for the suffixes ``.png`` and ``_mask.png``; None if none."""
        lower = filename.lower()
        for suffix in sorted(suffixes, key=len, reverse=True):
            if lower.endswith(suffix.lower()) and len(filename) > len(suffix):
                return filename[: -len(suffix)]
        return None

    def _mask_of(self, stem: str) -> Path:
        return self.ann_dir / f"{stem}{self.seg_map_suffix}"

    @staticmethod
    def _find_file(
        folder: Path,
        stem: str,
        suffixes: Sequence[str],
        listings: dict[Path, dict[str, list[Path]]],
    ) -> Path | None:
        """The file ``folder/stem + suffix`` for the first suffix that has one; the suffix is
        matched case-insensitively (``a.JPG`` for ``.jpg``), as the scan of a folder matches it
        (``listings``: the folders listed so far, filled here)."""
        for suffix in suffixes:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
        parent, name = (folder / stem).parent, Path(stem).name
        if parent not in listings:  # once per folder: {lower-case name: paths}
            listing: dict[str, list[Path]] = {}
            if parent.is_dir():
                for path in parent.iterdir():
                    listing.setdefault(path.name.lower(), []).append(path)
            listings[parent] = listing
        for suffix in suffixes:
            for path in listings[parent].get(f"{name}{suffix}".lower(), []):
                if path.name.startswith(name) and path.is_file():
                    return path
        return None

    def _expected_images(self, stem: str) -> str:
        options = "|".join(self.img_suffixes)
        return str(self.img_dir / stem) + (
            f"{{{options}}}" if len(self.img_suffixes) > 1 else options
        )

    def _check_folder(self, folder: Path, what: str) -> None:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{self.dataset_name}: {what} folder {folder} for split {self.split!r} not found"
            )

    def _listed_pairs(self, list_file: Path) -> list[tuple[Path, Path]]:
        self._check_folder(self.img_dir, "image")
        self._check_folder(self.ann_dir, "mask")
        pairs = []
        listings: dict[Path, dict[str, list[Path]]] = {}
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            suffixes = (*self.img_suffixes, self.seg_map_suffix)  # a.jpg or a.png: a
            stem = self._strip_suffix(entry, suffixes) or entry
            image = self._find_file(self.img_dir, stem, self.img_suffixes, listings)
            if image is None:
                raise FileNotFoundError(
                    f"{self.dataset_name}: {list_file} line {lineno} names {entry!r} but no image "
                    f"{self._expected_images(stem)} exists"
                )
            mask = self._find_file(self.ann_dir, stem, (self.seg_map_suffix,), listings)
            if mask is None:
                mask = self._mask_of(stem)
                raise FileNotFoundError(
                    f"{self.dataset_name}: image {image} has no mask: expected {mask}"
                )
            pairs.append((image, mask))
        if not pairs:
            raise DatasetError(f"{self.dataset_name}: list file {list_file} is empty")
        return pairs

    def _scan(
        self, folder: Path, suffixes: Sequence[str], others: Sequence[str] = ()
    ) -> dict[str, Path]:
        """``{name: path}`` of the files under ``folder`` that end with one of ``suffixes``.
        ``others``: the other kind's suffixes where images and masks share the folder; a file
        belongs to the kind whose matching suffix is longer (``a_mask.png`` is a mask for
        ``_mask.png`` against ``.png``; ``a_img.png`` an image for ``_img.png`` against
        ``.png``)."""
        found: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if any(part.startswith(".") for part in Path(rel).parts) or not path.is_file():
                continue
            stem = self._strip_suffix(rel, suffixes)
            if stem is None:
                continue
            other = self._strip_suffix(rel, others)
            if other is not None and len(other) < len(stem):
                continue
            if stem in found:
                raise DatasetError(
                    f"{self.dataset_name}: two files for one name: {found[stem]} and {path}"
                )
            found[stem] = path
        return found

    def _scanned_pairs(self) -> list[tuple[Path, Path]]:
        name = self.dataset_name
        self._check_folder(self.img_dir, "image")
        self._check_folder(self.ann_dir, "mask")
        same = self.img_dir.resolve() == self.ann_dir.resolve()
        if same and any(self.seg_map_suffix.lower() == s.lower() for s in self.img_suffixes):
            raise ValueError(
                f"{name}: images and masks share the folder {self.img_dir} and the suffix "
                f"{self.seg_map_suffix!r}: set img_suffix or seg_map_suffix to tell them apart"
            )
        images = self._scan(self.img_dir, self.img_suffixes, (self.seg_map_suffix,) if same else ())
        masks = self._scan(self.ann_dir, (self.seg_map_suffix,), self.img_suffixes if same else ())
        if not images:
            raise DatasetError(
                f"{name}: split {self.split!r} is empty: no image ({', '.join(self.img_suffixes)}) "
                f"in {self.img_dir}"
            )
        no_mask = [stem for stem in images if stem not in masks]
        if no_mask:
            raise DatasetError(
                f"{name}: image {images[no_mask[0]]} has no mask: expected "
                f"{self._mask_of(no_mask[0])} ({len(no_mask)} of {len(images)} images have none)"
            )
        no_image = [stem for stem in masks if stem not in images]
        if no_image:
            raise DatasetError(
                f"{name}: mask {masks[no_image[0]]} has no image: expected "
                f"{self._expected_images(no_image[0])} ({len(no_image)} masks have none)"
            )
        return [(images[stem], masks[stem]) for stem in images]

    # ---------------------------------------------------------------- reading
    def sample_name(self, index: int) -> str:
        """The image's path under ``img_dir`` without its suffix (``bonn/0001``): unique in a
        split, where the file stem alone is not once sub-folders repeat names. An image outside
        ``img_dir`` (a list of foreign paths) is named by its stem."""
        image = self.pairs[index][0]
        try:
            rel = image.relative_to(self.img_dir).as_posix()
        except ValueError:
            return image.stem
        return self._strip_suffix(rel, self.img_suffixes) or image.stem

    def read_label_file(self, path: Path) -> np.ndarray:
        if self._color_table is None:
            return read_label(path, hint=" (RGB colour masks need data.options.mask_colors)")
        return read_color_mask(path, hint=" (data.options.mask_colors is set)")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._color_table is None:
            return super().load(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} samples")
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        rgb = self.read_label_file(mask_path)
        check_same_size(image, rgb, image_path, mask_path, self.name)
        return image, colors_to_labels(rgb, self._color_table, mask_path)
