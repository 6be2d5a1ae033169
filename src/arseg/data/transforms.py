"""Joint image/label transforms built on ``torchvision.transforms.v2``.

Every transform here is a callable ``(image, mask) -> (image, target)`` taking a
``tv_tensors.Image`` (uint8, ``(3, H, W)``) and a ``tv_tensors.Mask`` (integer, ``(H, W)``) and
returning plain tensors: the image float32 ``(3, H', W')`` normalised with ImageNet statistics,
the target int64 ``(H', W')`` with 255 = ignore. Labels are always resampled with nearest
neighbour (torchvision dispatches ``Mask`` to its nearest kernels), so no label value is ever
created that was not in the input, except the ignore value used for padding.

Example:
    >>> import torch
    >>> from torchvision import tv_tensors
    >>> from arseg.data.transforms import build_train_transform, denormalize
    >>> image = tv_tensors.Image(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8))
    >>> mask = tv_tensors.Mask(torch.randint(0, 5, (60, 80), dtype=torch.uint8))
    >>> x, y = build_train_transform(crop_size=64)(image, mask)
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([3, 64, 64]), torch.float32, torch.Size([64, 64]), torch.int64)
    >>> bool(denormalize(x).min() >= 0)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomScale",
    "SegmentationTransform",
    "build_eval_transform",
    "build_train_transform",
    "denormalize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

# The mean colour in uint8: padding the image with it makes padded pixels 0 after normalisation.
_MEAN_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair, got a bool")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a (height, width) pair of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (relative to the input size).

    With ``min_short_side``, a factor that would make the shorter side smaller than it is raised
    to ``min_short_side / shorter side`` (Light-Weight RefineNet's ``ResizeShorterScale``: NYUv2
    frames of 480x640 with 350 are never scaled below 0.73). Images use bilinear interpolation
    (antialiased), masks nearest neighbour at the output pixel centres (``nearest-exact``).
    """

    def __init__(
        self, scale_range: tuple[float, float] = (0.5, 2.0), min_short_side: int | None = None
    ) -> None:
        super().__init__()
        if min_short_side is not None and (
            isinstance(min_short_side, bool)
            or not isinstance(min_short_side, int)
            or min_short_side < 1
        ):
            raise ValueError(
                f"min_short_side must be a positive int or None, got {min_short_side!r}"
            )
        self.min_short_side = min_short_side
        if (
            not isinstance(scale_range, Sequence)
            or len(scale_range) != 2
            or not all(isinstance(s, (int, float)) for s in scale_range)
        ):
            raise TypeError(
                f"scale_range must be a (min, max) pair of numbers, got {scale_range!r}"
            )
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not (0 < lo <= hi):
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range!r}")
        self.scale_range = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand(()).item()
        if self.min_short_side is not None:
            scale = max(scale, self.min_short_side / min(height, width))
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        return {"size": size}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            params["size"],
            interpolation=_interpolation(inpt),
            antialias=True,
        )


def _interpolation(inpt: Any) -> v2.InterpolationMode:
    # Masks: the pixel holding each output pixel's centre (nearest-exact), where the bilinear
    # image samples too; v2 otherwise maps masks to "nearest", floor(i * in / out), the output
    # pixel's corner: labels shifted against the image by up to half an output pixel.
    if isinstance(inpt, tv_tensors.Mask):
        return v2.InterpolationMode.NEAREST_EXACT
    return v2.InterpolationMode.BILINEAR


class _Resize(v2.Resize):
    """``v2.Resize`` (bilinear, antialiased) with masks resized nearest-exact."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize,
            inpt,
            self.size,
            interpolation=_interpolation(inpt),
            max_size=self.max_size,
            antialias=self.antialias,
        )


class SegmentationTransform:
    """Apply a ``v2`` pipeline jointly to an image and its mask; return plain tensors.

    Args:
        transforms: ``v2`` transforms applied in order to ``(Image, Mask)`` before conversion
            to float, normalisation and int64 targets.
    """

    def __init__(self, transforms: Sequence[v2.Transform]) -> None:
        self.pipeline = v2.Compose(
            [
                *transforms,
                v2.ToDtype(
                    {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                    scale=True,
                ),
                v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            ]
        )

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3:
            raise TypeError(
                "image must be a uint8 tensor (tv_tensors.Image) of shape (3, H, W), got "
                f"{_describe(image)}"
            )
        if image.shape[0] != 3:
            raise ValueError(
                f"image must have 3 channels (3, H, W), got shape {tuple(image.shape)}"
            )
        if (
            not isinstance(mask, torch.Tensor)
            or mask.dtype.is_floating_point
            or mask.dtype.is_complex
            or mask.ndim != 2
        ):
            raise TypeError(
                f"mask must be an integer tensor (tv_tensors.Mask) of shape (H, W), got {_describe(mask)}"
            )
        if image.shape[-2:] != mask.shape:
            raise ValueError(
                f"image and mask sizes differ: image {tuple(image.shape[-2:])}, mask {tuple(mask.shape)}"
            )
        if not isinstance(image, tv_tensors.Image):
            image = tv_tensors.Image(image)
        if not isinstance(mask, tv_tensors.Mask):
            mask = tv_tensors.Mask(mask)
        out_image, out_mask = self.pipeline(image, mask)
        return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{type(x).__name__} of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def build_train_transform(
    crop_size: int | Sequence[int],
    scale_range: tuple[float, float] | None = (0.5, 2.0),
    hflip: bool = True,
    min_short_side: int | None = None,
    rotate_degrees: float = 0.0,
    blur_prob: float = 0.0,
) -> SegmentationTransform:
    """Training augmentation: random scale, random crop (label padded with 255), flip, normalise.

    Args:
        crop_size: output size, an int (square) or ``(height, width)``. Inputs smaller than the
            crop after scaling are padded: the image with the ImageNet mean colour (0 after
            normalisation), the label with 255 (ignore).
        scale_range: ``(min, max)`` resize factor, drawn uniformly per sample; ``None`` disables
            scaling.
        hflip: random horizontal flip with probability 0.5.
        min_short_side: lower bound of the shorter side after random scaling (see
            :class:`RandomScale`); ``None``: no bound.
        rotate_degrees: with probability 0.5, a random rotation in ``[-d, d]`` degrees after
            scaling (semseg's PSPNet recipe: 10); the image bilinear with the mean colour filled
            in, the label nearest with 255. 0 disables it.
        blur_prob: probability of a 5x5 Gaussian blur of the image (semseg: 0.5); the label is
            untouched. 0 disables it.

    Returns:
        A callable ``(Image uint8 (3, H, W), Mask (H, W)) -> (float32 (3, h, w), int64 (h, w))``
        with ``(h, w) == crop_size``.
    """
    size = _pair(crop_size, "crop_size")
    transforms: list[v2.Transform] = []
    if scale_range is not None:
        transforms.append(RandomScale(scale_range, min_short_side))
    if not 0 <= rotate_degrees <= 180:
        raise ValueError(f"rotate_degrees must be in [0, 180], got {rotate_degrees!r}")
    if not 0 <= blur_prob <= 1:
        raise ValueError(f"blur_prob must be in [0, 1], got {blur_prob!r}")
    if rotate_degrees > 0:  # with probability 0.5, as semseg's RandRotate
        rotate = v2.RandomRotation(
            rotate_degrees,
            interpolation=v2.InterpolationMode.BILINEAR,  # masks: always nearest in v2
            fill={tv_tensors.Image: _MEAN_UINT8, tv_tensors.Mask: IGNORE_INDEX},
        )
        transforms.append(v2.RandomApply([rotate], p=0.5))
    if blur_prob > 0:  # v2 blurs images only; masks pass through
        transforms.append(v2.RandomApply([v2.GaussianBlur(5)], p=blur_prob))
    transforms.append(
        v2.RandomCrop(
            size,
            pad_if_needed=True,
            fill={tv_tensors.Image: _MEAN_UINT8, tv_tensors.Mask: IGNORE_INDEX},
        )
    )
    if hflip:
        transforms.append(v2.RandomHorizontalFlip(p=0.5))
    return SegmentationTransform(transforms)


def build_eval_transform(resize: int | Sequence[int] | None = None) -> SegmentationTransform:
    """Evaluation transform: the full image (``resize=None``) or a fixed resize, normalised.

    Args:
        resize: ``None`` keeps the full image; ``(height, width)`` resizes to exactly that size;
            an int resizes the shorter side to it, keeping the aspect ratio. The label is
            resized with nearest neighbour.
    """
    transforms: list[v2.Transform] = []
    if resize is not None:
        if isinstance(resize, int) and not isinstance(resize, bool):
            if resize <= 0:
                raise ValueError(f"resize must be positive, got {resize}")
            size: int | list[int] = resize
        else:
            size = list(_pair(resize, "resize"))
        transforms.append(_Resize(size, antialias=True))
    return SegmentationTransform(transforms)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: float image in ``[0, 1]`` (clamped).

    Args:
        image: float tensor ``(3, H, W)`` or ``(B, 3, H, W)``, normalised.

    Returns:
        A float tensor of the same shape, ``image * std + mean`` clamped to ``[0, 1]``.
    """
    if not isinstance(image, torch.Tensor) or not image.dtype.is_floating_point:
        raise TypeError(f"image must be a float tensor, got {_describe(image)}")
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"image must have shape (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp_(0.0, 1.0)
