"""Class colours: a default palette, label maps in colour and blended over their images.

Example:
    >>> import numpy as np
    >>> from arseg.data.colors import colorize, default_palette, overlay
    >>> palette = default_palette(3)
    >>> labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    >>> colorize(labels, palette).shape, colorize(labels, palette)[1, 1].tolist()
    ((2, 2, 3), [0, 0, 0])
    >>> overlay(np.zeros((2, 2, 3), np.uint8), colorize(labels, palette)).dtype
    dtype('uint8')
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

__all__ = ["colorize", "default_palette", "overlay"]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours (evenly spaced hues) for classes that have none of their own."""
    out = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb(i / max(num_classes, 1), 0.75, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids outside the palette (e.g. 255) are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[labels.astype(np.uint8)]


def overlay(image: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB image with a colour label map."""
    return (
        (image.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha)
        .round()
        .astype(np.uint8)
    )
