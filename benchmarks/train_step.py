"""Training-step time: what the AR term costs, where a step's time goes, and what makes it faster.

Two settings:

``--setting nyuv2`` (default): LW-RefineNet-50 (40 classes) at the NYUv2 crop 500x500, one SGD
step (forward, loss, backward, step) with CE alone, CE + 0.1 AR at the paper's grids (12, 6), CE
+ 0.1 AR at full resolution (``scales=None``, factorized) and CE plus the AR value computed
without grad (what a CE-only ``arseg fit`` step logs). The variants run interleaved (CE, CE+AR,
..., CE, ...) so that load on a shared machine hits all alike; medians and ratios to CE (target:
CE+AR / CE < 1.01). The last rows time the AR term alone (forward + backward on fixed logits,
many repetitions): its ratio to the CE step is the AR overhead without the step-to-step noise.

``--setting camvid``: the CamVid fine-tune (configs/camvid/pretrained/finetune.yaml with the
baseline's 180x240 crops: LW-RefineNet on EfficientNet-Lite0, 128-channel decoder, 11 classes,
batch 8, CE + 1.0 AR (12, 6), SGD momentum 0.9, weight decay 1e-4, gradient clipping 5.0) on real
CamVid batches made by the engine's own training pipeline. It prints

1. data loading per batch from the real files (PNG decode + label mapping + the random scale /
   crop / flip / normalise), and the same with the decoded images cached in memory;
2. a ``torch.profiler`` breakdown of one step (data, forward, CE, AR, backward, optimizer) and its
   top operators, NCHW and channels_last;
3. the levers side by side: each variant (memory format, threads, inter-op threads, torch.compile
   of the model; on CUDA bf16 autocast) in a fresh process, ``--rounds`` rounds in alternating
   order, with the step's phases and the ratio to the first variant;
4. whether channels_last changes results beyond float rounding: logits, loss, and the loss and
   weights after one SGD step, relative differences NCHW vs channels_last.

    python benchmarks/train_step.py                                   # CPU, and the GPU if any
    python benchmarks/train_step.py --device cpu --batch 1 --steps 5 --threads 1
    python benchmarks/train_step.py --setting camvid --device cpu --compile
    python benchmarks/train_step.py --setting camvid --device cuda --compile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from arseg.losses import CEARLoss, ar_loss
from arseg.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CAMVID_CONFIG = ROOT / "configs" / "camvid" / "pretrained" / "finetune.yaml"
DEFAULT_CAMVID = Path(
    os.environ.get("ARSEG_CAMVID", str(ROOT.parent / "shared" / "data" / "camvid"))
)
PHASES = ("forward", "loss:ce", "loss:ar", "backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


# ============================================================================ nyuv2 setting
def bench(
    device: torch.device, batch: int, crop: int, steps: int, warmup: int, precision: str
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model("lwrefinenet50", num_classes=40).to(device).train()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    criterion = CEARLoss(lambda_ar=0.1, scales=(12, 6)).to(device)
    criterion_full = CEARLoss(lambda_ar=0.1, scales=None, method="factorized").to(device)
    x = torch.randn(batch, 3, crop, crop, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 40, (batch, crop, crop), device=device)
    y[:, :20] = 255  # some ignored pixels, as in NYUv2

    def ce_only(logits: torch.Tensor) -> torch.Tensor:
        return criterion.cross_entropy(logits, y)

    def ce_ar(logits: torch.Tensor) -> torch.Tensor:
        return criterion(logits, y).total

    def ce_ar_full(logits: torch.Tensor) -> torch.Tensor:
        return criterion_full(logits, y).total

    def ce_logged(logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ar_loss(logits.detach(), y)
        return ce_only(logits)

    variants = {
        "CE": ce_only,
        "CE + 0.1 AR": ce_ar,
        "CE + 0.1 AR full": ce_ar_full,
        "CE + AR logged": ce_logged,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for name, loss_fn in variants.items():
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(device, precision):
                logits = _logits(model(x))
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
    with torch.no_grad(), _autocast(device, precision):
        logits = _logits(model(x)).detach()
    logits.requires_grad_(True)
    for label, kwargs in (
        ("AR(12,6) term alone", {}),
        ("AR full term alone", {"scales": None, "method": "factorized"}),
    ):
        reps = 50 if device.type == "cuda" or not kwargs else 10
        for _ in range(3):
            ar_loss(logits, y, **kwargs).backward()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            ar_loss(logits, y, **kwargs).backward()
        _sync(device)
        res[label] = (time.perf_counter() - t0) / reps
    res["logits"] = tuple(logits.shape)  # type: ignore[assignment]
    return res


def run_nyuv2(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda" and not devices:
        raise SystemExit("--device cuda: CUDA is not available")
    crop = args.crop[0] if args.crop else 500
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.precision}")
    print()
    print("| device | batch | crop | logits | variant | step (s) | vs CE |")
    print("| --- | ---: | ---: | --- | --- | ---: | ---: |")
    for device in devices:
        gpu = device.type == "cuda"
        batch = args.batch or (6 if gpu else 2)
        steps = args.steps or (30 if gpu else 3)
        warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
        res = bench(device, batch, crop, steps, warmup, args.precision)
        shape = res.pop("logits")
        name = torch.cuda.get_device_name(device) if gpu else "cpu"
        for variant, t in res.items():
            print(
                f"| {name} | {batch} | {crop} | {shape} | {variant} | {t:.4f} | "
                f"{t / res['CE']:.3f} |"
            )


# ============================================================================ camvid setting
def camvid_config(root: Path, crop: tuple[int, int], batch: int, lambda_ar: float) -> dict:
    from arseg.engine.config import load_config

    return load_config(
        CAMVID_CONFIG,
        [
            f"data.root={root}",
            f"data.crop_size=[{crop[0]}, {crop[1]}]",
            f"data.batch_size={batch}",
            f"loss.lambda_ar={lambda_ar}",
            "model.pretrained=false",
        ],
    )


def _collate(samples):
    images = torch.stack([s[0] for s in samples])
    targets = torch.stack([s[1] for s in samples])
    return images, targets


class _CachedLoads:
    """Decoded (image, label) arrays kept in memory: the transform still runs every time."""

    def __init__(self, dataset) -> None:
        self.dataset, self.load, self.cache = dataset, dataset.load, {}

    def __call__(self, index: int):
        if index not in self.cache:
            self.cache[index] = self.load(index)
        return self.cache[index]


def camvid_batches(cfg: dict, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches through the engine's pipeline (random scale, crop, flip)."""
    from arseg.engine.datamodule import SeededDataset, build_train_dataset

    data = SeededDataset(build_train_dataset(cfg))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen).tolist()
    bs = cfg["data"]["batch_size"]
    return [
        _collate(
            [data[(order[(b * bs + i) % len(order)], seed * 1000 + b * bs + i)] for i in range(bs)]
        )
        for b in range(n)
    ]


def random_batches(n: int, batch: int, crop: tuple[int, int], classes: int = 11):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        y = torch.randint(0, classes, (batch, *crop), generator=gen)
        y[:, : crop[0] // 10] = 255
        out.append((torch.randn(batch, 3, *crop, generator=gen), y))
    return out


def data_loading_times(cfg: dict, n_batches: int) -> dict[str, float]:
    """Seconds per batch of the engine's training pipeline, in this process (0 workers): from the
    files, then with decoded images cached (cache filled first, not timed)."""
    from arseg.data.base import read_image, read_label
    from arseg.engine.datamodule import SeededDataset, build_train_dataset

    dataset = build_train_dataset(cfg)
    data = SeededDataset(dataset)
    bs = cfg["data"]["batch_size"]
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(len(data), generator=gen).tolist()
    picks = [[order[(b * bs + i) % len(order)] for i in range(bs)] for b in range(n_batches)]

    def load_all(seed_base: int) -> float:
        t0 = time.perf_counter()
        for b, idx in enumerate(picks):
            _collate([data[(j, seed_base + b * bs + k)] for k, j in enumerate(idx)])
        return (time.perf_counter() - t0) / n_batches

    load_all(10_000)  # warm-up (file cache of the OS, allocator)
    from_files = statistics.median(load_all(20_000 + r) for r in range(3))
    cached = _CachedLoads(dataset)
    dataset.load = cached  # instance attribute: SeededDataset -> dataset[...] -> self.load(...)
    for idx in picks:
        for j in idx:
            cached(j)
    from_cache = statistics.median(load_all(30_000 + r) for r in range(3))
    # decode alone, per image
    paths = [dataset.pairs[j] for j in picks[0]]
    t0 = time.perf_counter()
    for image_path, label_path in paths:
        read_image(image_path)
        read_label(label_path)
    decode = (time.perf_counter() - t0) / len(paths)
    return {"files": from_files, "cached": from_cache, "decode_per_image": decode}


def _build_step_parts(device: torch.device, channels_last: bool, lambda_ar: float):
    torch.manual_seed(0)
    model = build_model("lwrefinenet_efflite0", num_classes=11, decoder_channels=128)
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    encoder = {id(p) for p in model.encoder.parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in encoder], "lr": 1e-3},
        {"params": [p for p in model.parameters() if id(p) in encoder], "lr": 1e-4},
    ]
    opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    criterion = CEARLoss(lambda_ar=lambda_ar, scales=(12, 6)).to(device)
    return model, opt, criterion


def train_step(model, opt, criterion, x, y, device, precision, marks=None):
    """One step of the engine's fine-tune; ``marks`` collects the seconds of each phase."""
    from torch.profiler import record_function

    def mark(name: str, start: float) -> float:
        _sync(device)
        now = time.perf_counter()
        if marks is not None:
            marks[name] = marks.get(name, 0.0) + now - start
        return now

    t = time.perf_counter()
    with record_function("forward"), _autocast(device, precision):
        logits = _logits(model(x))
    t = mark("forward", t)
    with record_function("loss:ce"), _autocast(device, precision):
        ce = criterion.cross_entropy(logits, y)
    t = mark("loss:ce", t)
    with record_function("loss:ar"):
        ar = ar_loss(logits, y, scales=criterion.scales)
    t = mark("loss:ar", t)
    loss = ce + criterion.lambda_ar * ar
    with record_function("backward"):
        opt.zero_grad(set_to_none=True)
        loss.backward()
    t = mark("backward", t)
    with record_function("optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    mark("optimizer", t)
    return loss.detach()


def worker(spec: dict) -> dict:
    """One lever variant in a fresh process: thread settings first, then warm-up and timed steps."""
    if spec.get("interop"):
        torch.set_num_interop_threads(int(spec["interop"]))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    batches = torch.load(spec["batches"], weights_only=True)
    cl = spec["channels_last"]
    fmt = torch.channels_last if cl else torch.contiguous_format
    batches = [(x.to(device).contiguous(memory_format=fmt), y.to(device)) for x, y in batches]
    model, opt, criterion = _build_step_parts(device, cl, spec["lambda_ar"])
    step_model = torch.compile(model) if spec.get("compile") else model
    first = None
    for i in range(spec["warmup"]):
        t0 = time.perf_counter()
        train_step(
            step_model, opt, criterion, *batches[i % len(batches)], device, spec["precision"]
        )
        if first is None:
            first = time.perf_counter() - t0
    times, phases = [], []
    for i in range(spec["steps"]):
        marks: dict[str, float] = {}
        x, y = batches[(spec["warmup"] + i) % len(batches)]
        _sync(device)
        t0 = time.perf_counter()
        train_step(step_model, opt, criterion, x, y, device, spec["precision"], marks)
        times.append(time.perf_counter() - t0)
        phases.append(marks)
    return {
        "times": times,
        "phases": {k: statistics.median(p[k] for p in phases) for k in PHASES},
        "first_step": first,
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
    }


def lever_variants(device: str, compile_model: bool) -> list[dict]:
    if device == "cuda":
        out = [
            {"name": "NCHW fp32", "channels_last": False, "precision": "fp32"},
            {"name": "channels_last fp32", "channels_last": True, "precision": "fp32"},
            {"name": "NCHW bf16", "channels_last": False, "precision": "bf16"},
            {"name": "channels_last bf16", "channels_last": True, "precision": "bf16"},
        ]
        if compile_model:
            out.append(
                {
                    "name": "channels_last bf16 + compile",
                    "channels_last": True,
                    "precision": "bf16",
                    "compile": True,
                }
            )
        return out
    out = [
        {"name": "NCHW, 1 thread", "channels_last": False, "threads": 1},
        {"name": "channels_last, 1 thread", "channels_last": True, "threads": 1},
        {"name": "NCHW, 2 threads", "channels_last": False, "threads": 2},
        {"name": "channels_last, 2 threads", "channels_last": True, "threads": 2},
        {
            "name": "channels_last, 2 threads, 1 interop",
            "channels_last": True,
            "threads": 2,
            "interop": 1,
        },
    ]
    if compile_model:
        out.append(
            {
                "name": "channels_last + compile, 1 thread",
                "channels_last": True,
                "threads": 1,
                "compile": True,
            }
        )
    return out


def run_levers(args, batches_path: str, variants: list[dict]) -> dict[str, dict]:
    """Every variant once per round in a fresh process; even rounds in order, odd ones reversed."""
    results: dict[str, dict] = {
        v["name"]: {"times": [], "phases": [], "first": []} for v in variants
    }
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            spec = {
                "device": args.device,
                "batches": batches_path,
                "lambda_ar": args.lambda_ar,
                "precision": v.get("precision", args.precision),
                "channels_last": v["channels_last"],
                "threads": v.get("threads"),
                "interop": v.get("interop"),
                "compile": v.get("compile", False),
                "warmup": args.warmup
                if args.warmup is not None
                else (2 if v.get("compile") else 1),
                "steps": args.steps or 3,
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=args.worker_timeout,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"  {v['name']} round {r + 1}: failed\n{proc.stderr[-2000:]}", flush=True)
                results[v["name"]]["error"] = proc.stderr.strip().splitlines()[-1:] or ["?"]
                continue
            res = json.loads(line[-1][len("RESULT ") :])
            results[v["name"]]["times"] += res["times"]
            results[v["name"]]["phases"].append(res["phases"])
            results[v["name"]]["first"].append(res["first_step"])
            print(
                f"  round {r + 1}: {v['name']}: median {statistics.median(res['times']):.3f} s "
                f"({res['threads']} threads, {res['interop']} interop)",
                flush=True,
            )
    return results


def print_levers(variants: list[dict], results: dict[str, dict]) -> None:
    base = None
    print()
    print(
        "| variant | step s (median) | vs first | forward | CE | AR | backward | optimizer | steps | first step s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in variants:
        res = results[v["name"]]
        if not res["times"]:
            print(
                f"| {v['name']} | failed: {' '.join(res.get('error', ['?']))[:80]} | | | | | | | | |"
            )
            continue
        med = statistics.median(res["times"])
        base = base or med
        ph = {k: statistics.median(p[k] for p in res["phases"]) for k in PHASES}
        first = max(res["first"]) if res["first"] and res["first"][0] is not None else float("nan")
        print(
            f"| {v['name']} | {med:.3f} | {med / base:.2f} | "
            + " | ".join(f"{ph[k]:.3f}" for k in PHASES)
            + f" | {len(res['times'])} | {first:.1f} |"
        )


def profile_step(args, batches, cfg, channels_last: bool) -> None:
    """One step under torch.profiler, its batch loaded from the files inside the profiled region."""
    from torch.profiler import ProfilerActivity, profile, record_function

    device = torch.device(args.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model, opt, criterion = _build_step_parts(device, channels_last, args.lambda_ar)
    x, y = batches[0]
    train_step(
        model,
        opt,
        criterion,
        x.to(device).contiguous(memory_format=fmt),
        y.to(device),
        device,
        args.precision,
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        with record_function("data"):
            if cfg is not None:
                x, y = camvid_batches(cfg, 1, seed=7)[0]
            else:
                x, y = batches[1 % len(batches)]
            x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
        train_step(model, opt, criterion, x, y, device, args.precision)
        wall = time.perf_counter() - t0
    events = {e.key: e for e in prof.key_averages()}
    label = "channels_last" if channels_last else "NCHW"
    print(
        f"\n#### torch.profiler, one step, {label} ({wall:.3f} s wall, {torch.get_num_threads()} threads)\n"
    )
    time_attr = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    print(f"| phase | CPU ms | share | {'GPU ms |' if device.type == 'cuda' else ''}")
    print(f"| --- | ---: | ---: |{' ---: |' if device.type == 'cuda' else ''}")
    total = sum(events[p].cpu_time_total for p in ("data", *PHASES) if p in events) or 1.0
    for p in ("data", *PHASES):
        if p not in events:
            continue
        cpu_ms = events[p].cpu_time_total / 1e3
        extra = f" {getattr(events[p], time_attr, 0) / 1e3:.1f} |" if device.type == "cuda" else ""
        print(f"| {p} | {cpu_ms:.1f} | {events[p].cpu_time_total / total:.0%} |{extra}")
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\ntop operators by {sort.replace('_', ' ')} ({label}):\n")
    print("```")
    print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=40))
    print("```")


def ar_term_alone(args, batches) -> None:
    """The AR term's forward + backward on fixed logits of the step's shape, many repetitions:
    the step's AR cost (its backward is otherwise inside the step's backward)."""
    device = torch.device(args.device)
    model, _, criterion = _build_step_parts(device, False, args.lambda_ar)
    x, y = (t.to(device) for t in batches[0])
    with torch.no_grad():
        logits = _logits(model(x)).detach()
    logits.requires_grad_(True)
    reps = 20
    for _ in range(3):
        ar_loss(logits, y, scales=criterion.scales).backward()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        ar_loss(logits, y, scales=criterion.scales).backward()
    _sync(device)
    seconds = (time.perf_counter() - t0) / reps
    print(
        f"\nAR term alone (forward + backward on fixed logits {tuple(logits.shape)}, {reps} "
        f"repetitions): {1e3 * seconds:.1f} ms"
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def channels_last_difference(args, batches) -> None:
    """NCHW vs channels_last from the same weights and batch: how far apart the results are, next
    to how far each is from the same computation in float64 (the size of float32 rounding)."""
    device = torch.device(args.device)
    models = {}
    for name, cl in (("nchw", False), ("cl", True), ("f64", False)):
        models[name] = _build_step_parts(device, cl, args.lambda_ar)  # same seed: same weights
    models["f64"][0].double()
    x, y = (t.to(device) for t in batches[0])
    inputs = {
        "nchw": x,
        "cl": x.contiguous(memory_format=torch.channels_last),
        "f64": x.double(),
    }
    precision = {"f64": "fp32"}  # no autocast for the reference

    def flat(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().double().flatten() for p in m.parameters()]).clone()

    values: dict[str, dict[str, torch.Tensor]] = {k: {} for k in models}
    for k, (model, opt, criterion) in models.items():
        with torch.no_grad():
            for mode in ("eval", "train"):  # train: batch statistics
                model.train(mode == "train")
                values[k][f"{mode}-mode logits"] = _logits(model(inputs[k]))
        start = flat(model)
        prec = precision.get(k, args.precision)
        values[k]["loss, step 1"] = train_step(model, opt, criterion, inputs[k], y, device, prec)
        values[k]["weight update of step 1"] = flat(model) - start
        values[k]["loss, step 2 (same batch)"] = train_step(
            model, opt, criterion, inputs[k], y, device, prec
        )
        values[k]["weight update of step 2"] = (
            flat(model) - start - values[k]["weight update of step 1"]
        )
    print("\n#### channels_last vs NCHW: relative differences ||a - b|| / ||b||\n")
    print(
        f"| quantity ({args.precision}) | CL vs NCHW | NCHW vs float64 NCHW | CL vs float64 NCHW |"
    )
    print("| --- | ---: | ---: | ---: |")
    for q in values["nchw"]:
        a, b, r = values["cl"][q], values["nchw"][q], values["f64"][q]
        print(f"| {q} | {rel(a, b):.1e} | {rel(b, r):.1e} | {rel(a, r):.1e} |")
    print(
        "\nWhere CL vs NCHW is of the order of NCHW's own distance from float64, the difference is "
        "float32 rounding (amplified where the computation is ill-conditioned, e.g. BatchNorm of "
        "channels with tiny batch variance, or clipping and momentum of small gradients)."
    )


def run_camvid(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    crop = tuple(args.crop) if args.crop else (180, 240)
    if len(crop) == 1:
        crop = (crop[0], crop[0])
    batch = args.batch or 8
    camvid = Path(args.camvid)
    have_camvid = (camvid / "train.txt").is_file()
    cfg = camvid_config(camvid, crop, batch, args.lambda_ar) if have_camvid else None
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"### CamVid fine-tune step: LW-RefineNet-EfficientNet-Lite0 (decoder 128), batch {batch}, "
        f"{crop[0]}x{crop[1]}, CE + {args.lambda_ar} AR (12, 6), {args.precision}\n"
    )
    print(
        f"{datetime.date.today()}, {machine}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; data: "
        f"{camvid if have_camvid else 'random tensors (CamVid not found at ' + str(camvid) + ')'}"
    )
    batches = camvid_batches(cfg, 4) if cfg is not None else random_batches(4, batch, crop)

    if cfg is not None and not args.no_data:
        t = data_loading_times(cfg, args.data_batches)
        print("\n#### Data loading per batch (engine pipeline, in-process, 0 workers)\n")
        print("| pipeline | s / batch | per image ms |")
        print("| --- | ---: | ---: |")
        print(
            f"| from the files (decode + label map + transform) | {t['files']:.3f} | {1e3 * t['files'] / batch:.1f} |"
        )
        print(
            f"| decoded images cached (transform only) | {t['cached']:.3f} | {1e3 * t['cached'] / batch:.1f} |"
        )
        print(
            f"| decode alone (image + label) | {t['decode_per_image'] * batch:.3f} | {1e3 * t['decode_per_image']:.1f} |"
        )

    if not args.no_profile:
        for cl in (False, True):
            profile_step(args, batches, cfg, cl)

    if not args.no_profile:
        ar_term_alone(args, batches)

    variants = lever_variants(args.device, args.compile)
    if args.only_levers:
        variants = [v for v in variants if any(s in v["name"] for s in args.only_levers)]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "batches.pt")
        torch.save(batches, path)
        print(
            f"\n#### Levers: each variant in a fresh process, {args.rounds} rounds, order alternating\n",
            flush=True,
        )
        results = run_levers(args, path, variants)
    print_levers(variants, results)

    if not args.no_check:
        channels_last_difference(args, batches)
    print(f"\nload average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=("nyuv2", "camvid"), default="nyuv2")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default=None,
        help="nyuv2 default: all (CPU, and CUDA if present); camvid default: cuda if present, else cpu",
    )
    parser.add_argument(
        "--crop",
        type=int,
        nargs="+",
        default=None,
        help="nyuv2: square side (default 500); camvid: H W (default 180 240)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="nyuv2: 2 on CPU, 6 (the recipe) on GPU; camvid: 8"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (and per process)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    # camvid setting
    parser.add_argument(
        "--camvid", default=str(DEFAULT_CAMVID), help="CamVid folder (SegNet layout)"
    )
    parser.add_argument("--lambda-ar", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="lever rounds (order alternates)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile(model) variants")
    parser.add_argument(
        "--only-levers", nargs="+", default=None, help="variants whose name contains one of these"
    )
    parser.add_argument(
        "--data-batches", type=int, default=4, help="batches timed for data loading"
    )
    parser.add_argument("--no-data", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--no-check", action="store_true", help="skip the channels_last difference check"
    )
    parser.add_argument("--worker-timeout", type=float, default=1800)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.setting == "camvid":
        if args.device in (None, "all"):
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        run_camvid(args)
    else:
        args.device = args.device or "all"
        run_nyuv2(args)


if __name__ == "__main__":
    main()
