"""Forward / forward+backward speed of the model zoo, with and without ``channels_last``.

Eval: batch 1 at the dataset's size (NYUv2 480x640; Cityscapes 1024x2048 for ICNet).
Train: forward + backward of a sum over the main and auxiliary logits on a training crop
(LW-RefineNet 500x500 as its NYUv2 recipe, PSPNet 473x473, ICNet 720x720), batch 2.
Times are medians over ``--repeats`` runs after ``--warmup`` runs; ``cl/nchw`` < 1 means
channels_last is faster. On CUDA, ICNet's eval frames/s is printed too. ``--clock cpu`` times
the process's CPU time instead of the wall clock (CPU only; use ``--threads 1``): it leaves out
the time a busy shared box keeps the process waiting, but contention (shared caches and cores)
still inflates it, so compare models measured in the same run rather than across runs.

    python benchmarks/model_speed.py                       # every model, GPU if present
    python benchmarks/model_speed.py --device cpu --models lwrefinenet50 icnet50 --repeats 2
    nice -n 10 python benchmarks/model_speed.py --device cpu --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from arseg.models import build_model, list_models

# name -> (classes, eval size, train crop)
CASES: dict[str, tuple[int, tuple[int, int], tuple[int, int]]] = {
    "lwrefinenet18": (40, (480, 640), (500, 500)),
    "lwrefinenet34": (40, (480, 640), (500, 500)),
    "lwrefinenet50": (40, (480, 640), (500, 500)),
    "lwrefinenet101": (40, (480, 640), (500, 500)),
    "lwrefinenet152": (40, (480, 640), (500, 500)),
    "lwrefinenet_mbv2": (40, (480, 640), (500, 500)),
    "lwrefinenet_efflite0": (40, (480, 640), (500, 500)),
    "lwrefinenet_efflite1": (40, (480, 640), (500, 500)),
    "lwrefinenet_efflite2": (40, (480, 640), (500, 500)),
    "pspnet50": (40, (480, 640), (473, 473)),
    "pspnet101": (40, (480, 640), (473, 473)),
    "icnet50": (19, (1024, 2048), (720, 720)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(
    fn, device: torch.device, warmup: int, repeats: int, clock=time.perf_counter
) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def bench_model(name: str, device: torch.device, channels_last: bool, args) -> dict:
    classes, eval_size, train_size = CASES[name]
    scale = args.scale
    eval_size = tuple(max(33, int(s * scale)) for s in eval_size)
    train_size = tuple(max(33, int(s * scale)) for s in train_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes).to(device, memory_format=fmt)
    out = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    out["eval_size"], out["train_size"] = eval_size, train_size

    model.eval()
    x = torch.randn(1, 3, *eval_size, device=device).contiguous(memory_format=fmt)

    def forward():
        with torch.inference_mode():
            model(x)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    out["eval_s"] = _median_seconds(forward, device, args.warmup, args.repeats, clock)

    if not args.no_train:
        model.train()
        xt = torch.randn(args.train_batch, 3, *train_size, device=device)
        xt = xt.contiguous(memory_format=fmt)

        def step():
            o = model(xt)
            loss = o.logits.float().mean() + sum(a.float().mean() for a in o.aux.values())
            loss.backward()
            model.zero_grad(set_to_none=True)

        out["train_s"] = _median_seconds(step, device, args.warmup, args.repeats, clock)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--models", nargs="+", default=None, help=f"subset of {list(CASES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink sizes for a quick look")
    parser.add_argument("--no-train", action="store_true", help="skip forward+backward")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock, or the process's CPU time (CPU device only; use with --threads 1)",
    )
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        parser.error("--clock cpu times the CPU only; use the wall clock on CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = args.models or list(CASES)
    unknown = sorted(set(models) - set(CASES))
    if unknown:
        parser.error(f"no benchmark case for {unknown}; registered models: {list_models()}")

    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (f"CPU, {torch.get_num_threads()} threads")
    )
    print(
        f"# arseg model speed on {where}; torch {torch.__version__}; "
        f"median of {args.repeats} after {args.warmup} warm-up; train batch {args.train_batch}"
        + ("; process CPU time" if args.clock == "cpu" else "")
        + (f"; sizes x{args.scale}" if args.scale != 1.0 else "")
    )
    header = (
        "| model | params (M) | eval input | eval ms (NCHW) | eval ms (CL) | CL/NCHW "
        "| train crop | train ms (NCHW) | train ms (CL) | CL/NCHW |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in models:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        nchw = bench_model(name, device, channels_last=False, args=args)
        cl = bench_model(name, device, channels_last=True, args=args)
        eval_size, train_size = nchw["eval_size"], nchw["train_size"]
        row = [
            name,
            f"{nchw['params_m']:.2f}",
            "x".join(map(str, eval_size)),
            f"{1e3 * nchw['eval_s']:.1f}",
            f"{1e3 * cl['eval_s']:.1f}",
            f"{cl['eval_s'] / nchw['eval_s']:.2f}",
            "x".join(map(str, train_size)),
        ]
        if args.no_train:
            row += ["-", "-", "-"]
        else:
            row += [
                f"{1e3 * nchw['train_s']:.1f}",
                f"{1e3 * cl['train_s']:.1f}",
                f"{cl['train_s'] / nchw['train_s']:.2f}",
            ]
        print("| " + " | ".join(row) + " |", flush=True)
        if name == "icnet50" and device.type == "cuda":
            best = min(nchw["eval_s"], cl["eval_s"])
            print(f"#   icnet50 eval at {'x'.join(map(str, eval_size))}: {1 / best:.1f} frames/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
