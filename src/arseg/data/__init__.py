"""arseg.data: datasets (your own folder of images and masks, NYUv2-40, Cityscapes, CamVid,
synthetic scenes) and transforms.

Example:
    >>> from arseg.data import build_dataset, build_train_transform
    >>> ds = build_dataset("synthetic", num_samples=2, size=64,
    ...                    transform=build_train_transform(crop_size=48))
    >>> [t.shape for t in ds[0]]
    [torch.Size([3, 48, 48]), torch.Size([48, 48])]
"""

import importlib

# Imported on first use (``arseg --help`` must not load torch); the registry imports the built-in
# datasets itself when it lists or builds one.
_EXPORTS = {
    "DatasetError": "base",
    "build_dataset": "registry",
    "list_datasets": "registry",
    "register_dataset": "registry",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "build_eval_transform": "transforms",
    "build_train_transform": "transforms",
    "denormalize": "transforms",
}

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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"arseg.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arseg.data' has no attribute {name!r}")
