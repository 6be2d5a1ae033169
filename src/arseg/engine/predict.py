"""``arseg predict``: segment images with a checkpoint; label, colour and overlay PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from arseg.data.base import read_image
from arseg.data.colors import colorize, default_palette, overlay

from .checkpoint import find_checkpoint, load_checkpoint, load_model
from .inference import predict_logits

__all__ = ["colorize", "default_palette", "overlay", "predict_paths"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _list_inputs(inputs: Path) -> list[Path]:
    if inputs.is_dir():
        files = sorted(p for p in inputs.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {inputs}")
        return files
    if not inputs.is_file():
        raise FileNotFoundError(f"input image or folder not found: {inputs}")
    return [inputs]


def _output_names(files: list[Path]) -> list[str]:
    """``NAME`` for ``NAME.ext``; ``NAME_ext`` where two inputs share a name (a.png, a.jpg)."""
    stems = [f.stem for f in files]
    return [
        f"{f.stem}_{f.suffix.lstrip('.').lower()}" if stems.count(f.stem) > 1 else f.stem
        for f in files
    ]


def predict_paths(
    checkpoint: str | Path,
    inputs: str | Path,
    out: str | Path,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    accelerator: str = "cpu",
) -> list[Path]:
    """Segment an image or a folder of images; returns the written ``*_color.png`` paths.

    For each input ``NAME.ext`` writes ``NAME_label.png`` (class ids, mode L),
    ``NAME_color.png`` (palette colours) and ``NAME_overlay.png`` (50 % blend) into ``out``
    (``NAME_ext_*.png`` where two inputs share a name). Grey, RGBA and 16-bit images are read as
    RGB (:func:`arseg.data.base.read_image`); an unreadable file is a ``DatasetError``.
    """
    from arseg.data import IMAGENET_MEAN, IMAGENET_STD

    files = _list_inputs(Path(inputs))
    device = torch.device(
        "cuda" if accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    )
    path = find_checkpoint(checkpoint)
    model, cfg = load_model(path, map_location=device)
    palette = load_checkpoint(path).get("arseg_palette") or default_palette(
        cfg["model"]["num_classes"]
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    written = []
    for file, name in zip(files, _output_names(files)):
        rgb = read_image(file)
        x = torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float().div(255)
        x = (x - mean) / std
        resize = cfg["data"]["eval_resize"]
        if resize:
            x = torch.nn.functional.interpolate(
                x, size=tuple(resize), mode="bilinear", align_corners=False
            )
        logits = predict_logits(model, x, scales=tuple(scales), flip=flip)
        if logits.shape[-2:] != rgb.shape[:2]:
            logits = torch.nn.functional.interpolate(
                logits, size=rgb.shape[:2], mode="bilinear", align_corners=False
            )
        labels = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        color = colorize(labels, palette)
        Image.fromarray(labels, mode="L").save(out / f"{name}_label.png")
        Image.fromarray(color).save(out / f"{name}_color.png")
        Image.fromarray(overlay(rgb, color)).save(out / f"{name}_overlay.png")
        written.append(out / f"{name}_color.png")
    return written
