"""NYUv2: tiny fixtures in the official formats, prepared, read back and checked value by value."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import DataLoader

from arseg.cli import main
from arseg.data import DatasetError, build_dataset, build_train_transform
from arseg.data.nyuv2 import load_class_mapping, prepare_nyuv2

N, H, W, FINE = 7, 6, 10, 894
TRAIN, TEST = [1, 4, 5, 7], [2, 3, 6]


def write_matlab73(path: Path, images_hwc: np.ndarray, labels_hw: np.ndarray) -> None:
    """Write like MATLAB's ``save -v7.3``: HDF5 with a 512-byte user block, column-major arrays.

    MATLAB's ``images`` is H x W x 3 x N and ``labels`` H x W x N; HDF5 stores the dimensions
    reversed, so h5py sees ``(N, 3, W, H)`` and ``(N, W, H)``.
    """
    with h5py.File(path, "w", userblock_size=512) as f:
        d = f.create_dataset("images", data=np.transpose(images_hwc, (0, 3, 2, 1)))
        d.attrs["MATLAB_class"] = np.bytes_("uint8")
        d = f.create_dataset("labels", data=np.transpose(labels_hw, (0, 2, 1)))
        d.attrs["MATLAB_class"] = np.bytes_("uint16")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


@pytest.fixture
def official(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
    labels = rng.integers(0, FINE + 1, (N, H, W)).astype(np.uint16)
    labels[:, 0, 0] = 0  # some unlabelled pixels
    labels[:, 0, 1] = FINE  # the last fine class
    map_class = rng.integers(1, 41, (1, FINE)).astype(np.float64)
    names = np.empty((1, 40), dtype=object)
    names[0, :] = [f"class{i}" for i in range(1, 41)]
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    write_matlab73(mat, images, labels)
    splits = tmp_path / "splits.mat"
    scipy.io.savemat(
        splits,
        {
            "trainNdxs": np.array(TRAIN, dtype=np.float64)[:, None],
            "testNdxs": np.array(TEST, dtype=np.float64)[:, None],
        },
    )
    mapping = tmp_path / "classMapping40.mat"
    scipy.io.savemat(mapping, {"mapClass": map_class, "className": names})
    return {
        "mat": mat,
        "splits": splits,
        "mapping": mapping,
        "images": images,
        "labels": labels,
        "map_class": map_class.ravel().astype(int),
    }


def expected_label(fine: np.ndarray, map_class: np.ndarray) -> np.ndarray:
    out = np.empty(fine.shape, dtype=np.int64)
    for (y, x), v in np.ndenumerate(fine):
        out[y, x] = 255 if v == 0 else map_class[v - 1] - 1
    return out


def test_prepare_and_read_back_value_by_value(official, tmp_path):
    out = tmp_path / "prepared"
    counts = prepare_nyuv2(
        official["mat"], official["splits"], official["mapping"], out, progress=False
    )
    assert counts == {"train": len(TRAIN), "val": len(TEST)}
    for split, indices in (("train", TRAIN), ("val", TEST)):
        ds = build_dataset("nyuv2", root=out, split=split)
        assert len(ds) == len(indices)
        for i, idx in enumerate(indices):
            assert ds.sample_name(i) == f"{idx:06d}"
            image, target = ds.load(i)
            assert np.array_equal(image, official["images"][idx - 1])
            assert np.array_equal(
                target, expected_label(official["labels"][idx - 1], official["map_class"])
            )
            x, y = ds[i]
            assert x.shape == (3, H, W) and y.shape == (H, W) and y.dtype == torch.int64
    assert ds.num_classes == 40 and len(ds.palette) == 40 and ds.classes[0] == "wall"
    assert len(set(ds.palette)) == 40
    assert len(build_dataset("nyuv2", root=out, split="test")) == len(TEST)


def test_class_mapping_table(official):
    lut = load_class_mapping(official["mapping"])
    assert lut.shape == (FINE + 1,) and lut[0] == 255
    for k in (1, 2, 500, FINE):
        assert lut[k] == official["map_class"][k - 1] - 1


def test_cli_prepare_and_dataloader(official, tmp_path, capsys):
    out = tmp_path / "cli_out"
    argv = ["data", "prepare", "nyuv2", "--mat", str(official["mat"]), "--splits"]
    argv += [str(official["splits"]), "--mapping", str(official["mapping"]), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "wrote 4 train and 3 val" in capsys.readouterr().out
    ds = build_dataset("nyuv2", root=out, transform=build_train_transform(crop_size=8))
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert [tuple(b[1].shape) for b in batches] == [(2, 8, 8), (2, 8, 8)]


def test_reads_light_weight_refinenet_layout(tmp_path):
    """The list format of DrSleep/light-weight-refinenet data/train.nyu: tab-separated paths."""
    for folder in ("train_images", "train_labels"):
        (tmp_path / folder).mkdir()
    label = np.array([[0, 39, 255], [5, 5, 5]], dtype=np.uint8)
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(tmp_path / "train_images/000003.png")
    Image.fromarray(label).save(tmp_path / "train_labels/000003.png")
    (tmp_path / "train.nyu").write_text("train_images/000003.png\ttrain_labels/000003.png\n")
    ds = build_dataset("nyuv2", root=tmp_path, split="train")
    assert torch.equal(ds[0][1], torch.from_numpy(label).long())


def test_label_40_is_rejected(tmp_path):
    (tmp_path / "i").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "i/a.png")
    Image.fromarray(np.full((2, 2), 40, dtype=np.uint8)).save(tmp_path / "i/b.png")
    (tmp_path / "val.nyu").write_text("i/a.png\ti/b.png\n")
    with pytest.raises(DatasetError, match=r"b\.png has values \[40\]"):
        build_dataset("nyuv2", root=tmp_path, split="val")[0]


def test_prepare_errors(official, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(FileNotFoundError, match=r"missing\.mat"):
        prepare_nyuv2(tmp_path / "missing.mat", official["splits"], official["mapping"], out)
    # a v5 .mat instead of the v7.3 (HDF5) labelled data
    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"images": np.zeros((2, 2))})
    with pytest.raises(DatasetError, match=r"v7\.3"):
        prepare_nyuv2(v5, official["splits"], official["mapping"], out, progress=False)
    bad_splits = tmp_path / "bad_splits.mat"
    scipy.io.savemat(
        bad_splits, {"trainNdxs": np.array([[1.0], [99.0]]), "testNdxs": np.array([[2.0]])}
    )
    with pytest.raises(DatasetError, match="refers to image 99"):
        prepare_nyuv2(official["mat"], bad_splits, official["mapping"], out, progress=False)
    overlap = tmp_path / "overlap.mat"
    scipy.io.savemat(overlap, {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[1.0]])})
    with pytest.raises(DatasetError, match="overlap"):
        prepare_nyuv2(official["mat"], overlap, official["mapping"], out, progress=False)
    short_map = tmp_path / "short_map.mat"
    scipy.io.savemat(short_map, {"mapClass": np.ones((1, 10))})
    with pytest.raises(DatasetError, match="hold value"):
        prepare_nyuv2(official["mat"], official["splits"], short_map, out, progress=False)
    bad_map = tmp_path / "bad_map.mat"
    scipy.io.savemat(bad_map, {"mapClass": np.full((1, FINE), 41.0)})
    with pytest.raises(DatasetError, match=r"1\.\.40"):
        prepare_nyuv2(official["mat"], official["splits"], bad_map, out, progress=False)


def test_malformed_list_files(tmp_path):
    (tmp_path / "train.nyu").write_text("train_images/000003.png\n")
    with pytest.raises(
        DatasetError, match=r"train\.nyu line 1: expected '<image path> <label path>'"
    ):
        build_dataset("nyuv2", root=tmp_path, split="train")
    (tmp_path / "train.nyu").write_text("")
    with pytest.raises(DatasetError, match=r"train\.nyu is empty"):
        build_dataset("nyuv2", root=tmp_path, split="train")


def test_missing_prepared_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="arseg data prepare nyuv2"):
        build_dataset("nyuv2", root=tmp_path, split="train")
