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
    if not (target.ndim == 3 or (target.ndim == 4 and target.shape[1] == 1)):
        raise ValueError(
            f"{name} must have 3 dimensions (B, H, W) or 4 with one channel (B, 1, H, W), "
            f"got {_describe(target)}"
        )
    if target.shape[-2] < 1 or target.shape[-1] < 1:
        raise ValueError(
            f"{name} must have at least one pixel (H>=1, W>=1), got {_describe(target)}"
        )


def label_map(target: Tensor) -> Tensor:
    """(B, H, W) view of a checked (B, H, W) or (B, 1, H, W) target."""
    return target.squeeze(1) if target.ndim == 4 else target


def class_logits(logits: Tensor) -> Tensor:
    """(B, C, h, w) class scores of checked logits; a one-channel (sigmoid) map becomes two.

    One channel ``z`` is the logit of class 1 (foreground): the two-class distribution
    ``(1 - p, p)`` with ``p = sigmoid(z)`` is exactly ``softmax((0, z))``, so the map is padded
    with a zero channel in front (differentiable; labels must then be 0, 1 or ignored).
    """
    if logits.shape[1] != 1:
        return logits
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


def check_weight(weight: object, target: Tensor) -> Tensor:
    """Per-pixel weights (B, H, W) or (B, 1, H, W), finite and >= 0, shaped like the target.

    Returns the (B, H, W) weights. The value check is one synchronisation (an in-graph assert
    under ``torch.compile``, as in :func:`check_label_values`).
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor (B, H, W), got {type(weight).__name__}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must be a floating-point tensor, got {_describe(weight)}")
    labels = label_map(target)
    w = weight.squeeze(1) if weight.ndim == 4 and weight.shape[1] == 1 else weight
    if w.shape != labels.shape:
        raise ValueError(
            f"weight must have the target's shape {tuple(labels.shape)} (B, H, W), "
            f"got {_describe(weight)}"
        )
    if w.device != labels.device:
        raise ValueError(f"weight must be on the target's device {labels.device}, got {w.device}")
    ok = (torch.isfinite(w) & (w >= 0)).all()
    if torch.compiler.is_compiling():
        torch._assert_async(ok, "weight must be finite and >= 0 everywhere")
    elif not bool(ok):
        raise ValueError("weight must be finite and >= 0 everywhere")
    return w


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

    One device-to-host synchronisation. While ``torch.compile`` traces, the check becomes an
    in-graph ``torch._assert_async`` (no graph break, no values in the message): on CPU it raises
    ``RuntimeError`` with this message; on CUDA it is a device-side assert, which CUDA reports
    without the message (as it would the index error it replaces).
    """
    if target.numel() == 0:
        return
    upper = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
    if torch.compiler.is_compiling():
        t = target.long()
        ok = (t == ignore_index) | ((t >= 0) & (t < (num_classes or torch.iinfo(torch.int64).max)))
        torch._assert_async(
            ok.all(), f"target labels must be in {upper} or equal ignore_index={ignore_index}"
        )
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
    raise ValueError(
        f"target labels must be in {upper} or equal ignore_index={ignore_index}, found {values}"
    )
