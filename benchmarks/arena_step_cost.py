"""Training cost per step of each arm of a study, relative to its control.

Each arm's resolved run config (the study's own, :func:`arseg.study.config.run_config`) builds
the engine's module (network, memory format, the objective with every term); one step is the
network's forward, the objective at the step's weights, backward and an SGD step, on real
CamVid training batches made by the engine's pipeline (random tensors where CamVid is absent).
The arms run interleaved, round after round (control, arm 1, ..., control, ...), so that load on
a shared machine hits all alike; the table gives the median step and its ratio to the control's,
and the loss terms alone (forward + backward on fixed logits) beside it.

    python benchmarks/arena_step_cost.py                       # the peers study, 1 thread
    python benchmarks/arena_step_cost.py --study configs/camvid/pretrained/arena_weights_study.yaml
    python benchmarks/arena_step_cost.py --steps 3 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = ROOT / "configs" / "camvid" / "pretrained" / "arena_peers_study.yaml"
DEFAULT_CAMVID = Path(
    os.environ.get("ARSEG_CAMVID", str(ROOT.parent / "shared" / "data" / "camvid"))
)


def training_batches(cfg: dict, n: int, camvid: Path) -> tuple[list, int]:
    """``n`` training batches of the run's pipeline (random scale, crop, flip) and the number of
    classes; CamVid read from ``camvid`` (random tensors of 11 classes where it is absent)."""
    bs, crop = cfg["data"]["batch_size"], tuple(cfg["data"]["crop_size"])
    data_cfg = dict(cfg["data"])
    if data_cfg["name"] == "camvid":
        if not (camvid / "train.txt").is_file():
            gen = torch.Generator().manual_seed(0)
            shape = (bs, *crop)
            return [
                (
                    torch.randn(bs, 3, *crop, generator=gen),
                    torch.randint(0, 11, shape, generator=gen),
                )
                for _ in range(n)
            ], 11
        data_cfg["root"] = str(camvid)
    from arseg.engine.datamodule import SeededDataset, build_train_dataset

    dataset = build_train_dataset({**cfg, "data": data_cfg})
    data = SeededDataset(dataset)
    out = []
    for b in range(n):
        samples = [data[((b * bs + i) % len(data), b * bs + i)] for i in range(bs)]
        out.append((torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])))
    return out, int(dataset.num_classes)


def _module(cfg: dict, num_classes: int):
    from arseg.engine.module import SegmentationModule
    from arseg.engine.objective import term_weights

    # the weights change no cost; the classes are the dataset's, as in fit
    cfg = {**cfg, "model": {**cfg["model"], "pretrained": False, "num_classes": num_classes}}
    module = SegmentationModule(cfg)
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)
    return module, optimizer, term_weights(module.terms, 0, 92)


def _step(module, optimizer, lambdas, images, target) -> None:
    output = module.model(images)
    logits = output[0] if isinstance(output, (tuple, list)) else output
    total, _ce, _values = module.criterion(logits, target, lambdas)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _loss_alone(module, lambdas, logits: torch.Tensor, target: torch.Tensor, reps: int) -> float:
    logits = logits.detach().requires_grad_(True)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        total, _ce, _values = module.criterion(logits, target, lambdas)
        total.backward()
        times.append(time.perf_counter() - start)
        logits.grad = None
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=DEFAULT_STUDY)
    parser.add_argument("--camvid", type=Path, default=DEFAULT_CAMVID)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all arms")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--loss-reps", type=int, default=5)
    args = parser.parse_args()
    for name, value in (
        ("--steps", args.steps),
        ("--rounds", args.rounds),
        ("--threads", args.threads),
    ):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    from arseg.study import load_study_config
    from arseg.study.config import run_config

    torch.set_num_threads(args.threads)
    study = load_study_config(args.study)
    out = Path("/nonexistent")
    arms = {name: run_config(study, out, name, arm.seeds[0]) for name, arm in study.arms.items()}
    control = study.control
    first = arms[control]
    batches, num_classes = training_batches(first, args.steps + 1, args.camvid)
    built = {name: _module(cfg, num_classes) for name, cfg in arms.items()}
    channels_last = bool(first["trainer"].get("channels_last"))
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    print(
        f"study {study.name}: {len(arms)} arms, batch {tuple(batches[0][0].shape)}, "
        f"{'channels_last' if channels_last else 'NCHW'}, {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__}",
        flush=True,
    )
    for module, optimizer, lambdas in built.values():  # one untimed step each
        _step(module, optimizer, lambdas, *batches[0])
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            module, optimizer, lambdas = built[name]
            for x, y in batches[1:]:
                start = time.perf_counter()
                _step(module, optimizer, lambdas, x, y)
                times[name].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    with torch.no_grad():
        module = built[control][0]
        out_logits = module.model(batches[1][0])
        logits = out_logits[0] if isinstance(out_logits, (tuple, list)) else out_logits
    target = batches[1][1]
    base = statistics.median(times[control])
    print()
    print("| arm | step (median) | / control | loss terms alone (fwd + bwd) |")
    print("| --- | ---: | ---: | ---: |")
    for name, arm in study.arms.items():
        step = statistics.median(times[name])
        module, _optimizer, lambdas = built[name]
        alone = _loss_alone(module, lambdas, logits, target, args.loss_reps)
        print(f"| {arm.label} | {step:.2f} s | {step / base:.2f} | {1000 * alone:.0f} ms |")


if __name__ == "__main__":
    main()
