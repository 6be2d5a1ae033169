"""Position sampling shared by the logits and the label map.

The AR loss compares the class distributions predicted at N scene points with the labels at the
*same* scene points. A grid of ``gh x gw`` cells is laid over the image; each cell contributes one
position, taken with nearest-neighbour sampling at the **cell centre**: along an axis of ``size``
pixels the ``i``-th of ``grid`` cells samples index

    floor((i + 0.5) * size / grid)

(the convention of PIL, scikit-image and PyTorch's ``mode="nearest-exact"``; PyTorch's plain
``"nearest"`` uses ``floor(i * size / grid)``, which is shifted towards the top-left corner).
Because the formula only depends on the relative position ``(i + 0.5) / grid``, the logits
(``h x w``, e.g. 1/4 of the labels) and the labels (``H x W``) are sampled at the same scene
points: the label picked for a position lies inside the logit cell it is paired with.

Positions are ordered row-major inside a grid, and the grids are concatenated in the order
given (the paper's ``(12, 6)``: 144 + 36 = 180 positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Grid = tuple[int, int]

__all__ = [
    "cell_centre_indices",
    "grid_indices",
    "normalize_scales",
    "num_positions",
    "sample_positions",
]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def normalize_scales(scales: int | Sequence[int | Sequence[int]] | None) -> list[Grid] | None:
    """Turn ``scales`` into a list of ``(gh, gw)`` grids (``None`` stays ``None``).

    Args:
        scales: ``None`` (full resolution), an int ``s`` (one ``s x s`` grid), or a sequence whose
            items are ints ``s`` (``s x s``) or pairs ``(gh, gw)``. ``(12, 6)`` means the two
            square grids 12x12 and 6x6; a single 12x6 grid is written ``((12, 6),)``.

    Raises:
        TypeError: an item is neither an int nor a pair of ints.
        ValueError: a grid size is not positive, or the sequence is empty.

    Example:
        >>> normalize_scales((12, 6))
        [(12, 12), (6, 6)]
        >>> normalize_scales([(4, 8), 2])
        [(4, 8), (2, 2)]
    """
    if scales is None:
        return None
    if _is_int(scales):
        scales = (scales,)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(
            "scales must be None, an int or a sequence of ints / (gh, gw) pairs, "
            f"got {type(scales).__name__}"
        )
    if len(scales) == 0:
        raise ValueError("scales must contain at least one grid size, got an empty sequence")
    grids: list[Grid] = []
    for item in scales:
        if _is_int(item):
            grid = (item, item)
        elif (
            isinstance(item, Sequence)
            and not isinstance(item, (str, bytes))
            and len(item) == 2
            and all(_is_int(v) for v in item)
        ):
            grid = (item[0], item[1])
        else:
            raise TypeError(f"each scale must be an int or a pair of ints (gh, gw), got {item!r}")
        if grid[0] <= 0 or grid[1] <= 0:
            raise ValueError(f"grid sizes must be positive, got {item!r} in scales={scales!r}")
        grids.append(grid)
    return grids


def num_positions(grids: list[Grid]) -> int:
    """Number of sampled positions N = sum of gh * gw over the grids."""
    return sum(gh * gw for gh, gw in grids)


def cell_centre_indices(size: int, grid: int, device: torch.device | str | None = None) -> Tensor:
    """Indices ``floor((i + 0.5) * size / grid)`` for ``i = 0 .. grid - 1`` (int64, exact).

    Computed in integer arithmetic as ``((2 i + 1) * size) // (2 grid)``, so no rounding can move
    an index. ``grid`` may exceed ``size`` (indices then repeat).

    Example:
        >>> cell_centre_indices(8, 2).tolist()
        [2, 6]
        >>> cell_centre_indices(3, 6).tolist()
        [0, 0, 1, 1, 2, 2]
    """
    i = torch.arange(grid, device=device, dtype=torch.int64)
    return torch.div((2 * i + 1) * size, 2 * grid, rounding_mode="floor")


def grid_indices(
    height: int, width: int, grids: list[Grid], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Row and column indices (N,) int64 of all cell centres of ``grids`` on a (height, width) map.

    Example:
        >>> rows, cols = grid_indices(4, 4, [(2, 2), (1, 1)])
        >>> rows.tolist(), cols.tolist()
        ([1, 1, 3, 3, 2], [1, 3, 1, 3, 2])
    """
    rows, cols = [], []
    for gh, gw in grids:
        r = cell_centre_indices(height, gh, device)
        c = cell_centre_indices(width, gw, device)
        rows.append(r.repeat_interleave(gw))
        cols.append(c.repeat(gh))
    return torch.cat(rows), torch.cat(cols)


def sample_positions(x: Tensor, grids: list[Grid]) -> Tensor:
    """Sample ``x`` (..., H, W) at the cell centres of ``grids`` -> (..., N).

    Works for logits (B, C, h, w) and label maps (B, H, W) alike, whatever their memory layout
    (one advanced-indexing gather, no copy of the whole map); a single grid equal to the map's
    own size only flattens.
    """
    height, width = x.shape[-2:]
    if len(grids) == 1 and grids[0] == (height, width):
        return x.flatten(-2)
    rows, cols = grid_indices(height, width, grids, x.device)
    return x[..., rows, cols]
