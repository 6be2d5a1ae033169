"""Fixtures for the analysis tests: fake run directories in the engine's contract format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

CLASSES = ("sky", "road", "car", "person")


def confusions(
    rng: np.random.Generator, n_images: int, accuracy: float, n_classes: int = 4
) -> np.ndarray:
    """(n_images, C, C) int64 confusion matrices: each image's pixels of each class are predicted
    correctly with probability ``accuracy`` (varying per image), else as a random other class."""
    conf = np.zeros((n_images, n_classes, n_classes), dtype=np.int64)
    for i in range(n_images):
        acc = np.clip(accuracy + rng.normal(0, 0.05), 0.05, 0.99)
        for c in range(n_classes):
            pixels = int(rng.integers(50, 400))
            correct = rng.binomial(pixels, acc)
            conf[i, c, c] = correct
            others = [k for k in range(n_classes) if k != c]
            wrong = rng.multinomial(pixels - correct, [1 / len(others)] * len(others))
            conf[i, c, others] = wrong
    return conf


def write_fake_run(
    root: Path,
    *,
    seed: int = 0,
    accuracy: float = 0.7,
    n_images: int = 30,
    steps: int = 40,
    epochs: int = 4,
    ar_slope: float = -1e-3,
    confusion_seed: int | None = None,
    eval_dir: str = "eval/val",
    boundary: bool = True,
) -> Path:
    """A run directory as the engine writes it (config, metrics.csv, summary, eval).

    ``eval_dir``: where the evaluation goes (``eval`` = the layout before evaluations were kept
    per split); ``boundary``: also write per-image Boundary IoU counts (n_images, 2, C)."""
    rng = np.random.default_rng(seed if confusion_seed is None else confusion_seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": {"name": "lwrefinenet18"}, "data": {"name": "synthetic"}, "seed": seed}
        )
    )
    rows = []
    per_epoch = steps // epochs
    for step in range(steps):
        ar = 0.2 + ar_slope * step + rng.normal(0, 0.002)
        rows.append(
            {
                "epoch": step // per_epoch,
                "step": step,
                "train/loss": 1.0 + ar,
                "train/ce": 1.0,
                "train/ar": ar,
                "lr": 0.01,
            }
        )
        if (step + 1) % per_epoch == 0:
            epoch = step // per_epoch
            row = {
                "epoch": epoch,
                "step": step,
                "val/miou": 0.3 + 0.05 * epoch + 0.01 * accuracy,
                "val/pixel_acc": 0.8,
                "val/ar": 0.19 - 0.005 * epoch,
            }
            row |= {f"val/iou/{c}": 0.2 + 0.1 * k for k, c in enumerate(CLASSES)}
            rows.append(row)
    columns = [
        "epoch",
        "step",
        "lr",
        "train/ar",
        "train/ce",
        "train/loss",
        "val/ar",
        "val/miou",
        "val/pixel_acc",
    ] + [f"val/iou/{c}" for c in CLASSES]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else repr(row[c]) for c in columns))
    (root / "metrics.csv").write_text("\n".join(lines) + "\n")
    (root / "summary.json").write_text(
        json.dumps(
            {
                "best_miou": 0.45,
                "final": {"val/miou": 0.45, "val/pixel_acc": 0.8, "val/ar": 0.175},
                "steps": steps,
                "wall_time_s": 12.5,
            }
        )
    )
    conf = confusions(rng, n_images, accuracy, len(CLASSES))
    out = root / eval_dir
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "per_image_confusion.npy", conf)
    metrics = {
        "miou": 0.5,
        "pixel_acc": 0.8,
        "val_ar": 0.17 - 0.01 * accuracy,
        "classes": list(CLASSES),
        "iou_per_class": {c: 0.4 + 0.1 * k for k, c in enumerate(CLASSES)},
    }
    if boundary:
        np.save(out / "per_image_boundary.npy", boundary_counts(rng, n_images, accuracy))
        metrics["boundary_iou"] = 0.3
        metrics["boundary_iou_per_class"] = {c: 0.2 + 0.1 * k for k, c in enumerate(CLASSES)}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return root


def boundary_counts(
    rng: np.random.Generator, n_images: int, accuracy: float, n_classes: int = 4
) -> np.ndarray:
    """(n_images, 2, C) int64 Boundary IoU counts: unions of 40..200 band pixels, of which a
    fraction near ``accuracy - 0.2`` (varying per image) is shared."""
    union = rng.integers(40, 200, size=(n_images, n_classes))
    frac = np.clip(accuracy - 0.2 + rng.normal(0, 0.05, size=(n_images, 1)), 0.02, 0.98)
    inter = rng.binomial(union, np.broadcast_to(frac, union.shape))
    return np.stack([inter, union], axis=1).astype(np.int64)


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    return write_fake_run(tmp_path / "run")


@pytest.fixture
def fake_arms(tmp_path: Path) -> tuple[Path, Path]:
    """Two arms of three seeds each; arm B is clearly more accurate on the same images."""
    for seed in range(3):
        write_fake_run(tmp_path / "ce" / f"seed{seed}", seed=seed, accuracy=0.6)
        write_fake_run(tmp_path / "ar" / f"seed{seed}", seed=seed, accuracy=0.75)
    return tmp_path / "ce", tmp_path / "ar"


@pytest.fixture
def make_confusions():
    """The :func:`confusions` helper (test modules cannot import conftest under importlib mode)."""
    return confusions


@pytest.fixture
def make_run():
    """The :func:`write_fake_run` helper."""
    return write_fake_run


@pytest.fixture
def make_boundary_counts():
    """The :func:`boundary_counts` helper."""
    return boundary_counts
