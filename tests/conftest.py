"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

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
