"""CamVid: the real shared data (skipped when absent) and bad-input errors on tiny fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from arseg.data import DatasetError, build_dataset, build_train_transform
from arseg.data.base import read_label

# ---------------------------------------------------------------- the real data


@pytest.mark.parametrize(("split", "count"), [("train", 367), ("val", 101)])
def test_real_camvid_counts_sizes_and_label_values(camvid_dir, split, count):
    ds = build_dataset("camvid", root=camvid_dir, split=split)
    assert len(ds) == count
    for image_path, label_path in ds.pairs:  # sizes from the PNG headers only
        with Image.open(image_path) as im:
            assert im.size == (480, 360) and im.mode == "RGB", image_path
        with Image.open(label_path) as lab:
            assert lab.size == (480, 360), label_path
    # Labels are small 8-bit PNGs: decoding all of them is cheap (~0.5 ms each).
    seen: set[int] = set()
    for _, label_path in ds.pairs:
        seen |= set(np.unique(read_label(label_path)).tolist())
    assert seen <= set(range(12))
    x, y = ds[0]
    assert x.shape == (3, 360, 480) and x.dtype == torch.float32
    assert y.shape == (360, 480) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {*range(11), 255}
    assert ds.sample_name(0) == ds.pairs[0][0].stem


def test_real_camvid_void_maps_to_ignore(camvid_dir):
    ds = build_dataset("camvid", root=camvid_dir, split="val")
    _, raw = ds.load(0)  # mapped but untransformed
    original = read_label(ds.pairs[0][1])
    assert np.array_equal(raw == 255, original == 11)
    assert np.array_equal(raw[original != 11], original[original != 11])
    assert ds.num_classes == 11 and len(ds.palette) == 11 and ds.classes[0] == "sky"


def test_real_camvid_dataloader_two_workers(camvid_dir):
    ds = build_dataset(
        "camvid", root=camvid_dir, split="train", transform=build_train_transform(crop_size=96)
    )
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    for n, (x, y) in enumerate(loader):
        assert x.shape == (4, 3, 96, 96) and y.shape == (4, 96, 96)
        assert set(y.unique().tolist()) <= {*range(11), 255}
        if n == 2:
            break


# ---------------------------------------------------------------- tiny fixture tree


def make_camvid(root: Path, n: int = 3, size=(12, 16)) -> Path:
    """A tiny SegNet-layout CamVid with a foreign prefix in the list files."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"seq_{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / split / name
            )
            Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(
                root / f"{split}annot" / name
            )
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_fixture_reads_and_maps_void(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    ds = build_dataset("camvid", root=root, split="val")
    assert len(ds) == 3
    raw = np.asarray(Image.open(root / "valannot" / "seq_0001.png"))
    _, y = ds[1]
    expected = np.where(raw == 11, 255, raw)
    assert np.array_equal(y.numpy(), expected)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("camvid", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="root is required"):
        build_dataset("camvid")


def test_missing_list_and_bad_split(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    with pytest.raises(FileNotFoundError, match=r"test\.txt"):
        build_dataset("camvid", root=root, split="test")
    with pytest.raises(ValueError, match="split"):
        build_dataset("camvid", root=root, split="everything")


def test_listed_file_absent(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "trainannot" / "seq_0002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"trainannot/seq_0002\.png"):
        build_dataset("camvid", root=root, split="train")


def test_malformed_list_line(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "train.txt").write_text("/SegNet/CamVid/train/seq_0000.png\n")
    with pytest.raises(DatasetError, match="line 1"):
        build_dataset("camvid", root=root, split="train")
    (root / "train.txt").write_text("\ntrain/seq_0000.png seq_0000.png\n")
    with pytest.raises(
        DatasetError, match=r"train\.txt line 2: path 'seq_0000\.png' has no folder"
    ):
        build_dataset("camvid", root=root, split="train")
    (root / "train.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="is empty"):
        build_dataset("camvid", root=root, split="train")


def test_truncated_image(tmp_path):
    root = make_camvid(tmp_path / "camvid", size=(60, 80))
    path = root / "train" / "seq_0001.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = build_dataset("camvid", root=root, split="train")
    ds[0]  # the others still read
    with pytest.raises(DatasetError, match=r"train/seq_0001\.png"):
        ds[1]


def test_not_an_image(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    (root / "valannot" / "seq_0000.png").write_text("hello")
    with pytest.raises(DatasetError, match=r"valannot/seq_0000\.png.*not a readable image"):
        build_dataset("camvid", root=root, split="val")[0]


def test_size_mismatch(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    Image.fromarray(np.zeros((10, 16), dtype=np.uint8)).save(root / "valannot" / "seq_0002.png")
    with pytest.raises(DatasetError, match=r"size mismatch.*seq_0002\.png"):
        build_dataset("camvid", root=root, split="val")[2]


def test_label_values_outside_classes(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    label = np.zeros((12, 16), dtype=np.uint8)
    label[3, 4] = 12
    label[5, 5] = 40
    Image.fromarray(label).save(root / "valannot" / "seq_0000.png")
    with pytest.raises(DatasetError, match=r"seq_0000\.png has values \[12, 40\]"):
        build_dataset("camvid", root=root, split="val")[0]


def test_rgb_label_rejected(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    Image.fromarray(np.zeros((12, 16, 3), dtype=np.uint8)).save(root / "valannot" / "seq_0000.png")
    with pytest.raises(DatasetError, match="single-channel"):
        build_dataset("camvid", root=root, split="val")[0]
