"""``arseg data check``: class frequencies of a whole split, and the first bad file named."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from arseg.cli import main


def _camvid_layout(root, labels: list[np.ndarray]) -> None:
    """A CamVid-layout folder (SegNet list prefixes) with one 8x10 image per label map."""
    lines = []
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
    for i, label in enumerate(labels):
        rgb = np.full((*label.shape, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(rgb).save(root / "val" / f"f{i}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "valannot" / f"f{i}.png")
        lines.append(f"/SegNet/CamVid/val/f{i}.png /SegNet/CamVid/valannot/f{i}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "train.txt").write_text("")


def _shares(out: str) -> dict[str, float]:
    return {
        m.group(2): float(m.group(3))
        for m in re.finditer(r"^\s+(\d+) (\S+)\s+([\d.]+) %$", out, flags=re.MULTILINE)
    }


def test_check_reports_the_class_shares_of_every_sample(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = [rng.choice([0, 3, 8, 11], size=(8, 10), p=[0.4, 0.3, 0.2, 0.1]) for _ in range(3)]
    _camvid_layout(tmp_path, labels)
    assert main(["data", "check", "camvid", "--root", str(tmp_path), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "camvid val: 3 samples OK" in out
    all_labels = np.concatenate([lab.ravel() for lab in labels])
    shares = _shares(out)
    for name, value in (("sky", 0), ("road", 3), ("car", 8), ("(ignored)", 11)):  # void -> 255
        expected = 100 * np.mean(all_labels == value)
        assert shares[name] == round(expected, 2), name
    assert shares["building"] == 0 and len(shares) == 12  # 11 classes + ignored


def test_check_names_the_first_bad_file_and_exits_1(tmp_path, capsys):
    labels = [np.zeros((8, 10), dtype=np.uint8) for _ in range(3)]
    labels[1][2, 3] = 40  # neither a class (0..10) nor void (11)
    _camvid_layout(tmp_path, labels)
    assert main(["data", "check", "camvid", "--root", str(tmp_path), "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "f1.png" in err and "40" in err
    # a truncated image is named too
    labels[1][2, 3] = 0
    _camvid_layout(tmp_path / "t", labels)
    path = tmp_path / "t" / "val" / "f2.png"
    path.write_bytes(path.read_bytes()[:40])
    assert main(["data", "check", "camvid", "--root", str(tmp_path / "t"), "--split", "val"]) == 1
    assert "f2.png" in capsys.readouterr().err


def test_check_reads_the_real_camvid_val_split(camvid_dir, capsys):
    assert main(["data", "check", "camvid", "--root", str(camvid_dir), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "camvid val: 101 samples OK" in out
    shares = _shares(out)
    assert sum(shares.values()) == pytest.approx(100, abs=0.1)
    assert shares["road"] > 10 and shares["sky"] > 5  # street scenes
