"""Input validation at the public boundaries of :mod:`arseg.losses`."""

from __future__ import annotations

import torch
from torch import Tensor

_LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(x: Tensor) -> str:
    return f"shape {tuple(x.shape)} and dtype {x.dtype}"


def check_logits(logits: object, name: str = "logits") -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, h, w), got {type(logits).__name__}")
    if logits.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, C, h, w), got {_describe(logits)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {_describe(logits)}"
        )
    if logits.shape[1] < 1 or logits.shape[2] < 1 or logits.shape[3] < 1:
        raise ValueError(
            f"{name} must have at least one class and one pixel (B, C>=1, h>=1, w>=1), "
            f"got {_describe(logits)}"
        )


def check_target(target: object, name: str = "target") -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, H, W), got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class labels (e.g. torch.int64), got {_describe(target)}"
        )
    if target.ndim != 3:
        raise ValueError(f"{name} must have 3 dimensions (B, H, W), got {_describe(target)}")
    if target.shape[1] < 1 or target.shape[2] < 1:
        raise ValueError(
            f"{name} must have at least one pixel (H>=1, W>=1), got {_describe(target)}"
        )


def check_ignore_index(ignore_index: object) -> None:
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")


def check_batch(logits: Tensor, target: Tensor) -> None:
    if logits.device != target.device:
        raise ValueError(
            f"logits and target must be on the same device, got logits on {logits.device} and "
            f"target on {target.device}"
        )
    if logits.shape[0] != target.shape[0]:
        raise ValueError(
            "logits and target must have the same batch size, got "
            f"logits {tuple(logits.shape)} (B={logits.shape[0]}) and "
            f"target {tuple(target.shape)} (B={target.shape[0]})"
        )


def check_label_values(target: Tensor, num_classes: int | None, ignore_index: int) -> None:
    """Every label must be in [0, num_classes) or equal ``ignore_index``.

    One device-to-host synchronisation; skipped while ``torch.compile`` traces (a data-dependent
    branch would break the graph).
    """
    if torch.compiler.is_compiling() or target.numel() == 0:
        return
    # Compare in the target's own dtype only where ignore_index is representable in it: an int8
    # target would otherwise compare against 255 wrapped to -1 (and uint8 against -1 as 255),
    # while the loss compares the labels as int64.
    info = torch.iinfo(target.dtype)
    if info.min <= ignore_index <= info.max:
        ignored = target == ignore_index
    else:
        ignored = torch.zeros_like(target, dtype=torch.bool)
    # Fast path: two passes over the map and one synchronisation.
    low, high = torch.stack(torch.where(ignored, 0, target).aminmax()).tolist()
    if low >= 0 and (num_classes is None or high < num_classes):
        return
    bad = (target < 0) & ~ignored
    if num_classes is not None:
        bad |= (target >= num_classes) & ~ignored
    values = torch.unique(target[bad])[:8].tolist()
    upper = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
    raise ValueError(
        f"target labels must be in {upper} or equal ignore_index={ignore_index}, found {values}"
    )
