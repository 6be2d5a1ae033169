"""Figures and the heat-map data behind them (no engine needed: models are built directly)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image
from torch import nn

from arseg.analysis.affinity import affinity_figure, compute_affinity_panels, to_display_image
from arseg.analysis.figures import (
    colorize_labels,
    default_palette,
    plot_curves,
    plot_overlays,
    save_figure,
)
from arseg.losses import ar_loss, label_affinity


class FixedLogits(nn.Module):
    """A stand-in model whose eval output is given logits (B, C, h, w), whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


def _sample(height=48, width=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.zeros(height, width, dtype=torch.long)
    target[:, width // 2 :] = 1
    target[height // 2 :, : width // 3] = 2
    target[:4, :] = 255  # an ignored strip
    image = torch.randn(3, height, width, generator=gen)
    return image, target


def _not_blank(path) -> None:
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.std() > 10


def test_affinity_panels_perfect_and_uniform_models(tmp_path):
    image, target = _sample()
    safe = torch.where(target == 255, 0, target)
    perfect = 30.0 * nn.functional.one_hot(safe, 3).permute(2, 0, 1).float()[None]  # (1, 3, H, W)
    # a model at 1/4 of the label resolution, uniform over the classes
    uniform = torch.zeros(1, 3, 12, 16)
    models = {"perfect": FixedLogits(perfect), "uniform": FixedLogits(uniform)}
    panels = compute_affinity_panels(models, [(image, target, "scene")], scales=(12, 6))
    (p,) = panels
    m, valid = label_affinity(target[None], scales=(12, 6))
    n = m.shape[-1]
    assert p.label_affinity.shape == (n, n) == (180, 180)
    pair_ok = (valid[0, :, None] & valid[0, None, :]).numpy()
    assert np.isnan(p.label_affinity[~pair_ok]).all()  # ignored pairs are masked
    assert np.array_equal(p.label_affinity[pair_ok], m[0].numpy()[pair_ok])
    # a perfect model reproduces M; a uniform one has A = 1 everywhere
    assert np.allclose(p.sqrt_affinity["perfect"][pair_ok], m[0].numpy()[pair_ok], atol=1e-5)
    assert np.allclose(p.sqrt_affinity["uniform"][pair_ok], 1.0, atol=1e-6)
    assert p.ar_loss["perfect"] < 1e-8
    ref = ar_loss(uniform, target[None], scales=(12, 6), reduction="none")
    assert p.ar_loss["uniform"] == pytest.approx(float(ref[0]))
    assert p.ar_loss["uniform"] > 0.1
    # grid points lie in the image, 144 + 36 of them
    assert [len(ys) for ys, _ in p.grid_points] == [144, 36]
    assert all(ys.max() < 48 and xs.max() < 64 for ys, xs in p.grid_points)

    fig = affinity_figure(panels, scales=(12, 6))
    heat = [im for ax in fig.axes for im in ax.images if im.get_cmap().name.startswith("RdBu")]
    assert len(heat) == 3  # M and two models
    assert all(im.get_clim() == (0.0, 1.0) for im in heat)  # one shared colour scale
    # 0 is blue, 1 is red
    cmap = heat[0].get_cmap()
    r0, _, b0 = cmap(0.0)[:3]
    r1, _, b1 = cmap(1.0)[:3]
    assert b0 > r0 and r1 > b1
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "AR loss = 0.0000" in titles and f"AR loss = {p.ar_loss['uniform']:.4f}" in titles
    out = save_figure(fig, tmp_path / "aff.png")[0]
    plt.close(fig)
    _not_blank(out)


def test_affinity_panels_validate():
    with pytest.raises(ValueError, match="at least one model"):
        compute_affinity_panels({}, [_sample()])
    image, target = _sample()
    with pytest.raises(ValueError, match="expected image"):
        compute_affinity_panels({"m": FixedLogits(torch.zeros(1, 3, 4, 4))}, [(image[0], target)])


def test_to_display_image_inverts_imagenet_normalisation():
    rgb = torch.rand(3, 8, 8)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = to_display_image((rgb - mean) / std)
    assert out.shape == (8, 8, 3)
    assert np.allclose(out, rgb.permute(1, 2, 0).numpy(), atol=1e-6)


def test_colorize_and_palette():
    labels = np.array([[0, 1], [2, 255]])
    rgb = colorize_labels(labels, [(10, 20, 30), (40, 50, 60), (70, 80, 90)])
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [40, 50, 60] and rgb[1, 1].tolist() == [0, 0, 0]
    for n in (4, 11, 19, 40):
        pal = default_palette(n)
        assert len(pal) == n
    assert len(set(default_palette(17))) == 17  # distinct colours up to 17 classes
    assert (0, 0, 0) not in default_palette(17)  # black is reserved for ignored pixels


def test_overlays_and_curves(tmp_path):
    image, target = _sample()
    pred = torch.where(target == 255, 0, target).numpy()
    classes = ["a", "b", "c"]
    fig = plot_overlays(
        [to_display_image(image)],
        [target.numpy()],
        {"baseline": pred, "+AR": pred},
        classes=classes,
        titles=["scene"],
    )
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [*classes, "ignored"]
    # the ground-truth panel shows the default (colour-blind-safe) palette
    gt_panel = fig.axes[1].images[0].get_array()
    assert np.allclose(gt_panel[10, 2], to_rgb("#0072B2"), atol=1 / 255)  # class a
    assert np.allclose(gt_panel[10, 50], to_rgb("#D55E00"), atol=1 / 255)  # class b
    assert np.allclose(gt_panel[30, 2], to_rgb("#009E73"), atol=1 / 255)  # class c
    assert np.allclose(gt_panel[0, 0], 0.0)  # ignored: black
    _not_blank(save_figure(fig, tmp_path / "overlay.png")[0])
    plt.close(fig)
    with pytest.raises(ValueError, match="palette"):
        plot_overlays(
            [to_display_image(image)], [target.numpy()], {}, classes=classes, palette=[(0, 0, 0)]
        )

    steps = np.arange(50)
    fig = plot_curves(
        {
            "CE": {
                "miou": (np.arange(3), np.array([0.3, 0.4, 0.45])),
                "ar": (steps, 0.2 - 1e-3 * steps),
            },
            "+AR": {"ar": (steps, 0.2 - 2e-3 * steps)},
        },
        smooth=5,
    )
    ax_m, ax_a = fig.axes[:2]
    assert ax_m.get_xlabel() == "epoch" and ax_m.get_ylabel() == "val mIoU (%)"
    assert ax_a.get_xlabel() == "iteration" and "AR loss" in ax_a.get_ylabel()
    assert np.allclose(ax_m.lines[0].get_ydata(), [30, 40, 45])  # in percent
    _not_blank(save_figure(fig, tmp_path / "curves.png")[0])
    plt.close(fig)


def test_affinity_figure_names_its_marker_shapes():
    image, target = _sample()
    panels = compute_affinity_panels(
        {"m": FixedLogits(torch.zeros(1, 3, 12, 16))},
        [(image, target, "scene"), (image, target, "again")],  # two rows
        scales=(12, 6),
    )
    fig = affinity_figure(panels, scales=(12, 6))
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["12x12 grid", "6x6 grid"]
    shapes = [h.get_paths()[0].vertices.shape[0] for h in legend.legend_handles]
    assert shapes[0] != shapes[1]  # a circle and a square
    plt.close(fig)
    fig = affinity_figure(panels, scales=(12, 6), show_grid=False)
    assert not fig.legends  # no points drawn, nothing to explain
    plt.close(fig)


def test_forest_plot_explains_its_dots():
    from arseg.analysis.figures import plot_class_deltas

    fig = plot_class_deltas(
        ["a", "b"], [0.01, -0.02], [-0.01, -0.03], [0.03, -0.01], overall=(0.0, -0.01, 0.01)
    )
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["mIoU", "class: interval includes 0", "class: interval excludes 0"]
    assert "dot = IoU difference" in legend.get_title().get_text()
    plt.close(fig)


def test_curves_iteration_ticks_are_integers_and_raw_traces_differ():
    from matplotlib.colors import rgb_to_hsv

    steps = np.arange(4)  # few steps: matplotlib would put ticks at 0.5, 1.5, ...
    fig = plot_curves(
        {
            "CE": {"ar": (steps, 0.2 - 1e-3 * steps)},
            "+AR": {"ar": (steps, 0.2 - 2e-3 * steps)},
        },
        smooth=2,
    )
    ax_a = fig.axes[1]
    fig.canvas.draw()
    ticks = ax_a.get_xticks()
    assert len(ticks) > 2 and np.allclose(ticks, np.round(ticks))
    raw = [line for line in ax_a.lines if line.get_label().endswith("(raw)")]
    assert [line.get_label() for line in raw] == ["CE (raw)", "+AR (raw)"]
    colors = [np.asarray(to_rgb(line.get_color())) for line in raw]
    assert np.abs(colors[0] - colors[1]).max() > 0.15  # not one grey for both runs
    assert all(rgb_to_hsv(c)[1] > 0.2 for c in colors)  # coloured, not grey
    assert all(line.get_alpha() in (None, 1.0) for line in raw)  # opaque: overlaps stay apart
    plt.close(fig)


def test_arm_deltas_draw_each_arm_where_its_interval_is():
    """Read the figure back: every arm's dot and bar at its difference (points), orange only
    where the interval excludes 0; with x the same values against the arms' weights."""
    from matplotlib.colors import to_hex

    from arseg.analysis.figures import LINE_COLORS, plot_arm_deltas

    rows = [("CE + 0.1 AR", 0.0003, -0.0001, 0.0007), ("CE + 1.0 AR", 0.0025, 0.0019, 0.0031)]
    fig = plot_arm_deltas({"best-val": rows, "last step": rows[::-1]}, control="CE only")
    best, last = fig.axes
    assert [t.get_text() for t in best.get_yticklabels()] == ["CE + 0.1 AR", "CE + 1.0 AR"]
    assert [t.get_text() for t in last.get_yticklabels()] == ["CE + 1.0 AR", "CE + 0.1 AR"]
    dots = [line for line in best.lines if line.get_marker() == "o"]
    xy = np.array([line.get_xydata()[0] for line in dots])
    assert np.allclose(xy, [(0.03, 0), (0.25, 1)])
    assert [to_hex(line.get_color()) for line in dots] == [
        to_hex(LINE_COLORS[0]),
        to_hex(LINE_COLORS[1]),
    ]
    bars = [c for c in best.collections if c.get_segments()]
    ends = sorted(tuple(np.round(seg[:, 0], 6)) for c in bars for seg in c.get_segments())
    assert ends == [(-0.01, 0.07), (0.19, 0.31)]
    assert best.get_xlabel() == "mIoU - CE only (points)"
    plt.close(fig)

    curve = plot_arm_deltas({"best-val": rows}, x=[0.1, 1.0], xlabel="lambda", log_x=True)
    (ax,) = curve.axes
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    xy = np.array([line.get_xydata()[0] for line in dots])
    assert np.allclose(xy, [(0.1, 0.03), (1, 0.25)])
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lambda"
    with pytest.raises(ValueError, match="x has 3 values"):
        plot_arm_deltas({"best-val": rows}, x=[0.1, 0.3, 1.0])
    plt.close(curve)
