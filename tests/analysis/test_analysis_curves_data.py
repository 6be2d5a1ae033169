"""``arseg curves`` plots exactly the series of each run's metrics.csv (not merely a PNG)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from arseg.analysis import figures
from arseg.cli import main


def _csv_series(run: Path, key: str, index: str) -> tuple[np.ndarray, np.ndarray]:
    """The (index, value) pairs of one column, read independently of arseg (last row wins)."""
    values: dict[int, float] = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                values[int(float(row[index]))] = float(row[key])
    x = np.array(sorted(values))
    return x, np.array([values[k] for k in x])


def test_curves_plot_the_logged_series(fake_arms, tmp_path, monkeypatch) -> None:
    ce, ar = fake_arms
    drawn = []
    original = figures.plot_curves

    def capture(*args, **kwargs):
        fig = original(*args, **kwargs)
        drawn.append(fig)
        return fig

    monkeypatch.setattr(figures, "plot_curves", capture)
    runs = [ce / "seed0", ar / "seed1"]
    out = tmp_path / "curves.png"
    assert (
        main(["curves", *map(str, runs), "--labels", "CE", "AR", "--smooth", "1", "-o", str(out)])
        == 0
    )
    (fig,) = drawn
    ax_miou, ax_ar = fig.axes[:2]
    for run, label in zip(runs, ("CE", "AR")):
        (miou_line,) = [line for line in ax_miou.lines if line.get_label() == label]
        x, y = _csv_series(run, "val/miou", "epoch")
        assert np.array_equal(miou_line.get_xdata(), x)
        assert np.allclose(miou_line.get_ydata(), 100 * y)  # plotted in %
        (ar_line,) = [line for line in ax_ar.lines if line.get_label() == label]
        x, y = _csv_series(run, "train/ar", "step")
        assert len(x) > 3
        assert np.array_equal(ar_line.get_xdata(), x)
        assert np.allclose(ar_line.get_ydata(), y)
    plt.close(fig)
