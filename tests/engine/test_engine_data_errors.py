"""Runs on files: a bad file read in a loader worker is a one-line error naming it, and a relative
``data.root`` is stored resolved, so a run is evaluated from any directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from arseg.cli import main


def _camvid(root: Path, n: int = 4, size=(32, 32)) -> Path:
    """A tiny SegNet-layout CamVid (11 classes + void 11)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"s_{i}.png"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / split / name)
            label = rng.integers(0, 12, size, dtype=np.uint8)
            Image.fromarray(label).save(root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _config(tiny_config, name: str, root: str, workers: int) -> Path:
    data = {"name": "camvid", "root": root, "options": {}, "train_options": {}}
    data.update({"val_options": {}, "batch_size": 2, "num_workers": workers})
    trainer = {"limit_train_batches": 1, "limit_val_batches": 1}
    return tiny_config(name, data=data, trainer=trainer)


def test_a_bad_file_read_in_a_loader_worker_is_one_line(tmp_path, tiny_config, capsys):
    root = _camvid(tmp_path / "camvid")
    for name in ("s_0.png", "s_1.png", "s_2.png", "s_3.png"):
        (root / "train" / name).write_bytes(b"\x89PNG broken")
    cfg = _config(tiny_config, "c.yaml", str(root), workers=1)
    capsys.readouterr()
    assert main(["fit", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("arseg: error: ") and "Traceback" not in err
    assert "s_" in err and "in a data loader worker" in err


def test_relative_data_root_is_stored_resolved(tmp_path, tiny_config, monkeypatch):
    _camvid(tmp_path / "data" / "camvid")
    (tmp_path / "configs").mkdir()
    cfg = _config(tiny_config, "configs/c.yaml", "../data/camvid", workers=0)
    run = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ../data/camvid is relative to the config file, not to here
    assert main(["fit", str(cfg), "--run-dir", str(run)]) == 0
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["data"]["root"] == str(tmp_path / "data" / "camvid")
    monkeypatch.chdir(tmp_path / "data")
    assert main(["eval", str(run), "--no-progress", "--out", str(tmp_path / "ev")]) == 0
