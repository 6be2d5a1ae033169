"""A run someone gave you (the shared CamVid peak), seen through a study's view of links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PEAK = Path(__file__).resolve().parents[3] / "shared" / "checkpoints" / "camvid_efflite0_peak"


def test_a_given_run_finds_its_data_through_a_view_from_any_directory(tmp_path, monkeypatch):
    """Its config names the data relative to itself (``../../data/camvid``): the heat maps of a
    study's report (``load_models_and_dataset``) find it as ``arseg eval`` does, whatever the
    current directory, through the study's symlinked view of the run."""
    if not PEAK.is_dir():
        if os.environ.get("ARSEG_REQUIRE_CAMVID"):
            pytest.fail(f"the shared CE peak {PEAK} is missing")
        pytest.skip(f"the shared CE peak {PEAK} is not here")
    from arseg.analysis.affinity import load_models_and_dataset

    view = tmp_path / "study" / "baseline"
    view.mkdir(parents=True)
    for name in ("config.yaml", "checkpoints"):
        (view / name).symlink_to(PEAK / name, target_is_directory=(PEAK / name).is_dir())
    monkeypatch.chdir(tmp_path)  # where ../../data/camvid is nothing
    _, configs, dataset = load_models_and_dataset([view / "checkpoints" / "best.ckpt"])
    assert Path(configs[0]["data"]["root"]) == (PEAK.parents[1] / "data" / "camvid").resolve()
    assert len(dataset) == 101  # CamVid's val split
