"""Dataset registry: configs name datasets, :func:`build_dataset` builds them.

Example:
    >>> from arseg.data import build_dataset, list_datasets
    >>> "synthetic" in list_datasets()
    True
    >>> ds = build_dataset("synthetic", split="train", num_samples=4, size=(32, 48))
    >>> image, target = ds[0]
    >>> image.shape, target.dtype
    (torch.Size([3, 32, 48]), torch.int64)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.utils.data import Dataset

_DATASETS: dict[str, Callable[..., Dataset]] = {}
_BUILTIN = ("camvid", "cityscapes", "folder", "nyuv2", "synthetic")


def _register_builtin() -> None:
    """Import the built-in dataset modules (each registers itself); cheap after the first call."""
    for module in _BUILTIN:
        importlib.import_module(f"arseg.data.{module}")


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Class decorator adding a dataset to the registry under ``name``.

    The registered callable is called as ``cls(root=root, split=split, transform=transform,
    **options)``.
    """

    def decorator(cls: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered (by {_DATASETS[name]!r})")
        _DATASETS[name] = cls
        return cls

    return decorator


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    _register_builtin()
    return sorted(_DATASETS)


def build_dataset(
    name: str,
    root: Any = None,
    split: str = "train",
    transform: Callable | None = None,
    **options: Any,
) -> Dataset:
    """Build the dataset registered as ``name``.

    Args:
        name: one of :func:`list_datasets` (``"folder"``: your own images and masks, see
            :mod:`arseg.data.folder`; ``"nyuv2"``, ``"cityscapes"``, ``"camvid"``,
            ``"synthetic"``).
        root: the dataset folder (``None`` only for ``"synthetic"``).
        split: ``"train"``, ``"val"`` (and ``"test"`` where the dataset has one).
        transform: a callable ``(tv_tensors.Image uint8, tv_tensors.Mask) -> (image, target)``,
            e.g. :func:`arseg.data.transforms.build_train_transform`; ``None`` means
            :func:`arseg.data.transforms.build_eval_transform` (full image, normalised).
        **options: dataset-specific keyword arguments.

    Returns:
        A ``torch.utils.data.Dataset`` whose items are ``(image float32 (3, H, W),
        target int64 (H, W))`` with 255 = ignore, carrying ``classes``, ``num_classes``,
        ``ignore_index``, ``palette`` and ``sample_name(i)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__}")
    _register_builtin()
    try:
        factory = _DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(list_datasets())}"
        ) from None
    _check_options(name, factory, options)
    return factory(root=root, split=split, transform=transform, **options)


def _check_options(name: str, factory: Callable[..., Dataset], options: dict[str, Any]) -> None:
    """An option the dataset does not take is a one-line error listing those it takes."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [k for k in params if k not in ("root", "split", "transform", "self")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"{name}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f"; valid options: {', '.join(valid) or 'none'}"
        )
