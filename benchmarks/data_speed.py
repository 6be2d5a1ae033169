"""Throughput of the data pipeline: decode + joint transforms, images per second.

For each pipeline it iterates a ``DataLoader`` (batch size 8, shuffled) with 0 and with 2
worker processes and prints images/s side by side with the ratio 2 workers / 0 workers.
The first batch (worker start-up) is not timed.

* ``camvid decode``      PNG decode + label check/mapping only (full 360x480, no transform)
* ``camvid half-res``    scale 0.375-0.75, crop 180x240 (half resolution), flip, normalise
* ``camvid full-res``    scale 0.5-2.0, crop 360x480, flip, normalise (the paper's style)
* ``synthetic 64``       synthetic scenes generated at 64x64 (the CPU demo), eval transform

    python benchmarks/data_speed.py                       # needs ../shared/data/camvid
    python benchmarks/data_speed.py --camvid PATH --images 240
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from arseg.data import build_dataset, build_train_transform


class _Raw:
    """The dataset's raw ``load`` only (decode + label check + mapping), as tensors."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        image, target = self.ds.load(i)
        return torch.from_numpy(image), torch.from_numpy(target)


def images_per_second(dataset, workers: int, n_images: int, batch_size: int = 8) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    seen = 0
    start = None
    for images, _ in loader:
        if start is None:  # skip the first batch: worker start-up
            start = time.perf_counter()
            continue
        seen += images.shape[0]
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    default_camvid = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", default=os.environ.get("ARSEG_CAMVID", str(default_camvid)))
    parser.add_argument("--images", type=int, default=160, help="images timed per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process, as in DataLoader workers

    pipelines = {}
    if (Path(args.camvid) / "train.txt").is_file():
        root = args.camvid
        pipelines["camvid decode"] = _Raw(build_dataset("camvid", root=root, split="train"))
        pipelines["camvid half-res"] = build_dataset(
            "camvid",
            root=root,
            split="train",
            transform=build_train_transform((180, 240), scale_range=(0.375, 0.75)),
        )
        pipelines["camvid full-res"] = build_dataset(
            "camvid",
            root=root,
            split="train",
            transform=build_train_transform((360, 480), scale_range=(0.5, 2.0)),
        )
    else:
        print(f"CamVid not found at {args.camvid}: synthetic only")
    pipelines["synthetic 64"] = build_dataset(
        "synthetic", split="train", num_samples=4096, size=(64, 64)
    )

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.images} images per measurement"
    )
    print(f"{'pipeline':<18} {'0 workers':>11} {'2 workers':>11} {'2w / 0w':>8}")
    for name, ds in pipelines.items():
        n = args.images * (8 if name.startswith("synthetic") else 1)
        r0 = images_per_second(ds, 0, n)
        r2 = images_per_second(ds, 2, n)
        print(f"{name:<18} {r0:9.1f}/s {r2:9.1f}/s {r2 / r0:7.2f}x")


if __name__ == "__main__":
    main()
