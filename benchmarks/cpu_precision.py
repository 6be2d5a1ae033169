"""bf16 autocast against float32 for the CamVid fine-tune step on a CPU: is an arena cheaper?

The step of the CamVid arena's recipe (``configs/camvid/pretrained/arena_peers_study.yaml``: the
fine-tune of ``finetune.yaml`` at the baseline's 180x240 crops, batch 8, channels_last; one arm,
CE only by default) on real CamVid batches of the engine's own training pipeline (random tensors
where CamVid is absent): forward, the objective, backward and an SGD step, once in float32 and
once under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what ``trainer.precision:
bf16-mixed`` runs; the loss terms compute in float32 inside, as in training). Two copies of the
same network, stepped alternately (fp32, bf16, bf16, fp32, ...) so that load on a shared machine
hits both alike; medians and the ratio bf16 / fp32 (below 1: bf16 is faster).

bf16 pays on a CPU with native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in ``lscpu``);
the script prints which of them this CPU has.

    python benchmarks/cpu_precision.py                       # CE only, 1 thread, 3 steps x 2
    python benchmarks/cpu_precision.py --arm lovasz --steps 5 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from arena_step_cost import training_batches  # this folder: the scripts share one pipeline

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "configs" / "camvid" / "pretrained" / "arena_peers_study.yaml"
DEFAULT_CAMVID = Path(
    os.environ.get("ARSEG_CAMVID", str(ROOT.parent / "shared" / "data" / "camvid"))
)


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instruction sets (from /proc/cpuinfo, what lscpu shows)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def build(cfg: dict, num_classes: int, state: dict | None):
    from arseg.engine.module import SegmentationModule
    from arseg.engine.objective import term_weights

    cfg = {**cfg, "model": {**cfg["model"], "pretrained": False, "num_classes": num_classes}}
    module = SegmentationModule(cfg)
    if state is not None:
        module.load_state_dict(state)
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    return module, optimizer, term_weights(module.terms, 0, 92)


def step(module, optimizer, lambdas, images, target, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module.model(images)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        total, _ce, _values = module.criterion(logits, target, lambdas)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", default="ce", help="an arm of the study config (default: ce)")
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for name in ("steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    from arseg.study import load_study_config
    from arseg.study.config import run_config

    torch.set_num_threads(args.threads)
    study = load_study_config(args.study)
    if args.arm not in study.arms:
        parser.error(f"--arm {args.arm!r} is not an arm of {args.study}: {', '.join(study.arms)}")
    cfg = run_config(study, Path("/nonexistent"), args.arm, study.arms[args.arm].seeds[0])
    data, num_classes = training_batches(cfg, args.steps + 1, args.camvid)
    fp32 = build(cfg, num_classes, None)
    bf16 = build(cfg, num_classes, fp32[0].state_dict())
    if fp32[0].channels_last:
        data = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in data]
    print(
        f"{study.arms[args.arm].label}: batch {tuple(data[0][0].shape)}, "
        f"{'channels_last' if fp32[0].channels_last else 'NCHW'}, {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.steps} steps each, torch {torch.__version__}; CPU bf16 "
        f"instructions: {', '.join(cpu_bf16_flags()) or 'none'}; load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    step(*fp32, *data[0], bf16=False)  # one untimed step each
    step(*bf16, *data[0], bf16=True)
    times: dict[str, list[float]] = {"float32": [], "bf16 autocast": []}
    for r in range(args.rounds):
        for images, target in data[1:]:
            order = [("float32", fp32, False), ("bf16 autocast", bf16, True)]
            for name, (module, optimizer, lambdas), use_bf16 in order[:: 1 if r % 2 == 0 else -1]:
                times[name].append(step(module, optimizer, lambdas, images, target, use_bf16))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = statistics.median(times["float32"])
    print()
    print("| precision | step (median) | min | / float32 |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} s | {min(values):.2f} s | {med / base:.2f} |")


if __name__ == "__main__":
    main()
