"""``arseg study OUT --eval-split test --data-root ROOT`` on a study whose baseline is a given
finished run without a training log (as the shared CamVid peak): one warning about the missing
log, and a report whose heat maps and overlays read the split from ROOT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from arseg.cli import main
from arseg.study import run_study

from .conftest import write_config

pytestmark = pytest.mark.slow  # a baseline, two fine-tunes, their evaluations on two splits


def _camvid(root: Path, splits: dict[str, int], seed: int) -> Path:
    """A tiny SegNet-layout CamVid (32 x 32 images, labels 0..11, 11 = void)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"{split}_{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                root / split / name
            )
            Image.fromarray(rng.integers(0, 12, (32, 32), dtype=np.uint8)).save(
                root / f"{split}annot" / name
            )
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_eval_split_of_a_study_from_a_given_run(tmp_path, capsys) -> None:
    train_root = _camvid(tmp_path / "camvid", {"train": 12, "val": 3}, seed=0)
    test_root = _camvid(tmp_path / "elsewhere", {"test": 4}, seed=1)  # not beside train
    data = {
        "name": "camvid",
        "root": str(train_root),
        "options": {},
        "train_options": {},
        "val_options": {},
        "crop_size": [32, 32],
        "scale_range": [1.0, 1.0],
    }
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    write_config(
        cfg,
        "base.yaml",
        data=data,
        model={"num_classes": 11, "name": "lwrefinenet_mbv2", "options": {"decoder_channels": 8}},
    )
    (cfg / "ft.yaml").write_text(yaml.safe_dump({"_base_": "base.yaml", "optim": {"lr": 0.005}}))
    peak = tmp_path / "peak"
    assert main(["fit", str(cfg / "base.yaml"), "--run-dir", str(peak)]) == 0
    (peak / "metrics.csv").unlink()  # as the shared peak: a config, checkpoints, no log
    study = {
        "name": "given",
        "baseline": str(peak),
        "finetune": "ft.yaml",
        "control": "ce",
        "arms": {
            "ce": {"label": "CE only", "seeds": [1], "overrides": {"loss.lambda_ar": 0.0}},
            "ar": {"label": "CE + 0.1 AR", "seeds": [1], "overrides": {"loss.lambda_ar": 0.1}},
        },
        "parallel": 2,
        "threads": 2,
        "n_boot": 200,
        "report_num_images": 1,
    }
    (cfg / "study.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    capsys.readouterr()
    run_study(cfg / "study.yaml", out)
    err = capsys.readouterr().err
    assert err.count("init_from") == 1, err  # was once per arm and analysis step (4 here)
    assert (out / "report" / "val" / "report.md").read_text().count("Affinity heat maps") == 1

    assert not (train_root / "test.txt").exists()  # the baseline's data.root has no test split
    run_study(out, eval_split="test", data_root=str(test_root))
    err = capsys.readouterr().err
    assert err.count("init_from") == 1, err
    assert "skipped" not in err and "test.txt" not in err, err
    report = (out / "report" / "test" / "report.md").read_text()
    assert "Affinity heat maps" in report and "Predictions" in report, report
    assert "skipped" not in report
    assert "test_" in report  # the overlays' titles: the test split's image names
