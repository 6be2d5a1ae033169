"""Render the report page in headless Chromium and check the screenshot is not blank."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arseg.analysis.report import build_report

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Chromium not installed (apt-get install chromium)"
    ),
]


def _screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--hide-scrollbars",
        "--window-size=1200,2400",
        f"--screenshot={out}",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB")).astype(np.int16)


def test_report_renders_in_chromium(fake_arms, tmp_path):
    ce, ar = fake_arms
    paths = build_report(
        [ce / "seed0", ar / "seed0"], tmp_path / "report", labels=["CE", "+AR"], n_boot=200
    )
    img = _screenshot(paths.html, tmp_path / "shot.png", tmp_path / "profile")
    assert img.shape[:2] == (2400, 1200)
    non_white = np.any(img < 235, axis=-1)
    assert non_white.mean() > 0.05, "the page is (almost) blank"
    # the embedded figures were decoded and drawn: their Okabe-Ito blue and orange bars are there
    blue = np.all(np.abs(img - np.array([0, 114, 178])) < 12, axis=-1)
    orange = np.all(np.abs(img - np.array([213, 94, 0])) < 12, axis=-1)
    assert blue.sum() > 500 and orange.sum() > 500
