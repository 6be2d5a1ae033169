"""Figures of the paper, with matplotlib (Agg backend, no display needed).

* :func:`plot_affinity` — Figure 4: label affinity M and square-root affinity A per model,
  one shared colour scale from 0 (blue) to 1 (red), the per-image AR loss in each title.
* :func:`plot_curves` — Figure 3: val mIoU per epoch and the AR loss per iteration, several runs.
* :func:`plot_overlays` — Figure 2: input, ground truth and each model's prediction, with a
  class colour legend.
* :func:`plot_per_class_iou`, :func:`plot_class_deltas` — per-class IoU and its differences.
* :func:`plot_arm_deltas` — a study's arms against its control: a forest plot of the mIoU
  differences, or the difference against a numeric setting of the arms (a weight curve).

All functions return a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes it,
:func:`figure_to_base64` embeds it in HTML. Colours: the dataset palette for label maps when it
has one, otherwise colour-blind-safe qualitative colours (Okabe-Ito, then Paul Tol's); the
diverging ``RdBu_r`` map (ColorBrewer, colour-blind safe) for affinities.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = [
    "AFFINITY_CMAP",
    "LINE_COLORS",
    "colorize_labels",
    "default_palette",
    "figure_to_base64",
    "plot_affinity",
    "plot_arm_deltas",
    "plot_class_deltas",
    "plot_curves",
    "plot_overlays",
    "plot_per_class_iou",
    "save_figure",
]

#: Diverging, colour-blind-safe map for affinities: 0 = blue, 0.5 = white, 1 = red.
AFFINITY_CMAP = "RdBu_r"
#: Okabe-Ito colours (colour-blind safe), used for lines, one per run.
LINE_COLORS = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
# Paul Tol's "muted" scheme, appended when more classes than Okabe-Ito colours are needed.
_TOL_MUTED = (
    "#332288",
    "#88CCEE",
    "#44AA99",
    "#117733",
    "#999933",
    "#DDCC77",
    "#CC6677",
    "#882255",
    "#AA4499",
    "#DDDDDD",
)
_IGNORE_RGB = (0, 0, 0)


def _hex_to_rgb(h: str) -> tuple[int, int, int]:
    return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Colour-blind-safe qualitative RGB colours for ``num_classes`` classes.

    Okabe-Ito (8, black left out since it marks ignored pixels) then Paul Tol's muted scheme;
    beyond 17 classes the colours of matplotlib's ``tab20`` follow (not all distinguishable
    under colour blindness: no qualitative set of that size is).
    """
    colors = [_hex_to_rgb(c) for c in LINE_COLORS[:7] + _TOL_MUTED]
    if num_classes > len(colors):
        tab = plt.get_cmap("tab20").colors
        colors += [tuple(round(255 * v) for v in c) for c in tab]  # type: ignore[misc]
    while len(colors) < num_classes:  # very many classes: cycle
        colors += colors
    return colors[:num_classes]


def colorize_labels(
    labels: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255
) -> np.ndarray:
    """Label map (H, W) int -> RGB image (H, W, 3) uint8; ignored pixels black."""
    labels = np.asarray(labels)
    lut = np.zeros((256, 3), dtype=np.uint8) if labels.max(initial=0) < 256 else None
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    if lut is not None:
        lut[: len(pal)] = pal
        lut[ignore_index % 256 if ignore_index >= 0 else 255] = _IGNORE_RGB
        out = lut[np.clip(labels, 0, 255)]
    else:
        valid = (labels >= 0) & (labels < len(pal))
        out[valid] = pal[labels[valid]]
    out[labels == ignore_index] = _IGNORE_RGB
    return out


def save_figure(
    fig: Figure, path: str | Path, formats: Sequence[str] = ("png",), dpi: int = 120
) -> list[Path]:
    """Save ``fig`` as ``path`` with each suffix in ``formats``; returns the written paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = path.with_suffix("." + fmt.lstrip("."))
        fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
        written.append(out)
    return written


def figure_to_base64(fig: Figure, dpi: int = 100) -> str:
    """PNG bytes of ``fig`` as a base64 string (for ``<img src="data:image/png;base64,...">``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ------------------------------------------------------------------------ affinity
def plot_affinity(
    images: Sequence[np.ndarray],
    label_affinities: Sequence[np.ndarray],
    sqrt_affinities: Mapping[str, Sequence[np.ndarray]],
    ar_losses: Mapping[str, Sequence[float]],
    *,
    titles: Sequence[str] | None = None,
    block_sizes: Sequence[int] | None = None,
    grid_points: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
    grid_names: Sequence[str] | None = None,
) -> Figure:
    """Figure 4: one row per image: the input, M, and A of each model, one shared colour scale.

    Args:
        images: per image, RGB (H, W, 3) floats in [0, 1].
        label_affinities: per image, M (N, N) with NaN at pairs touching an ignored position.
        sqrt_affinities: model name -> per image A (N, N) (NaN where M is NaN to hide them).
        ar_losses: model name -> per image AR loss, shown in the panel titles.
        titles: per image, a row title (e.g. the sample name).
        block_sizes: the number of positions of each sampling scale (e.g. (144, 36)): thin lines
            separate the scale blocks.
        grid_points: per image, per scale, (ys, xs) pixel coordinates of the sampled points,
            drawn on the input, one marker shape per scale.
        grid_names: a legend name per scale (e.g. "12x12 grid"; default "grid 1", ...).

    Returns:
        The figure. Masked pairs are drawn grey.
    """
    n = len(images)
    if n == 0:
        raise ValueError("plot_affinity needs at least one image")
    if len(label_affinities) != n:
        raise ValueError(f"got {n} images but {len(label_affinities)} label affinities")
    models = list(sqrt_affinities)
    for name in models:
        if len(sqrt_affinities[name]) != n or len(ar_losses[name]) != n:
            raise ValueError(f"model {name!r}: expected {n} affinities and AR losses")
    cols = 2 + len(models)
    fig, axes = plt.subplots(
        n, cols, figsize=(3.3 * cols + 0.8, 3.6 * n + 0.4), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap(AFFINITY_CMAP).with_extremes(bad="#9a9a9a")
    im = None
    markers = ("o", "s", "^", "D")
    edge_colors = ("#FFFFFF", "#E69F00", "#CC79A7", "#009E73")
    grid_handles = []
    for r in range(n):
        ax = axes[r, 0]
        ax.imshow(np.clip(images[r], 0, 1))
        if grid_points is not None:
            for s, (ys, xs) in enumerate(grid_points[r]):
                handle = ax.scatter(
                    xs,
                    ys,
                    s=5 if s == 0 else 18,
                    marker=markers[s % 4],
                    facecolors="none",
                    edgecolors=edge_colors[s % 4],
                    linewidths=0.6 if s == 0 else 1.0,
                    label=grid_names[s] if grid_names and s < len(grid_names) else f"grid {s + 1}",
                )
                if r == 0:
                    grid_handles.append(handle)
        ax.set_title(titles[r] if titles else f"image {r}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        panels = [("label affinity M", label_affinities[r])] + [
            (f"A: {name}\nAR loss = {ar_losses[name][r]:.4f}", sqrt_affinities[name][r])
            for name in models
        ]
        for c, (title, mat) in enumerate(panels, start=1):
            ax = axes[r, c]
            im = ax.imshow(
                np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest"
            )
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("position j", fontsize=8)
            ax.set_ylabel("position i", fontsize=8)
            ax.tick_params(labelsize=7)
            if block_sizes and len(block_sizes) > 1:
                for edge in np.cumsum(block_sizes)[:-1]:
                    ax.axhline(edge - 0.5, color="k", lw=0.6)
                    ax.axvline(edge - 0.5, color="k", lw=0.6)
    cbar = fig.colorbar(im, ax=axes[:, 1:], shrink=0.8, aspect=30)
    cbar.set_label("affinity (0 = different class, 1 = same class)")
    if grid_handles:
        # the markers are white/orange outlines: show them on grey, as on a photo
        legend = fig.legend(
            handles=grid_handles,
            title="sampled positions",
            loc="outside lower left",
            ncol=len(grid_handles),
            fontsize=8,
            title_fontsize=8,
            markerscale=1.8,
            facecolor="#777777",
            framealpha=1.0,
        )
        legend.get_title().set_color("white")
        for text in legend.get_texts():
            text.set_color("white")
    return fig


# -------------------------------------------------------------------------- curves
def _tint(color: str, amount: float) -> str:
    """``color`` mixed with white: 0 = unchanged, 1 = white (an opaque light version)."""
    rgb = np.asarray(_hex_to_rgb(color), dtype=float)
    mixed = rgb + (255.0 - rgb) * amount
    return "#" + "".join(f"{round(v):02x}" for v in mixed)


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    core = np.convolve(y, kernel, mode="valid")
    head = np.cumsum(y[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, core])


def plot_curves(
    curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    smooth: int | None = None,
) -> Figure:
    """Figure 3: val mIoU per epoch (left) and the AR loss per iteration (right).

    Args:
        curves: run label -> {"miou": (epochs, values in 0..1), "ar": (steps, values)}; either
            entry may be missing for a run.
        smooth: moving-average window for the AR loss (default: about 1/20 of the points);
            the raw values are drawn faintly behind.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one run")
    fig, (ax_m, ax_a) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for i, (label, data) in enumerate(curves.items()):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        if "miou" in data:
            x, y = (np.asarray(v) for v in data["miou"])
            ax_m.plot(x, 100 * y, marker="o", ms=4, color=color, label=label)
        if "ar" in data:
            x, y = (np.asarray(v, dtype=float) for v in data["ar"])
            window = smooth if smooth is not None else max(1, y.size // 20)
            if window > 1:
                # the raw trace in a light opaque tint of the run's colour (a transparent line
                # turns every run's trace the same grey where they overlap), dotted
                ax_a.plot(
                    x,
                    y,
                    color=_tint(color, 0.55),
                    lw=0.8,
                    ls=(0, (1, 1)),
                    label=f"{label} (raw)",
                    zorder=1,
                )
            ax_a.plot(
                x,
                _moving_average(y, window),
                color=color,
                lw=1.6,
                label=label + (f" (moving avg. {window})" if window > 1 else ""),
            )
    ax_m.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel("val mIoU (%)")
    ax_m.set_title("Validation mIoU")
    ax_a.set_xlabel("iteration")
    ax_a.set_ylabel("AR loss (train batch)")
    ax_a.set_title("AR loss per iteration")
    for ax in (ax_m, ax_a):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not ax_m.lines:
        ax_m.text(
            0.5, 0.5, "no val/miou logged", ha="center", va="center", transform=ax_m.transAxes
        )
    if not ax_a.lines:
        ax_a.text(0.5, 0.5, "no AR loss logged", ha="center", va="center", transform=ax_a.transAxes)
    return fig


# ------------------------------------------------------------------------ overlays
def plot_overlays(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    predictions: Mapping[str, Sequence[np.ndarray]],
    *,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int = 255,
    titles: Sequence[str] | None = None,
    alpha: float = 0.0,
) -> Figure:
    """Figure 2: per image the input, the ground truth and each model's prediction.

    Args:
        images: RGB (H, W, 3) floats in [0, 1].
        targets: (H, W) int label maps (``ignore_index`` drawn black).
        predictions: model name -> per image (H, W) int label maps.
        classes: class names for the legend; palette: RGB per class (default colour-blind safe).
        alpha: if > 0, label maps are blended over the image with this image weight.
    """
    n = len(images)
    if n == 0 or len(targets) != n:
        raise ValueError(
            f"plot_overlays needs as many targets as images, got {n} and {len(targets)}"
        )
    palette = list(palette) if palette else default_palette(len(classes))
    if len(palette) < len(classes):
        raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes")
    cols = 2 + len(predictions)
    h, w = np.asarray(targets[0]).shape
    panel_w = 3.2
    panel_h = panel_w * h / w
    fig, axes = plt.subplots(
        n,
        cols,
        figsize=(panel_w * cols, (panel_h + 0.3) * n + 0.3 * -(-(len(classes) + 1) // 7) + 0.2),
        squeeze=False,
        layout="constrained",
    )

    def show(ax, labels, img):
        rgb = colorize_labels(labels, palette, ignore_index).astype(np.float64) / 255
        if alpha > 0:
            rgb = alpha * np.clip(img, 0, 1) + (1 - alpha) * rgb
        ax.imshow(rgb, interpolation="nearest")

    for r in range(n):
        axes[r, 0].imshow(np.clip(images[r], 0, 1))
        axes[r, 0].set_title(titles[r] if titles else "input", fontsize=10)
        show(axes[r, 1], targets[r], images[r])
        axes[r, 1].set_title("ground truth", fontsize=10)
        for c, (name, preds) in enumerate(predictions.items(), start=2):
            show(axes[r, c], preds[r], images[r])
            axes[r, c].set_title(name, fontsize=10)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [
        Patch(facecolor=np.asarray(palette[k]) / 255, edgecolor="0.3", label=str(name))
        for k, name in enumerate(classes)
    ]
    handles.append(Patch(facecolor="black", edgecolor="0.3", label="ignored"))
    rows = -(-len(handles) // 7)  # at most 7 entries a row, rows balanced
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=-(-len(handles) // rows),
        fontsize=9,
        frameon=False,
    )
    return fig


# ------------------------------------------------------------------------ per class
def plot_per_class_iou(per_class: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped horizontal bars: IoU (%) per class, one bar per run."""
    if not per_class:
        raise ValueError("plot_per_class_iou needs at least one run")
    classes: list[str] = []
    for values in per_class.values():
        classes += [c for c in values if c not in classes]
    n_runs = len(per_class)
    height = 0.8 / n_runs
    fig, ax = plt.subplots(
        figsize=(7, 0.32 * len(classes) * max(1, n_runs * 0.6) + 1.2), layout="constrained"
    )
    y = np.arange(len(classes))
    for i, (label, values) in enumerate(per_class.items()):
        vals = [100 * values.get(c, np.nan) for c in classes]
        ax.barh(
            y - 0.4 + height * (i + 0.5), vals, height=height, color=LINE_COLORS[i % 8], label=label
        )
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.set_xlim(0, 100)
    ax.set_title("Per-class IoU")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_class_deltas(
    names: Sequence[str],
    deltas: Sequence[float],
    lows: Sequence[float],
    highs: Sequence[float],
    *,
    overall: tuple[float, float, float] | None = None,
    label: str = "B - A",
    level: float = 0.95,
) -> Figure:
    """Forest plot: per-class IoU difference (points, %) with bootstrap intervals.

    Each dot is a class's IoU difference (IoU pooled over the images, B - A), its bar the
    paired bootstrap interval; orange where the interval excludes 0, blue where it does not.
    ``overall`` = (delta, low, high) of the mIoU, drawn on top in black. A legend says so.
    """
    rows = list(names)
    d = 100 * np.asarray(deltas, dtype=float)
    lo = 100 * np.asarray(lows, dtype=float)
    hi = 100 * np.asarray(highs, dtype=float)
    if overall is not None:
        rows = ["mIoU", *rows]
        d = np.concatenate([[100 * overall[0]], d])
        lo = np.concatenate([[100 * overall[1]], lo])
        hi = np.concatenate([[100 * overall[2]], hi])
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.2), layout="constrained")
    y = np.arange(len(rows))
    sig = (lo > 0) | (hi < 0)
    colors = [LINE_COLORS[1] if s else LINE_COLORS[0] for s in sig]
    if overall is not None:
        colors[0] = "#000000"
    for k in range(len(rows)):
        ax.errorbar(
            d[k],
            y[k],
            xerr=[[d[k] - lo[k]], [hi[k] - d[k]]],
            fmt="o",
            color=colors[k],
            elinewidth=1.5,
            capsize=3,
        )
    ax.axvline(0, color="0.4", lw=1, ls="--")
    ax.set_yticks(y, rows)
    ax.invert_yaxis()
    ax.set_xlabel(f"IoU difference {label} (points)")
    ax.set_title(f"Difference with {100 * level:.0f}% paired bootstrap interval", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.lines import Line2D

    def entry(color: str, text: str) -> Line2D:
        return Line2D([], [], color=color, marker="o", lw=1.5, label=text)

    handles = [entry(LINE_COLORS[0], "class: interval includes 0")]
    handles.append(entry(LINE_COLORS[1], "class: interval excludes 0"))
    if overall is not None:
        handles.insert(0, entry("#000000", "mIoU"))
    fig.legend(
        handles=handles,
        title=f"dot = IoU difference, bar = {100 * level:.0f}% interval",
        loc="outside lower center",
        ncol=len(handles),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    return fig


def plot_arm_deltas(
    panels: Mapping[str, Sequence[tuple[str, float, float, float]]],
    *,
    control: str = "control",
    x: Sequence[float] | None = None,
    xlabel: str = "",
    log_x: bool = False,
    level: float = 0.95,
) -> Figure:
    """Each arm's mIoU difference with its control (points) and interval, one panel per key.

    ``panels`` maps a panel title (e.g. ``"best-val"``, ``"last step"``) to rows
    ``(arm label, delta, low, high)`` in fractions. Without ``x`` each panel is a forest plot
    (one row per arm, orange where the interval excludes 0); with ``x`` (a number per row,
    e.g. the arms' loss weights) the differences are drawn against it, a weight curve.
    """
    if not panels or not all(panels.values()):
        raise ValueError("plot_arm_deltas needs at least one panel with at least one arm")
    n_rows = max(len(rows) for rows in panels.values())
    if x is not None and any(len(rows) != len(x) for rows in panels.values()):
        raise ValueError(f"x has {len(x)} values, the panels {[len(r) for r in panels.values()]}")
    size = (4.2 * len(panels), 3.4) if x is not None else (4.2 * len(panels), 0.4 * n_rows + 1.4)
    fig, axes = plt.subplots(1, len(panels), figsize=size, layout="constrained", squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items()):
        d = 100 * np.array([r[1] for r in rows], dtype=float)
        lo = 100 * np.array([r[2] for r in rows], dtype=float)
        hi = 100 * np.array([r[3] for r in rows], dtype=float)
        sig = (lo > 0) | (hi < 0)
        pos = np.asarray(x, dtype=float) if x is not None else np.arange(len(rows))
        for k in range(len(rows)):
            err = [[d[k] - lo[k]], [hi[k] - d[k]]]
            color = LINE_COLORS[1] if sig[k] else LINE_COLORS[0]
            if x is None:
                ax.errorbar(d[k], pos[k], xerr=err, fmt="o", color=color, capsize=3)
            else:
                ax.errorbar(pos[k], d[k], yerr=err, fmt="o", color=color, capsize=3)
        if x is None:
            ax.axvline(0, color="0.4", lw=1, ls="--")
            ax.set_yticks(pos, [r[0] for r in rows])
            ax.invert_yaxis()
            ax.set_xlabel(f"mIoU - {control} (points)")
            ax.grid(axis="x", alpha=0.3)
        else:
            ax.plot(pos, d, color="0.5", lw=1, zorder=0)
            ax.axhline(0, color="0.4", lw=1, ls="--")
            if log_x:
                ax.set_xscale("log")
            ax.set_xticks(pos, [f"{v:g}" for v in pos])
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"mIoU - {control} (points)")
            ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        f"dot = mean difference over paired seeds, bar = {100 * level:.0f}% two-level bootstrap "
        "interval (orange: excludes 0)",
        fontsize=8,
    )
    return fig
