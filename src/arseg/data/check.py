"""Check a dataset split before training on it: decode every sample, count, and draw a few.

:func:`check_split` reads every image and mask of a split the way training will (each sample
is checked as it is read: a missing or unreadable file, a size mismatch, a mask value that is
neither a class nor ignored, an RGB colour missing from the table), so the first problem
stops it with one line naming the file. :func:`format_report` prints what it found (image
count, size histogram, each class's pixel share and image count) and :func:`write_picture`
draws a few images with their masks overlaid in the class colours, with a legend.

Example:
    >>> from arseg.data import build_dataset
    >>> from arseg.data.check import check_split, format_report
    >>> ds = build_dataset("synthetic", split="val", num_samples=4, size=(32, 48))
    >>> report = check_split(ds)
    >>> report.num_images, report.sizes
    (4, {(32, 48): 4})
    >>> print(format_report(report, "synthetic val").splitlines()[1])
    sizes (HxW): 32x48: 4
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .colors import colorize, default_palette, overlay
from .transforms import IGNORE_INDEX

__all__ = ["SplitReport", "check_split", "format_report", "write_picture"]

# How many sizes the report names; the rest are counted.
_SIZES_SHOWN = 8


@dataclass
class SplitReport:
    """What :func:`check_split` found in a split.

    Attributes:
        classes: the class names.
        num_images: samples read.
        sizes: ``(H, W) -> number of images``, most frequent first.
        pixels: ``(256,)`` int64 pixel count of each target value (255 = ignored).
        images: ``(256,)`` int64 number of images holding each target value.
        seconds: time spent reading.
        samples: ``(index, image, target)`` of the samples kept for the picture.
    """

    classes: tuple[str, ...]
    num_images: int
    sizes: dict[tuple[int, int], int]
    pixels: np.ndarray
    images: np.ndarray
    seconds: float
    samples: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)

    def share(self, value: int) -> float:
        """Percent of all pixels whose target is ``value``."""
        return 100.0 * float(self.pixels[value]) / max(int(self.pixels.sum()), 1)


def check_split(dataset: Any, keep: int = 6, progress: bool = False) -> SplitReport:
    """Decode every sample of ``dataset`` (its ``load(i)``: raw image and target, untransformed).

    Args:
        dataset: an arseg dataset (``load``, ``classes``; e.g. :func:`arseg.data.build_dataset`).
        keep: how many samples, evenly spaced over the split, to keep for the picture.
        progress: show a progress bar (tqdm, on stderr).

    Raises:
        DatasetError, FileNotFoundError: the first bad sample, naming its file.
        ValueError: an empty split.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{getattr(dataset, 'name', 'dataset')}: the split has no samples")
    kept = set(np.linspace(0, n - 1, min(keep, n)).round().astype(int).tolist())
    pixels = np.zeros(256, dtype=np.int64)
    images = np.zeros(256, dtype=np.int64)
    sizes: dict[tuple[int, int], int] = {}
    samples = []
    start = time.perf_counter()
    indices: Any = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="reading", unit="image", leave=False)
    for i in indices:
        image, target = dataset.load(i)
        counts = np.bincount(target.ravel(), minlength=256)
        pixels += counts
        images += counts > 0
        size = (int(target.shape[0]), int(target.shape[1]))
        sizes[size] = sizes.get(size, 0) + 1
        if i in kept:
            samples.append((i, image, target))
    sizes = dict(sorted(sizes.items(), key=lambda item: (-item[1], item[0])))
    return SplitReport(
        classes=tuple(dataset.classes),
        num_images=n,
        sizes=sizes,
        pixels=pixels,
        images=images,
        seconds=time.perf_counter() - start,
        samples=samples,
    )


def format_report(report: SplitReport, title: str, notes: Sequence[str] = ()) -> str:
    """The lines ``arseg data check`` prints: count, ``notes``, sizes, then a line per class."""
    sizes = [f"{h}x{w}: {k}" for (h, w), k in list(report.sizes.items())[:_SIZES_SHOWN]]
    rest = list(report.sizes.values())[_SIZES_SHOWN:]
    if rest:
        sizes.append(f"and {len(rest)} more sizes ({sum(rest)} images)")
    lines = [
        f"{title}: {report.num_images} samples OK, read in {report.seconds:.1f} s",
        *notes,
        f"sizes (HxW): {', '.join(sizes)}",
        f"  {'id':>3} {'class':<20s} {'pixels':>8}  {'images':>6}",
    ]
    rows = [(c, name) for c, name in enumerate(report.classes)] + [(IGNORE_INDEX, "(ignored)")]
    for value, name in rows:
        lines.append(
            f"  {value:3d} {name:<20s} {report.share(value):6.2f} %  {report.images[value]:6d}"
        )
    return "\n".join(lines)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _fit(array: np.ndarray, box: tuple[int, int], label: bool) -> Any:
    """An image (or a colour map) scaled to fit ``box`` (W, H), keeping its aspect ratio."""
    from PIL import Image

    im = Image.fromarray(array)
    scale = min(box[0] / im.width, box[1] / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    return im.resize(size, Image.Resampling.NEAREST if label else Image.Resampling.BILINEAR)


def write_picture(
    report: SplitReport,
    path: str | Path,
    palette: list[tuple[int, int, int]] | None = None,
    names: list[str] | None = None,
    title: str = "",
) -> Path:
    """Draw the kept samples (image and mask overlaid in the class colours, side by side) and a
    legend of the classes with their pixel shares; write a PNG to ``path``.

    Args:
        report: from :func:`check_split`.
        palette: one ``(r, g, b)`` per class (default: distinct hues); ignored pixels are dark.
        names: a caption per kept sample (default: its index).
        title: a line above the grid.
    """
    from PIL import Image, ImageDraw

    num = len(report.classes)
    palette = list(palette or default_palette(num))[:num]
    cell, gap, caption = (320, 240), 8, 20
    per_row = 2  # samples a row, each an (image, overlay) pair
    rows = -(-len(report.samples) // per_row)
    width = gap + per_row * (2 * cell[0] + 3 * gap)
    font, small = _font(16), _font(14)
    legend_cols = max(1, width // 260)
    legend_rows = -(-(num + 1) // legend_cols)
    top = 30 if title else gap
    height = top + rows * (cell[1] + caption + gap) + gap + legend_rows * 24 + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill=(0, 0, 0), font=font)
    for k, (index, image, target) in enumerate(report.samples):
        row, col = divmod(k, per_row)
        x0 = gap + col * (2 * cell[0] + 3 * gap)
        y0 = top + row * (cell[1] + caption + gap)
        shown = _fit(image, cell, label=False)
        color = _fit(colorize(target, palette), cell, label=True).resize(shown.size)
        mixed = Image.fromarray(overlay(np.asarray(shown), np.asarray(color), alpha=0.6))
        canvas.paste(shown, (x0, y0))
        canvas.paste(mixed, (x0 + cell[0] + gap, y0))
        name = names[k] if names is not None else f"#{index}"
        text = f"{name}  ({target.shape[0]}x{target.shape[1]})"
        draw.text((x0, y0 + cell[1] + 2), text, fill=(0, 0, 0), font=small)
    y = top + rows * (cell[1] + caption + gap) + gap
    entries = [(palette[c], f"{c} {report.classes[c]} {report.share(c):.1f} %") for c in range(num)]
    entries.append(((0, 0, 0), f"ignored {report.share(IGNORE_INDEX):.1f} % (dark)"))
    for k, (rgb, text) in enumerate(entries):
        row, col = divmod(k, legend_cols)
        x, yy = gap + col * 260, y + row * 24
        draw.rectangle([x, yy + 2, x + 18, yy + 18], fill=tuple(rgb), outline=(0, 0, 0))
        draw.text((x + 26, yy + 2), text, fill=(0, 0, 0), font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
