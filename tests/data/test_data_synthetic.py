"""Synthetic scenes: determinism, shapes, ambiguity by design, loaders, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import DataLoader

from arseg.data import build_dataset, build_train_transform, list_datasets
from arseg.data.synthetic import BOX, CORE, DISC, FRAME, POND


def test_registered_with_metadata():
    assert {"synthetic", "camvid"} <= set(list_datasets())
    ds = build_dataset("synthetic", num_samples=3, size=32)
    assert ds.num_classes == len(ds.classes) == len(ds.palette) == 6
    assert ds.ignore_index == 255
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ds.palette)
    assert ds.sample_name(42) == "synthetic_000042"
    assert len(ds) == 3


def test_deterministic_per_seed_split_and_index():
    a = build_dataset("synthetic", num_samples=5, size=(40, 56), seed=3)
    b = build_dataset("synthetic", num_samples=5, size=(40, 56), seed=3)
    for i in (0, 4):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0], a[1][0])
    other_seed = build_dataset("synthetic", num_samples=5, size=(40, 56), seed=4)
    assert not torch.equal(a[0][0], other_seed[0][0])
    val = build_dataset("synthetic", split="val", num_samples=5, size=(40, 56), seed=3)
    assert not torch.equal(a[0][0], val[0][0])


@pytest.mark.parametrize("size", [(8, 8), (33, 100), (100, 33), (64, 64)])
def test_any_size(size):
    ds = build_dataset("synthetic", num_samples=2, size=size)
    x, y = ds[1]
    assert x.shape == (3, *size) and x.dtype == torch.float32
    assert y.shape == size and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) < 6


def _scenes(n=40, size=(64, 64)):
    ds = build_dataset("synthetic", num_samples=n, size=size, seed=0)
    return [ds.load(i) for i in range(n)]


def test_all_classes_appear_and_colour_is_ambiguous():
    scenes = _scenes()
    images = np.stack([s[0] for s in scenes]).astype(np.float64)
    labels = np.stack([s[1] for s in scenes])
    assert set(np.unique(labels).tolist()) == set(range(6))
    mean = {c: images[labels == c].mean(axis=0) for c in range(6)}
    # Pairs that share colours: per-pixel colour cannot separate them ...
    assert np.abs(mean[DISC] - mean[BOX]).max() < 10
    assert np.abs(mean[CORE] - mean[POND]).max() < 10
    # ... while the colour groups themselves are far apart.
    assert np.abs(mean[DISC] - mean[CORE]).max() > 80
    assert np.abs(mean[FRAME] - mean[DISC]).max() > 80


def test_core_is_enclosed_by_a_frame_and_pond_is_not():
    for _, label in _scenes(20, size=(96, 96)):
        # Regions of the plane cut by frames (4-connected): a core lies in a region closed off
        # by its frame, a pond in the open region that reaches the image border.
        regions, _ = ndimage.label(label != FRAME)
        border = np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))
        core_regions = np.unique(regions[label == CORE])
        pond_regions = np.unique(regions[label == POND])
        assert not np.isin(core_regions, border).any()
        assert np.isin(pond_regions, border).all()


def test_dataloader_with_two_workers_matches_direct_indexing():
    ds = build_dataset("synthetic", num_samples=10, size=(48, 48), seed=1)
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(batches[1][0][0], ds[4][0])
    assert torch.equal(
        torch.cat([b[1] for b in batches]), torch.stack([ds[i][1] for i in range(10)])
    )


def test_train_transform_applies():
    ds = build_dataset(
        "synthetic", num_samples=2, size=(40, 40), transform=build_train_transform(crop_size=32)
    )
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="root"):
        build_dataset("synthetic", root="/tmp")
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", split="training")
    with pytest.raises(ValueError, match="8x8"):
        build_dataset("synthetic", size=(4, 64))
    with pytest.raises(TypeError, match="size"):
        build_dataset("synthetic", size=(64.0, 64))
    with pytest.raises(ValueError, match="num_samples"):
        build_dataset("synthetic", num_samples=-1)
    with pytest.raises(IndexError):
        build_dataset("synthetic", num_samples=2)[2]
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet")
