"""arseg.data: datasets (NYUv2-40, Cityscapes, CamVid, synthetic scenes) and transforms.

Example:
    >>> from arseg.data import build_dataset, build_train_transform
    >>> ds = build_dataset("synthetic", num_samples=2, size=64,
    ...                    transform=build_train_transform(crop_size=48))
    >>> [t.shape for t in ds[0]]
    [torch.Size([3, 48, 48]), torch.Size([48, 48])]
"""

from . import camvid, cityscapes, nyuv2, synthetic  # noqa: F401  (register the datasets)
from .base import DatasetError
from .registry import build_dataset, list_datasets, register_dataset
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_eval_transform,
    build_train_transform,
    denormalize,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetError",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
    "denormalize",
    "list_datasets",
    "register_dataset",
]
