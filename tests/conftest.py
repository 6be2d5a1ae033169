"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tests run on small CPUs (CI: 2 cores); more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """One BLAS thread for the test: on a shared 2-core machine two threads can be several
    times slower (the engine, study and smp tests take it for every test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def camvid_root() -> Path:
    """The shared real CamVid data: $ARSEG_CAMVID, else ../shared/data/camvid beside the checkout."""
    return Path(os.environ.get("ARSEG_CAMVID", PROJECT_ROOT.parent / "shared" / "data" / "camvid"))


@pytest.fixture
def camvid_dir() -> Path:
    """The real CamVid folder. Skips only where it is absent (and ``ARSEG_REQUIRE_CAMVID`` is
    unset, as CI sets it); a folder that exists but cannot be read fails the test."""
    root = camvid_root()
    if not root.exists():
        if os.environ.get("ARSEG_REQUIRE_CAMVID"):
            pytest.fail(f"ARSEG_REQUIRE_CAMVID is set but the CamVid folder {root} does not exist")
        pytest.skip(f"real CamVid data not found at {root}")
    problems = []
    for name in ("train.txt", "val.txt"):
        try:
            first = (root / name).read_text().splitlines()[:1]
        except OSError as err:
            problems.append(f"{name}: {err.strerror or err}")
            continue
        if not first:
            problems.append(f"{name} is empty")
    for name in ("train", "trainannot", "val", "valannot"):
        if not os.access(root / name, os.R_OK | os.X_OK) or not (root / name).is_dir():
            problems.append(f"{name}/ is missing or unreadable")
    if problems:
        pytest.fail(f"the CamVid folder {root} exists but is unusable: " + "; ".join(problems))
    return root


def stanford_root() -> Path:
    """The shared real Stanford Background data: $ARSEG_STANFORD_BACKGROUND, else
    ../shared/data/stanford_background beside the checkout."""
    default = PROJECT_ROOT.parent / "shared" / "data" / "stanford_background"
    return Path(os.environ.get("ARSEG_STANFORD_BACKGROUND", default))


@pytest.fixture
def stanford_dir() -> Path:
    """The real Stanford Background folder. Skips only where it is absent (and
    ``ARSEG_REQUIRE_STANFORD_BACKGROUND`` is unset, as CI sets it); a folder that exists but
    cannot be read fails the test."""
    root = stanford_root()
    if not root.exists():
        if os.environ.get("ARSEG_REQUIRE_STANFORD_BACKGROUND"):
            pytest.fail(
                "ARSEG_REQUIRE_STANFORD_BACKGROUND is set but the Stanford Background folder "
                f"{root} does not exist"
            )
        pytest.skip(f"real Stanford Background data not found at {root}")
    problems = []
    for name in ("train.txt", "val.txt", "classes.txt"):
        try:
            if not (root / name).read_text().strip():
                problems.append(f"{name} is empty")
        except OSError as err:
            problems.append(f"{name}: {err.strerror or err}")
    for name in ("images/train", "images/val", "masks/train", "masks/val"):
        if not os.access(root / name, os.R_OK | os.X_OK) or not (root / name).is_dir():
            problems.append(f"{name}/ is missing or unreadable")
    if problems:
        pytest.fail(
            f"the Stanford Background folder {root} exists but is unusable: " + "; ".join(problems)
        )
    return root


def write_folder_dataset(
    root: Path,
    sizes: dict[str, list[tuple[int, int]]],
    *,
    img_ext: str = ".png",
    values: tuple[int, ...] = (0, 1, 2, 255),
    classes: list[str] | None = None,
    name_format: str = "{split}{i}",
) -> dict[str, list[np.ndarray]]:
    """Write a folder dataset in the default layout: ``images/{split}/NAME{img_ext}`` (random
    RGB) and ``masks/{split}/NAME.png`` (mode L, each pixel one of ``values``), one image per
    ``(H, W)`` in ``sizes[split]``, NAME from ``name_format`` (``split``, ``i``); and
    ``classes.txt`` where ``classes`` is given. Deterministic (seed 0). Returns the masks by split."""
    from PIL import Image

    rng = np.random.default_rng(0)
    masks: dict[str, list[np.ndarray]] = {}
    for split, shapes in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        masks[split] = []
        for i, shape in enumerate(shapes):
            name = name_format.format(split=split, i=i)
            image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{name}{img_ext}")
            mask = rng.choice(values, size=shape).astype(np.uint8)
            Image.fromarray(mask).save(root / "masks" / split / f"{name}.png")
            masks[split].append(mask)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return masks
