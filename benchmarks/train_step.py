"""Training-step time of LW-RefineNet-50 at the NYUv2 crop: CE alone vs CE + 0.1 AR (12, 6).

One step = forward, loss, backward, SGD step (momentum 0.9), 40 classes, random data. The two
variants run interleaved (CE, CE+AR, CE, ...) so that load on a shared machine hits both alike;
the table reports medians and the ratio (target: CE+AR / CE < 1.01). A third row, "CE + AR
logged", is the engine's CE-only step, which also computes the AR value without grad for logging;
the last row times the AR term alone (forward + backward on fixed logits, 50 repetitions), whose
ratio to the CE step is the AR overhead without the step-to-step noise of a shared machine.

    python benchmarks/train_step.py                      # CPU, and the GPU when there is one
    python benchmarks/train_step.py --device cpu --batch 2 --steps 5 --crop 500
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from arseg.losses import CEARLoss, ar_loss
from arseg.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    device: torch.device, batch: int, crop: int, steps: int, warmup: int, precision: str
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model("lwrefinenet50", num_classes=40).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    criterion = CEARLoss(lambda_ar=0.1, scales=(12, 6)).to(device)
    x = torch.randn(batch, 3, crop, crop, device=device)
    y = torch.randint(0, 40, (batch, crop, crop), device=device)
    y[:, :20] = 255  # some ignored pixels, as in NYUv2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def ce_only(logits: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(up.float(), y, ignore_index=255)

    def ce_ar(logits: torch.Tensor) -> torch.Tensor:
        return criterion(logits, y).total

    def ce_logged(logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ar_loss(logits.detach(), y)
        return ce_only(logits)

    variants = {"CE": ce_only, "CE + 0.1 AR": ce_ar, "CE + AR logged": ce_logged}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for name, loss_fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                logits = model(x).logits
                loss = loss_fn(logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    res = {k: statistics.median(v) for k, v in times.items()}

    # The AR term alone (forward + backward on fixed logits), timed over many repetitions: its
    # cost relative to a CE step is the overhead free of the step-to-step noise of a busy machine.
    with torch.no_grad():
        logits = model(x).logits.detach().float()
    logits.requires_grad_(True)
    reps = 50
    for _ in range(5):
        ar_loss(logits, y).backward()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        ar_loss(logits, y).backward()
    _sync(device)
    res["AR term alone"] = (time.perf_counter() - t0) / reps
    return res


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument(
        "--crop", type=int, default=500, help="square crop (NYUv2 LW-RefineNet recipe: 500)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="default: 2 on CPU, 6 (the recipe) on GPU"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default 3 CPU, 30 GPU)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1 CPU, 5 GPU)"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':<28} {'batch':>5} {'crop':>5} {'variant':<16} {'step (s)':>9} {'vs CE':>7}")
    for device in devices:
        gpu = device.type == "cuda"
        batch = args.batch or (6 if gpu else 2)
        steps = args.steps or (30 if gpu else 3)
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
        res = bench(device, batch, args.crop, steps, warmup, args.precision)
        name = torch.cuda.get_device_name(device) if gpu else "cpu"
        for variant, t in res.items():
            print(
                f"{name[:28]:<28} {batch:>5} {args.crop:>5} {variant:<16} {t:>9.4f} {t / res['CE']:>7.3f}"
            )


if __name__ == "__main__":
    main()
