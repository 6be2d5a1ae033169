"""``arseg data check``: class frequencies of a whole split, and the first bad file named; by
dataset name or on the data section of a run config, with a picture of a few samples."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arseg.cli import main

from ..conftest import write_folder_dataset


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


@pytest.fixture(autouse=True)
def cwd(tmp_path_factory, monkeypatch) -> Path:
    """The check writes its picture into the current directory by default: one of its own."""
    path = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(path)
    return path


def _shares(out: str) -> dict[str, float]:
    return {
        m.group(2): float(m.group(3))
        for m in re.finditer(r"^\s+(\d+) (\S+)\s+([\d.]+) %\s+\d+$", out, flags=re.MULTILINE)
    }


def _image_counts(out: str) -> dict[str, int]:
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^\s+\d+ (\S+)\s+[\d.]+ %\s+(\d+)$", out, flags=re.MULTILINE)
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


def test_check_by_name_draws_its_picture_in_the_current_directory(tmp_path, cwd, capsys):
    _camvid_layout(tmp_path, [np.zeros((8, 10), dtype=np.uint8)] * 2)
    assert main(["data", "check", "camvid", "--root", str(tmp_path), "--split", "val"]) == 0
    assert (cwd / "data_check_camvid_val.png").is_file()
    assert "picture: data_check_camvid_val.png" in capsys.readouterr().out


# ---------------------------------------------------------------- a run config


def _folder(root: Path, n: int = 4) -> list[np.ndarray]:
    """A folder dataset (default layout, 3 classes in classes.txt, the third never drawn) of n
    val images of 2 sizes and one train image. Returns the val masks."""
    val = [(12, 16) if i % 2 == 0 else (16, 12) for i in range(n)]
    masks = write_folder_dataset(
        root,
        {"train": [(8, 8)], "val": val},
        img_ext=".jpg",
        values=(0, 1, 255),
        classes=["ground", "plant", "water"],
        name_format="v{i}",
    )
    return masks["val"]


def _configs(tmp_path: Path) -> Path:
    """configs/run.yaml on configs/base.yaml: the base names the data, relative to itself."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(
        "data:\n  name: folder\n  root: ../data\n  options: {reduce_zero_label: false}\n"
    )
    (tmp_path / "configs" / "run.yaml").write_text(
        "_base_: base.yaml\nname: mine\ndata:\n  val_options: {classes_file: classes.txt}\n"
    )
    return tmp_path / "configs" / "run.yaml"


def test_check_a_config_reads_its_data_section_and_draws_it(tmp_path, cwd, capsys):
    masks = _folder(tmp_path / "data")
    config = _configs(tmp_path)
    assert main(["data", "check", str(config), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert f"{config}: folder val: 4 samples OK" in out
    assert "sizes (HxW): 12x16: 2, 16x12: 2" in out
    pixels = np.concatenate([m.ravel() for m in masks])
    shares = _shares(out)
    assert shares == {
        name: round(100 * float(np.mean(pixels == v)), 2)
        for name, v in (("ground", 0), ("plant", 1), ("water", 2), ("(ignored)", 255))
    }
    counts = _image_counts(out)
    assert counts["ground"] == 4 and counts["water"] == 0
    assert counts["plant"] == sum(bool((m == 1).any()) for m in masks)
    picture = cwd / "data_check_run_val.png"
    with Image.open(picture) as im:
        assert im.width > 600 and im.height > 240
    # the default split is the config's training split; --root replaces data.root
    assert main(["data", "check", str(config), "--root", str(tmp_path / "data")]) == 0
    assert "folder train: 1 samples OK" in capsys.readouterr().out
    assert not list((tmp_path / "data").rglob("*check*"))  # nothing written into the data


def test_check_a_config_stops_at_the_first_bad_file_in_one_line(tmp_path, capsys):
    _folder(tmp_path / "data")
    config = _configs(tmp_path)
    bad = np.array(Image.open(tmp_path / "data" / "masks" / "val" / "v2.png"))
    bad[3, 4] = 7  # 3 classes: neither a class nor ignored
    Image.fromarray(bad).save(tmp_path / "data" / "masks" / "val" / "v2.png")
    assert main(["data", "check", str(config), "--split", "val"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "v2.png has values [7]" in err
    (tmp_path / "data" / "masks" / "val" / "v1.png").unlink()
    assert main(["data", "check", str(config), "--split", "val"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(r"v1\.jpg has no mask: expected .*v1\.png", err)


def test_check_never_writes_into_the_data_folder(tmp_path, capsys):
    _folder(tmp_path / "data")
    config = _configs(tmp_path)
    out = tmp_path / "data" / "masks" / "check.png"
    assert main(["data", "check", str(config), "--split", "val", "--out", str(out)]) == 1
    assert "into the data folder" in capsys.readouterr().err
    assert not out.exists()
    assert main(["data", "check", str(config), "--out", str(tmp_path / "a" / "b.png")]) == 0
    assert (tmp_path / "a" / "b.png").is_file()


def test_check_never_writes_into_an_image_folder_outside_the_root(tmp_path, capsys):
    _folder(tmp_path / "data")
    (tmp_path / "data" / "images").rename(tmp_path / "pictures")  # img_dir beside the root
    config = _configs(tmp_path)
    images = tmp_path / "pictures" / "{split}"
    with config.open("a") as f:
        f.write(f"  options: {{img_dir: '{images}'}}\n")
    out = tmp_path / "pictures" / "val" / "check.png"
    assert main(["data", "check", str(config), "--split", "val", "--out", str(out)]) == 1
    assert "into the data folder" in capsys.readouterr().err
    assert not out.exists()


def test_check_a_config_with_a_bad_key_or_no_file_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("data:\n  rooot: x\n")
    assert main(["data", "check", str(tmp_path / "bad.yaml")]) == 1
    assert "unknown config key 'data.rooot'" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "none.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_check_the_real_stanford_background_config(stanford_dir, cwd, capsys, tmp_path):
    config = (
        Path(__file__).resolve().parents[2] / "configs" / "stanford_background" / "baseline.yaml"
    )
    args = ["data", "check", str(config), "--root", str(stanford_dir), "--split", "val"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "folder val: 107 samples OK" in out
    shares = _shares(out)
    assert list(shares)[:8] == [
        "sky", "tree", "road", "grass", "water", "building", "mountain", "foreground",
    ]  # fmt: skip
    labelled = 100 - shares["(ignored)"]
    assert 100 * shares["mountain"] / labelled == pytest.approx(1.7, abs=0.05)  # the README's
    assert (cwd / "data_check_baseline_val.png").is_file()
    # a copy of a few of its images: one mask with a value out of range, then one missing
    copy = tmp_path / "copy"
    names = (stanford_dir / "val.txt").read_text().split()[:3]
    for sub, ext in (("images", ".jpg"), ("masks", ".png")):
        (copy / sub / "val").mkdir(parents=True)
        for name in names:
            data = (stanford_dir / sub / "val" / f"{name}{ext}").read_bytes()
            (copy / sub / "val" / f"{name}{ext}").write_bytes(data)
    (copy / "classes.txt").write_text((stanford_dir / "classes.txt").read_text())
    args = ["data", "check", str(config), "--root", str(copy), "--split", "val"]
    assert main(args) == 0
    assert "folder val: 3 samples OK" in capsys.readouterr().out
    mask_path = copy / "masks" / "val" / f"{names[1]}.png"
    mask = np.array(Image.open(mask_path))
    mask[5, 5] = 8
    Image.fromarray(mask).save(mask_path)
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{names[1]}.png has values [8]" in err
    mask_path.unlink()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{names[1]}.jpg has no mask" in err
