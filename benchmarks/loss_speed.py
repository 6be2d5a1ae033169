"""Speed (and memory) of the AR loss and its peers next to plain cross-entropy, forward + backward.

For logits (B, C, h, w) from small up to full-resolution Cityscapes-like (2, 19, 512, 1024) it
prints two tables (``--table ar|peers|all``). The AR table times, on the CPU and on CUDA when
present:

* ``CE``         F.cross_entropy on the same logits (target at the logits' size),
* ``AR(12,6)``   ar_loss at the paper's grids (N = 180, explicit),
* ``AR full``    ar_loss at the logits' full resolution, factorized (no N x N matrix),
* ``AR full ex`` the same with method="explicit" where its N x N matrices fit, else "does not fit",

as medians over ``--repeats`` runs after a warm-up, with the ratios AR / CE. The memory columns
give the peak memory a forward + backward allocates beyond the inputs, in units of the logits'
size (the gradient of the logits itself counts as 1): CUDA peak allocated memory, or on the CPU
the peak resident set of a fresh subprocess per case (Linux).

The peers table times every structural loss of :data:`arseg.losses.LOSS_TERMS` at its defaults
on the same logits and target (at the target's size): CE, AR at (12, 6), AR at full resolution
(factorized), Lovasz-softmax, RMI, AAF and soft Dice, each with its ratio to CE; and ``AAF /4``,
AAF as the engine runs it for a stride-4 model (logits at 1/4 of the target's rows and columns,
the target at full size, read at the logit cells' centres). Its shapes add the CamVid
fine-tune's (8, 11, 180, 240). ``--baseline REV`` adds Lovasz-softmax and RMI as of the git
revision REV (their modules loaded from ``git show``, the helpers they import are today's),
timed in the same interleaved rounds: a before / after comparison under one load.

    python benchmarks/loss_speed.py                   # CPU (+ CUDA if available)
    python benchmarks/loss_speed.py --device cpu --repeats 3 --no-memory
    python benchmarks/loss_speed.py --device cpu --table peers --max-pixels 131072
    python benchmarks/loss_speed.py --device cpu --table peers --threads 1 --baseline 73d4e46
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from arseg.losses import aaf_loss, ar_loss, dice_loss, lovasz_softmax_loss, rmi_loss

SHAPES = [
    (4, 19, 32, 64),
    (8, 19, 64, 128),
    (2, 19, 128, 256),
    (2, 19, 256, 512),
    (2, 19, 512, 1024),
]
# the peers' table adds the CamVid fine-tune's batch (8 crops of 180 x 240, 11 classes)
PEER_SHAPES = [*SHAPES[:2], (8, 11, 180, 240), *SHAPES[2:]]
CASES = ("ce", "ar_grid", "ar_full", "ar_full_explicit")
PEER_CASES = ("ce", "ar_grid", "ar_full", "lovasz", "rmi", "aaf", "aaf_native", "dice")
PEER_LABELS = {
    "ce": "CE",
    "ar_grid": "AR(12,6)",
    "ar_full": "AR full",
    "lovasz": "Lovasz",
    "rmi": "RMI",
    "aaf": "AAF",
    "aaf_native": "AAF /4",
    "dice": "Dice",
}
#: cases whose logits are the network's output at stride 4 (1/4 of the target's size)
NATIVE_STRIDE = {"aaf_native": 4}
#: peers that ``--baseline REV`` also times as of REV: case -> (module, function)
BASELINE_PEERS = {"lovasz": ("lovasz", "lovasz_softmax_loss"), "rmi": ("rmi", "rmi_loss")}
# Explicit full resolution materialises about four (B, N, N) float32 buffers (A, M, A - M, grad).
EXPLICIT_BUFFERS = 4
CPU_EXPLICIT_BUDGET = 2 * 2**30


def load_baseline(rev: str) -> dict:
    """``{"lovasz@REV": fn, "rmi@REV": fn}``: the peers' functions as of git revision ``rev``.

    Each module's source comes from ``git show REV:src/arseg/losses/<module>.py`` and is run as
    a module of ``arseg.losses`` (its relative imports get today's helpers).
    """
    root = Path(__file__).resolve().parents[1]
    out = {}
    for case, (module, function) in BASELINE_PEERS.items():
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:src/arseg/losses/{module}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        name = f"arseg.losses._baseline_{module}"
        mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
        mod.__package__ = "arseg.losses"
        sys.modules[name] = mod
        exec(compile(source, f"{rev}:src/arseg/losses/{module}.py", "exec"), mod.__dict__)
        out[f"{case}@{rev}"] = getattr(mod, function)
    return out


def loss_fn(case: str, baseline: dict | None = None):
    if baseline and case in baseline:
        return baseline[case]
    if case == "ce":
        return lambda x, t: F.cross_entropy(x, t, ignore_index=255)
    if case == "ar_grid":
        return lambda x, t: ar_loss(x, t, scales=(12, 6))
    if case == "ar_full":
        return lambda x, t: ar_loss(x, t, scales=None, method="factorized")
    if case == "ar_full_explicit":
        return lambda x, t: ar_loss(x, t, scales=None, method="explicit")
    peers = {
        "lovasz": lovasz_softmax_loss,
        "rmi": rmi_loss,
        "aaf": aaf_loss,
        "aaf_native": aaf_loss,
        "dice": dice_loss,
    }
    return peers[case]


def make_inputs(shape, device):
    gen = torch.Generator().manual_seed(0)
    b, c, h, w = shape
    logits = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    target = torch.randint(0, c, (b, h, w), generator=gen)
    target[:, : h // 8] = 255  # some ignored pixels, like real label maps
    return logits, target.to(device)


def explicit_fits(shape, device) -> bool:
    b, _, h, w = shape
    need = EXPLICIT_BUFFERS * b * (h * w) ** 2 * 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need < 0.5 * free
    return need < CPU_EXPLICIT_BUDGET


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def case_logits(case: str, logits: torch.Tensor) -> torch.Tensor:
    """The case's own leaf: the logits, or for a native case every stride-th row and column."""
    stride = NATIVE_STRIDE.get(case.partition("@")[0])
    if stride is None:
        return logits
    return logits.detach()[..., ::stride, ::stride].contiguous().requires_grad_(True)


def time_cases(cases, shape, device, repeats, baseline=None) -> dict[str, float]:
    """Median forward + backward seconds per case; the cases run interleaved (round-robin), so
    a load change on a shared machine hits all of them alike."""
    logits, target = make_inputs(shape, device)
    fns = {case: loss_fn(case, baseline) for case in cases}
    inputs = {case: case_logits(case, logits) for case in cases}
    times = {case: [] for case in cases}
    for i in range(repeats + 1):
        for case, fn in fns.items():
            x = inputs[case]
            x.grad = None
            sync(device)
            start = time.perf_counter()
            fn(x, target).backward()
            sync(device)
            if i > 0:  # the first round warms up allocators and kernels
                times[case].append(time.perf_counter() - start)
    return {case: statistics.median(t) for case, t in times.items()}


def cuda_extra_memory(case, shape, device) -> float:
    fn = loss_fn(case)
    logits, target = make_inputs(shape, device)
    fn(logits, target).backward()  # warm-up
    logits.grad = None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(logits, target).backward()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / (logits.numel() * 4)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_extra_memory_child(case, shape) -> None:
    """Runs in a fresh process: prints the peak RSS increase of one forward + backward.

    Linux only: resets the high-water mark (``/proc/self/clear_refs``), so the peak reached while
    importing does not hide the loss's own peak.
    """
    device = torch.device("cpu")
    fn = loss_fn(case)
    small = make_inputs((1, shape[1], 8, 8), device)
    fn(*small).backward()  # load kernels before measuring
    logits, target = make_inputs(shape, device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    fn(logits, target).backward()
    after = _rss_kib("VmHWM")
    print((after - before) * 1024 / (logits.numel() * 4))


def cpu_extra_memory(case, shape) -> float:
    cmd = [sys.executable, __file__, "--memory-child", case, *map(str, shape)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def machine_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run(device, repeats, memory) -> None:
    print(f"\n### {device.type.upper()}: {machine_name(device)}, torch {torch.__version__}")
    print("forward + backward, median of", repeats, "runs; ratio = AR / CE")
    header = (
        "| (B, C, h, w) | CE ms | AR(12,6) ms | ratio | AR full ms | ratio "
        "| AR full explicit ms | ratio |"
    )
    rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if memory:
        header += " extra mem CE | extra mem AR full |"
        rule += " ---: | ---: |"
    print(header)
    print(rule)
    for shape in SHAPES:
        cases = ["ce", "ar_grid", "ar_full"]
        if explicit_fits(shape, device):
            cases.append("ar_full_explicit")
        t = time_cases(cases, shape, device, repeats)
        ce, grid, full = t["ce"], t["ar_grid"], t["ar_full"]
        if "ar_full_explicit" in t:
            ex = t["ar_full_explicit"]
            ex_cells = f"{ex * 1e3:.1f} | {ex / ce:.2f}"
        else:
            ex_cells = "does not fit | -"
        row = (
            f"| {shape} | {ce * 1e3:.1f} | {grid * 1e3:.1f} | {grid / ce:.2f} "
            f"| {full * 1e3:.1f} | {full / ce:.2f} | {ex_cells} |"
        )
        if memory:
            if device.type == "cuda":
                mem = [cuda_extra_memory(c, shape, device) for c in ("ce", "ar_full")]
            else:
                mem = [cpu_extra_memory(c, shape) for c in ("ce", "ar_full")]
            row += f" {mem[0]:.1f}x | {mem[1]:.1f}x |"
        print(row, flush=True)


def run_peers(device, repeats, max_pixels, baseline_rev=None) -> None:
    print(f"\n### {device.type.upper()}: {machine_name(device)}, torch {torch.__version__}")
    print("every term at its defaults; forward + backward, median of", repeats, "runs;")
    print("cells: ms (ratio to CE); AAF /4: logits at 1/4 of the target's size (stride 4)")
    baseline = load_baseline(baseline_rev) if baseline_rev else {}
    cases = (*PEER_CASES, *baseline)
    labels = [PEER_LABELS.get(c, c) for c in PEER_CASES]
    labels += [f"{PEER_LABELS[c.partition('@')[0]]} @{baseline_rev}" for c in baseline]
    print("| (B, C, h, w) | " + " | ".join(labels) + " |")
    print("| --- |" + " ---: |" * len(cases))
    for shape in PEER_SHAPES:
        if shape[0] * shape[2] * shape[3] > max_pixels:
            continue
        t = time_cases(cases, shape, device, repeats, baseline)
        ce = t["ce"]
        cells = [f"{ce * 1e3:.1f}"]
        cells += [f"{t[c] * 1e3:.1f} ({t[c] / ce:.1f}x)" for c in cases[1:]]
        print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)
    if device.type == "cpu":
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--table", choices=["ar", "peers", "all"], default="all")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=2 * 512 * 1024,
        help="peers table: skip shapes with more than B * h * w pixels",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        default=None,
        help="peers table: also time Lovasz and RMI as of git revision REV (interleaved)",
    )
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        case, *dims = args.memory_child
        cpu_extra_memory_child(case, tuple(int(d) for d in dims))
        return 0
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        print("CUDA is not available", file=sys.stderr)
        return 1
    for device in devices:
        if args.table in ("ar", "all"):
            run(device, args.repeats, args.memory)
        if args.table in ("peers", "all"):
            run_peers(device, args.repeats, args.max_pixels, args.baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
