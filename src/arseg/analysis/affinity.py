"""``arseg affinity``: the heat maps of the paper's Figure 4.

For some validation images and one or more models (e.g. the baseline and its +AR fine-tune):
the label affinity M, the square-root affinity A of each model at the same sampled positions,
and each model's per-image AR loss. Pairs that touch an ignored position are not part of the
loss and are drawn grey.

The logits are the model's own output in eval mode (its native resolution, e.g. 1/4 of the
input), exactly what the AR loss sees during training; the positions are sampled with
:mod:`arseg.losses.sampling` (cell centres, grids concatenated).

Example:
    >>> from arseg.analysis.affinity import compute_affinity_panels  # doctest: +SKIP
    >>> panels = compute_affinity_panels({"baseline": m0, "+AR": m1}, [dataset[0]])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from arseg.analysis.figures import plot_affinity

__all__ = [
    "AffinityPanel",
    "affinity_figure",
    "compute_affinity_panels",
    "model_logits",
    "to_display_image",
]

_MEAN = np.array([0.485, 0.456, 0.406])
_STD = np.array([0.229, 0.224, 0.225])


@dataclass
class AffinityPanel:
    """Everything one row of Figure 4 shows."""

    name: str
    image: np.ndarray  # (H, W, 3) float in [0, 1]
    label_affinity: np.ndarray  # (N, N), NaN where the pair touches an ignored position
    sqrt_affinity: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (N, N)
    ar_loss: dict[str, float] = field(default_factory=dict)  # model -> per-image AR loss
    grid_points: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def to_display_image(image: Tensor) -> np.ndarray:
    """ImageNet-normalised (3, H, W) tensor -> (H, W, 3) float64 RGB in [0, 1]."""
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected an image tensor (3, H, W), got {getattr(image, 'shape', type(image))}"
        )
    arr = image.detach().cpu().double().numpy().transpose(1, 2, 0)
    return np.clip(arr * _STD + _MEAN, 0.0, 1.0)


@torch.inference_mode()
def model_logits(model: nn.Module, images: Tensor) -> Tensor:
    """Eval-mode logits (B, C, h, w) of ``model`` at its native resolution (float32)."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = model(images.to(device))
    if not isinstance(out, Tensor):  # SegmentationOutput or a tuple: the main logits come first
        out = out.logits if hasattr(out, "logits") else out[0]
    return out.float().cpu()


def _grid_points(height: int, width: int, scales) -> list[tuple[np.ndarray, np.ndarray]]:
    from arseg.losses import cell_centre_indices, normalize_scales

    points = []
    for gh, gw in normalize_scales(scales) or []:
        rows = cell_centre_indices(height, gh).numpy()
        cols = cell_centre_indices(width, gw).numpy()
        ys, xs = np.meshgrid(rows, cols, indexing="ij")
        points.append((ys.ravel(), xs.ravel()))
    return points


def compute_affinity_panels(
    models: Mapping[str, nn.Module],
    samples: Sequence[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, str]],
    *,
    scales=(12, 6),
    ignore_index: int = 255,
) -> list[AffinityPanel]:
    """M, A and the AR loss of each model for each sample.

    Args:
        models: display name -> model (any arseg model; used in eval mode, no gradients).
        samples: ``(image (3, H, W) float ImageNet-normalised, target (H, W) int64[, name])``,
            as a dataset returns them.
        scales: sampling grids of the AR loss (paper: (12, 6), N = 180).
        ignore_index: label value that is left out.

    Returns:
        One :class:`AffinityPanel` per sample.
    """
    from arseg.losses import ar_loss, label_affinity, sqrt_affinity

    if not models:
        raise ValueError("compute_affinity_panels needs at least one model")
    panels = []
    for k, sample in enumerate(samples):
        image, target = sample[0], sample[1]
        name = str(sample[2]) if len(sample) > 2 else f"image {k}"
        if image.ndim != 3 or target.ndim != 2:
            raise ValueError(
                f"sample {k}: expected image (3, H, W) and target (H, W), got {tuple(image.shape)} "
                f"and {tuple(target.shape)}"
            )
        target_b = target.long()[None]
        m, valid = label_affinity(target_b, scales=scales, ignore_index=ignore_index)
        pair_ok = (valid[0, :, None] & valid[0, None, :]).numpy()
        panel = AffinityPanel(
            name=name,
            image=to_display_image(image),
            label_affinity=np.where(pair_ok, m[0].numpy(), np.nan),
            grid_points=_grid_points(*target.shape[-2:], scales),
        )
        for model_name, model in models.items():
            logits = model_logits(model, image[None])
            a = sqrt_affinity(logits, scales=scales)[0].numpy()
            panel.sqrt_affinity[model_name] = np.where(pair_ok, a, np.nan)
            loss = ar_loss(
                logits, target_b, scales=scales, ignore_index=ignore_index, reduction="none"
            )
            panel.ar_loss[model_name] = float(loss[0])
        panels.append(panel)
    return panels


def affinity_figure(panels: Sequence[AffinityPanel], *, scales=(12, 6), show_grid: bool = True):
    """Figure 4 from :func:`compute_affinity_panels` output (a matplotlib Figure)."""
    from arseg.losses import normalize_scales

    if not panels:
        raise ValueError("affinity_figure needs at least one panel")
    models = list(panels[0].sqrt_affinity)
    grids = normalize_scales(scales) or []
    return plot_affinity(
        [p.image for p in panels],
        [p.label_affinity for p in panels],
        {m: [p.sqrt_affinity[m] for p in panels] for m in models},
        {m: [p.ar_loss[m] for p in panels] for m in models},
        titles=[p.name for p in panels],
        block_sizes=[gh * gw for gh, gw in grids],
        grid_points=[p.grid_points for p in panels] if show_grid else None,
        grid_names=[f"{gh}x{gw} grid" for gh, gw in grids],
    )


def load_models_and_dataset(
    checkpoints: Sequence[str | Path],
    *,
    split: str | None = None,
    map_location: str = "cpu",
    data_root: str | Path | None = None,
):
    """Load each checkpoint (or run directory) with the engine and the eval dataset of the first.

    Args:
        split: the dataset split (default: the first config's ``data.val_split``).
        data_root: the dataset root, if it moved since training (replaces ``data.root``).

    Returns:
        (list of models in eval mode, list of configs, dataset).
    """
    import copy

    from arseg.engine import build_eval_dataset, load_model

    models, configs = [], []
    for ckpt in checkpoints:
        model, config = load_model(ckpt, map_location=map_location)
        models.append(model)
        configs.append(config)
    data_cfg = configs[0]
    if data_root is not None:
        data_cfg = copy.deepcopy(data_cfg)
        data_cfg["data"]["root"] = str(data_root)
    dataset = build_eval_dataset(data_cfg, split=split)
    return models, configs, dataset


def dataset_samples(dataset, indices: Sequence[int]) -> list[tuple[Tensor, Tensor, str]]:
    """``(image, target, name)`` for the given indices (negative ones count from the end)."""
    n = len(dataset)
    out = []
    for i in indices:
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for a dataset of {n} images")
        i = i % n
        image, target = dataset[i]
        name = dataset.sample_name(i) if hasattr(dataset, "sample_name") else f"image {i}"
        out.append((image, target, name))
    return out
