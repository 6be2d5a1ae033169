"""Inference: logits at the image size, single- or multi-scale, with flip, whole or sliding window.

Multi-scale / flip averages the softmax probabilities of every (scale, flip) pass, each resized
bilinearly to the image size (as hszhao/semseg does for PSPNet), and returns their log: valid
logits whose softmax is that average. Inside one sliding-window pass the overlapping windows'
*logits* are averaged (semseg averages their softmax; the two agree where windows agree). A
single plain pass returns the model's logits upsampled bilinearly to the image size.

Logits are upsampled with the convention the model declares, ``model.align_corners``
(:func:`model_align_corners`: ``True`` for PSPNet and ICNet, whose references resize
corner-aligned; ``False`` otherwise and for models that declare nothing), so a converted
semseg checkpoint gives semseg's logits. Resizing images to a scale and the per-scale results
back to the image size stays ``align_corners=False`` (semseg does those with ``cv2.resize``).

Example:
    >>> import torch
    >>> from arseg.models import build_model
    >>> model = build_model("lwrefinenet18", num_classes=5, decoder_channels=16).eval()
    >>> predict_logits(model, torch.randn(1, 3, 50, 70)).shape
    torch.Size([1, 5, 50, 70])
    >>> predict_logits(model, torch.randn(1, 3, 50, 70), scales=(0.75, 1.0), flip=True,
    ...                mode="slide", window=(32, 32)).shape
    torch.Size([1, 5, 50, 70])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["model_align_corners", "predict_logits", "upsample_logits"]


def model_align_corners(model: nn.Module) -> bool:
    """The logit-resize convention ``model`` declares (``False`` for models that declare none)."""
    value = getattr(model, "align_corners", False)
    if not isinstance(value, bool):
        raise TypeError(f"model.align_corners must be a bool, got {type(value).__name__}")
    return value


def upsample_logits(logits: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of logits ``(B, C, h, w)`` to ``size = (H, W)``, as float32.

    float64 stays float64. ``align_corners`` is the model's convention
    (:func:`model_align_corners`); logits already of size ``(H, W)`` are only cast.
    """
    size = (int(size[0]), int(size[1]))
    if logits.dtype != torch.float64:
        logits = logits.float()
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if isinstance(out, tuple) and hasattr(out, "logits"):  # SegmentationOutput in train mode
        out = out.logits
    if not isinstance(out, Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, expected logits (B, C, h, w)")
    return out


def _whole(model: nn.Module, x: Tensor) -> Tensor:
    return upsample_logits(_forward(model, x), x.shape[-2:], model_align_corners(model))


def _slide(model: nn.Module, x: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Average the window logits (each upsampled to its window) over a grid of windows."""
    _, _, h, w = x.shape
    wh, ww = window
    sh, sw = stride
    pad_h, pad_w = max(wh - h, 0), max(ww - w, 0)
    if pad_h or pad_w:  # image smaller than the window: pad with zeros (the normalised mean)
        x = F.pad(x, (0, pad_w, 0, pad_h))
    ph, pw = x.shape[-2:]
    rows = max(math.ceil((ph - wh) / sh), 0) + 1
    cols = max(math.ceil((pw - ww) / sw), 0) + 1
    total: Tensor | None = None
    count = x.new_zeros((1, 1, ph, pw))
    for r in range(rows):
        for c in range(cols):
            y0 = min(r * sh, ph - wh)
            x0 = min(c * sw, pw - ww)
            crop = x[..., y0 : y0 + wh, x0 : x0 + ww]
            logits = _whole(model, crop)
            if total is None:
                total = x.new_zeros((x.shape[0], logits.shape[1], ph, pw), dtype=torch.float32)
            total[..., y0 : y0 + wh, x0 : x0 + ww] += logits
            count[..., y0 : y0 + wh, x0 : x0 + ww] += 1
    assert total is not None
    return (total / count)[..., :h, :w]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    mode: str = "whole",
    window: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> Tensor:
    """Class logits of ``model`` at the size of ``images``.

    Args:
        model: a segmentation model (eval mode is expected; its output may be logits or a
            ``SegmentationOutput``).
        images: (B, 3, H, W) float, ImageNet-normalised.
        scales: image scales to run (e.g. ``(0.5, 0.75, 1.0, 1.25, 1.5, 1.75)``).
        flip: also run horizontally flipped images.
        mode: ``"whole"`` (one pass per scale) or ``"slide"`` (windows of ``window``).
        window: (h, w) of the sliding window, required for ``mode="slide"``.
        stride: (h, w) of the window step, 1 .. window per side; default two thirds of the window.

    Returns:
        (B, C, H, W) float32 logits. With more than one pass these are the log of the averaged
        softmax probabilities.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    if mode == "slide":
        if window is None or len(window) != 2:
            raise ValueError(f"mode='slide' needs window=(h, w), got {window!r}")
        win = (int(window[0]), int(window[1]))
        step = (
            (int(stride[0]), int(stride[1]))
            if stride is not None
            else (max(1, win[0] * 2 // 3), max(1, win[1] * 2 // 3))
        )
        if min(win) < 1:
            raise ValueError(f"window sides must be >= 1, got {win}")
        if not all(1 <= s <= ws for s, ws in zip(step, win)):
            # a step longer than the window would leave pixels that no window covers
            raise ValueError(f"stride must be between 1 and the window {win} per side, got {step}")

    model_align_corners(model)  # a wrong declaration fails before any pass runs
    h, w = images.shape[-2:]
    passes: list[Tensor] = []
    for scale in scales:
        if scale == 1.0:
            x = images
        else:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = _slide(model, xi, win, step) if mode == "slide" else _whole(model, xi)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            passes.append(logits)
    if len(passes) == 1:
        return passes[0]
    probs = torch.stack([p.softmax(1) for p in passes]).mean(0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
