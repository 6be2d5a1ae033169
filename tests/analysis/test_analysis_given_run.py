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


def test_fine_tunes_of_a_baseline_without_metrics_warn_once(tmp_path, make_run, capsys):
    """A given baseline (the shared peak) has no metrics.csv: the trends of its fine-tunes start
    at their first epoch, said in one line for the report, not once per run."""
    import yaml

    from arseg.analysis.report import build_report
    from arseg.analysis.runs import load_run
    from arseg.analysis.trend import trend_of_run

    baseline = tmp_path / "study" / "baseline"
    (baseline / "checkpoints").mkdir(parents=True)  # a view of a run without metrics.csv
    runs = []
    for arm, seed in (("ce", 1), ("ar", 1), ("ar", 2)):
        run = make_run(tmp_path / "study" / arm / f"seed{seed}", seed=seed)
        config = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**config, "init_from": str(baseline)}))
        runs.append(run)
    build_report(runs, tmp_path / "report", images=False, n_boot=50)
    err = capsys.readouterr().err
    assert err.count("init_from") == 1, err
    assert f"warning: init_from {baseline} not found (no metrics.csv in {baseline})" in err
    # outside a report each call still says it (a second report says it again, once)
    for _ in range(2):
        assert trend_of_run(load_run(runs[0])).val_start_source == "first epoch"
    assert capsys.readouterr().err.count("init_from") == 2
    build_report(runs, tmp_path / "report2", images=False, n_boot=50)
    assert capsys.readouterr().err.count("init_from") == 1
