"""Synthetic scenes: deterministic, any size, no files, where local colour is ambiguous.

Each scene is a textured background (random tint, oriented stripes, pixel noise) with a few
objects placed in separate cells of a grid, so they never overlap. Six classes:

====  ==========  ===================================================================
id    name        appearance
====  ==========  ===================================================================
0     background  textured, muted colours
1     disc        red filled circle
2     box         red filled square               (same colour as *disc*: differs by shape)
3     frame       green square ring
4     core        blue filled circle inside a frame
5     pond        blue filled circle on background (same colour and size as *core*:
                  differs only by what surrounds it)
====  ==========  ===================================================================

Telling *disc* from *box* needs the object's outline, and *core* from *pond* needs its
surroundings: per-pixel colour alone cannot do it, so pairwise structure matters.
Sample ``i`` of a split is a pure function of ``(seed, split, i, size)``.

Example:
    >>> from arseg.data import build_dataset
    >>> ds = build_dataset("synthetic", split="train", num_samples=8, size=(64, 64), seed=0)
    >>> image, target = ds[3]
    >>> image.shape, target.shape, ds.num_classes, ds.sample_name(3)
    (torch.Size([3, 64, 64]), torch.Size([64, 64]), 6, 'synthetic_000003')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import apply_transform
from .registry import register_dataset
from .transforms import IGNORE_INDEX, build_eval_transform

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "box", "frame", "core", "pond")
# Label colours (not the rendered image colours): grey and five Okabe-Ito colours, so that
# prediction maps stay readable with colour-vision deficiencies (disc/box and core/pond, the
# pairs the image colours cannot tell apart, get contrasting hues).
SYNTHETIC_PALETTE: list[tuple[int, int, int]] = [
    (120, 120, 120),  # background: grey
    (213, 94, 0),  # disc: vermillion
    (86, 180, 233),  # box: sky blue
    (0, 158, 115),  # frame: bluish green
    (240, 228, 66),  # core: yellow
    (204, 121, 167),  # pond: reddish purple
]
BACKGROUND, DISC, BOX, FRAME, CORE, POND = range(6)

_RED = np.array([200.0, 45.0, 45.0], dtype=np.float32)
_GREEN = np.array([45.0, 165.0, 65.0], dtype=np.float32)
_BLUE = np.array([45.0, 75.0, 200.0], dtype=np.float32)
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
_DEFAULT_NUM_SAMPLES = {"train": 512, "val": 128, "test": 128}
# Object kinds drawn per cell: 0 disc, 1 box, 2 framed core, 3 pond.
_KIND_PROBS = np.array([0.25, 0.25, 0.25, 0.25])


def render_scene(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``(image uint8 (H, W, 3), label uint8 (H, W) in 0..5)``."""
    # Background: tint + oriented stripes + noise.
    tint = rng.uniform(90.0, 150.0, size=3).astype(np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, np.pi)
    period = rng.uniform(4.0, 12.0)
    stripes = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / period))
    image = tint + (18.0 * stripes)[..., None]
    label = np.zeros((height, width), dtype=np.uint8)

    # Objects: one per chosen cell of a grid of roughly square cells.
    rows = 3 if height <= width else max(3, round(3 * height / width))
    cols = 3 if width <= height else max(3, round(3 * width / height))
    cell_h, cell_w = height / rows, width / cols
    n_cells = rows * cols
    n_objects = int(rng.integers(n_cells // 2, n_cells + 1))
    cells = rng.choice(n_cells, size=min(n_objects, n_cells), replace=False)
    kinds = rng.choice(4, size=len(cells), p=_KIND_PROBS)
    for cell, kind in zip(cells.tolist(), kinds.tolist()):
        r0, c0 = divmod(cell, cols)
        y0, y1 = round(r0 * cell_h), round((r0 + 1) * cell_h)
        x0, x1 = round(c0 * cell_w), round((c0 + 1) * cell_w)
        half = min(y1 - y0, x1 - x0) / 2.0
        if half < 2.0:
            continue
        size = half * rng.uniform(0.6, 0.95)  # the object's half extent
        cy = y0 + half + rng.uniform(-(half - size), half - size) + (y1 - y0) / 2.0 - half
        cx = x0 + half + rng.uniform(-(half - size), half - size) + (x1 - x0) / 2.0 - half
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        win_img = image[y0:y1, x0:x1]
        win_lab = label[y0:y1, x0:x1]
        shade = rng.uniform(0.85, 1.15)
        if kind == 0:  # disc
            m = dy * dy + dx * dx <= size * size
            win_img[m] = _RED * shade
            win_lab[m] = DISC
        elif kind == 1:  # box, area close to a disc of the same extent
            s = size * 0.89
            m = (np.abs(dy) <= s) & (np.abs(dx) <= s)
            win_img[m] = _RED * shade
            win_lab[m] = BOX
        else:
            if kind == 2:  # frame with a core inside
                thick = max(1.0, 0.22 * size)
                inner = size - thick
                box_out = (np.abs(dy) <= size) & (np.abs(dx) <= size)
                box_in = (np.abs(dy) <= inner) & (np.abs(dx) <= inner)
                m = box_out & ~box_in
                win_img[m] = _GREEN * shade
                win_lab[m] = FRAME
                radius = inner * rng.uniform(0.6, 0.9)
                cls = CORE
            else:  # pond: the same disc, sized like a core
                radius = size * rng.uniform(0.47, 0.7)
                cls = POND
            m = dy * dy + dx * dx <= radius * radius
            win_img[m] = _BLUE * rng.uniform(0.85, 1.15)
            win_lab[m] = cls
    noise = rng.standard_normal((height, width, 3), dtype=np.float32)
    image += 14.0 * noise
    return np.clip(image, 0.0, 255.0).astype(np.uint8), label


@register_dataset("synthetic")
class SyntheticScenes(Dataset):
    """Deterministic synthetic scenes (6 classes) generated on the fly.

    Args:
        root: ignored (accepted so every dataset builds the same way); must be ``None``.
        split: ``"train"``, ``"val"`` or ``"test"``: independent streams of scenes.
        transform: joint transform; ``None`` = full image, normalised.
        num_samples: dataset length (default 512 train, 128 val/test).
        size: ``(height, width)`` or an int, at least 8.
        seed: base seed; sample ``i`` depends only on ``(seed, split, i, size)``.

    Items are ``(image float32 (3, H, W), target int64 (H, W))`` with targets in 0..5 (this
    dataset has no ignored pixels, though transforms may pad with 255).
    """

    classes = SYNTHETIC_CLASSES
    palette = SYNTHETIC_PALETTE
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        root: None = None,
        split: str = "train",
        transform: Callable | None = None,
        num_samples: int | None = None,
        size: int | Sequence[int] = (128, 128),
        seed: int = 0,
    ) -> None:
        if root is not None:
            raise ValueError(f"synthetic: takes no root (it reads no files), got root={root!r}")
        if split not in _SPLIT_CODES:
            raise ValueError(
                f"synthetic: split must be one of {sorted(_SPLIT_CODES)}, got {split!r}"
            )
        if num_samples is None:
            num_samples = _DEFAULT_NUM_SAMPLES[split]
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
            raise ValueError(f"synthetic: num_samples must be an int >= 0, got {num_samples!r}")
        if isinstance(size, int) and not isinstance(size, bool):
            size = (size, size)
        if (
            not isinstance(size, Sequence)
            or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        ):
            raise TypeError(f"synthetic: size must be an int or (height, width) ints, got {size!r}")
        if min(size) < 8:
            raise ValueError(f"synthetic: size must be at least 8x8, got {tuple(size)}")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"synthetic: seed must be an int >= 0, got {seed!r}")
        if transform is not None and not callable(transform):
            raise TypeError(
                f"synthetic: transform must be callable or None, got {type(transform).__name__}"
            )
        self.split = split
        self.num_samples = num_samples
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self.transform = transform if transform is not None else build_eval_transform()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def sample_name(self, index: int) -> str:
        return f"synthetic_{index:06d}"

    def image_size(self, index: int) -> tuple[int, int]:
        """``(H, W)`` of every scene (the ``size`` setting)."""
        return self.size

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw scene: ``(image uint8 (H, W, 3), target uint8 (H, W))``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(
                f"synthetic: index {index} out of range for {self.num_samples} samples"
            )
        rng = np.random.default_rng((self.seed, _SPLIT_CODES[self.split], index))
        return render_scene(rng, *self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_transform(self.transform, *self.load(index))

    def __repr__(self) -> str:
        return (
            f"SyntheticScenes(split={self.split!r}, samples={self.num_samples}, "
            f"size={self.size}, seed={self.seed})"
        )
