"""The plan of an arena before its first run: what it runs, and about how long that takes here.

A few training steps of the recipe are timed in this process (CE only, then each term at its
first weight, on batches of the recipe's own training pipeline, at the threads one run gets),
and one evaluation batch, while a process beside them times what a worker imports before it
trains; the estimate scales them by the steps and evaluations of a fine-tune, the runs left and
how many run side by side. It stays within about a minute: terms left untimed
when the budget is spent are assumed to cost what CE only does (and the plan says so). The
timings are kept in ``DIR/arena_plan.json``: the answer's cost per step relative to CE only.
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arena import CONTROL, ArenaConfig, arena_terms, arm_name, seeds_text
from .config import PLAN_FILE, StudyConfig, StudyError, run_config
from .runner import plan_jobs

__all__ = ["PLAN_FILE", "Plan", "estimate_text", "plan_arena", "time_recipe"]

_START_TIMEOUT_S = 60.0  # a worker's imports are timed this long at most
_TIMED_STEPS = 2  # timed steps of each term (after one that warms up)


@dataclass
class Plan:
    """What an arena runs and its estimate (``seconds``: of what is left)."""

    line: str
    finetunes: int
    finished: int
    seconds: float
    step_s: dict[str, float] = field(default_factory=dict)  # "ce" and each term -> one step
    untimed: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)


class _WorkerStart:
    """Times what a study worker imports before it trains (python, torch, Lightning, the
    engine), in a process of its own, started at once and read when :meth:`seconds` is called."""

    def __init__(self) -> None:
        import subprocess
        import sys

        code = "import arseg.engine.train, arseg.engine.evaluation"
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def seconds(self) -> float:
        import subprocess

        try:
            self.proc.wait(timeout=max(0.0, _START_TIMEOUT_S - (time.perf_counter() - self.start)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - self.start


def estimate_text(seconds: float) -> str:
    """``about 40 s``, ``about 24 min``, ``about 3 h 10 min``."""
    if seconds < 60:
        return f"about {max(1, round(seconds / 10) * 10) if seconds >= 10 else round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60:02d} min"


def _device(cfg: Mapping[str, Any]):
    import torch

    accel = str(cfg["trainer"]["accelerator"])
    on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")


def _batches(cfg: dict[str, Any], n: int) -> tuple[list[tuple[Any, Any]], int, int]:
    """``n`` batches of the recipe's training pipeline, the classes, the training samples."""
    import torch

    from arseg.engine.datamodule import SeededDataset, build_train_dataset

    dataset = build_train_dataset(cfg)
    data = SeededDataset(dataset)
    bs = int(cfg["data"]["batch_size"])
    batches = []
    for b in range(n):
        samples = [data[((b * bs + i) % len(data), b * bs + i)] for i in range(bs)]
        batches.append((torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])))
    return batches, int(dataset.num_classes), len(dataset)


def _train_step(module, optimizer, lambdas, bf16: bool, x, y, device) -> float:
    """One training step (forward, objective, backward, SGD); its seconds."""
    import torch

    x, y = x.to(device), y.to(device)
    if module.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = module.model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        logits = getattr(logits, "logits", logits)
        total, _ce, _values = module.criterion(logits, y, lambdas)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_recipe(
    cfgs: Mapping[str, dict[str, Any]],
    *,
    steps: int = 2,
    budget_s: float = 45.0,
    threads: int = 1,
) -> dict[str, Any]:
    """Time training steps of each run config (the first is always timed; the others while
    ``budget_s`` lasts), interleaved after one warm-up step each, and one evaluation batch of
    the first.

    Returns ``{"step_s": {name: median seconds}, "image_s": seconds per evaluated image,
    "build_s": seconds to build the network, "train_samples", "val_samples", "device"}``.
    """
    import torch

    from arseg.engine.datamodule import build_eval_dataset, build_eval_loader
    from arseg.engine.module import SegmentationModule
    from arseg.engine.objective import term_weights

    start = time.perf_counter()
    first = next(iter(cfgs.values()))
    device = _device(first)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batches, num_classes, n_train = _batches(first, steps + 1)
        built: dict[str, tuple[Any, Any, dict[str, float], bool]] = {}
        builds, warm = [], []
        for name, cfg in cfgs.items():  # each built and stepped once (warm-up) within budget
            expected = (len(built) + 1) * steps * (statistics.mean(warm) if warm else 0.0)
            if built and time.perf_counter() - start + expected > budget_s:
                break
            cfg = {
                **cfg,
                "model": {**cfg["model"], "pretrained": False, "num_classes": num_classes},
            }
            t0 = time.perf_counter()
            module = SegmentationModule(cfg).to(device)
            builds.append(time.perf_counter() - t0)
            module.train()
            optimizer = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)
            bf16 = str(cfg["trainer"]["precision"]).startswith("bf16")
            built[name] = (module, optimizer, term_weights(module.terms, 0, 100), bf16)
            warm.append(_train_step(*built[name], *batches[0], device))
        times: dict[str, list[float]] = {name: [] for name in built}
        for r in range(steps):  # interleaved, the order turned each round: load hits all alike
            for name in list(built)[:: 1 if r % 2 == 0 else -1]:
                times[name].append(_train_step(*built[name], *batches[r + 1], device))
        step_s = {name: statistics.median(values) for name, values in times.items()}
        module = built[next(iter(built))][0]
        val = build_eval_dataset({**first, "model": {**first["model"], "num_classes": num_classes}})
        # the first evaluation batch as a run batches it (images of one size: a user's folder
        # may mix sizes), read in this process
        eval_cfg = {**first, "data": {**first["data"], "num_workers": 0}}
        images = next(iter(build_eval_loader(eval_cfg, val)[0]))[0].to(device)
        bs = int(images.shape[0])
        module.eval()
        with torch.inference_mode():
            module.model(images)  # warm-up
            t0 = time.perf_counter()
            module.model(images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            image_s = (time.perf_counter() - t0) / bs
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "step_s": step_s,
        "image_s": image_s,
        "build_s": statistics.median(builds),
        "train_samples": n_train,
        "val_samples": len(val),
        "device": str(device),
        "timing_s": round(time.perf_counter() - start, 1),
    }


def _steps_and_evals(cfg: Mapping[str, Any], n_train: int) -> tuple[int, int]:
    """Training steps of a run of ``cfg`` and its validations during training."""
    t = cfg["trainer"]
    per_epoch = n_train // int(cfg["data"]["batch_size"])
    limit = t["limit_train_batches"]
    if isinstance(limit, int) and not isinstance(limit, bool):
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float):
        per_epoch = int(per_epoch * limit)
    epochs = int(t["max_epochs"])
    steps = epochs * per_epoch
    if t["max_steps"] is not None and int(t["max_steps"]) > 0:
        steps = min(steps, int(t["max_steps"])) if epochs > 0 else int(t["max_steps"])
        epochs = -(-steps // max(per_epoch, 1))
    return steps, epochs // max(int(t["check_val_every_n_epoch"]), 1)


def _arms_text(arena: ArenaConfig) -> str:
    ladders = {len(w) for w in arena.terms.values()}
    k = len(arena.terms)
    terms = f"{k} term{'s' * (k != 1)}"
    if len(ladders) == 1:
        n = ladders.pop()
        return f"CE only + {terms} x {n} weight{'s' * (n != 1)}"
    return f"CE only + {terms} at {arena.n_arms} weights"


def plan_arena(
    arena: ArenaConfig,
    study: StudyConfig,
    out: Path,
    *,
    confirm_images: int = 0,
    budget_s: float = 45.0,
) -> Plan:
    """Count the runs (finished ones too), time the recipe, and build the plan's line."""
    baseline, finetunes = plan_jobs(study, out)
    finished = [job for job in finetunes if job.state_path(out).is_file()]
    baseline_done = baseline.state_path(out).is_file()
    left = [job for job in finetunes if not job.state_path(out).is_file()]
    where = "the given peak" if not baseline.trains else "1 baseline"
    line = (
        f"arena: {where} + {len(finetunes)} fine-tunes ({_arms_text(arena)}, seeds "
        f"{seeds_text(arena.seeds)})"
    )
    if arena.confirm_split:
        line += (
            f", each term's best weight on {arena.eval_split} confirmed on {arena.confirm_split}"
        )
    if not left and baseline_done:  # nothing to train: the recorded timings stand
        return Plan(line + "; all finished earlier", len(finetunes), len(finished), 0.0)
    seed = arena.seeds[0]
    cfgs = {CONTROL: run_config(study, out, CONTROL, seed)}
    for term, ladder in arena.terms.items():
        cfgs[term] = run_config(study, out, arm_name(term, ladder[0]), seed)
    from arseg.engine.cli import expected_errors

    starting = _WorkerStart()  # beside the timed steps: what a worker's imports cost here
    try:
        timing = time_recipe(
            cfgs, steps=_TIMED_STEPS, budget_s=budget_s, threads=study.threads_per_run
        )
    except BaseException as err:
        starting.stop()
        if isinstance(err, expected_errors()):
            raise StudyError(f"the recipe cannot run: {err}") from None
        raise
    timing_start = starting.seconds()
    timing["worker_start_s"] = round(timing_start, 1)
    step_s = timing["step_s"]
    untimed = [t for t in arena.terms if t not in step_s]
    control_s = step_s[CONTROL]
    steps, validations = _steps_and_evals(cfgs[CONTROL], timing["train_samples"])
    image_s, build_s = timing["image_s"], timing["build_s"]
    per_eval = timing["val_samples"] * image_s + build_s

    def finetune_s(term: str) -> float:
        return (
            timing_start
            + build_s
            + steps * step_s.get(term, control_s)
            + (validations + 2) * per_eval
        )

    seconds = 0.0
    if not baseline_done:
        seconds += timing_start + per_eval
        if baseline.trains:
            base_cfg = run_config(study, out)
            b_steps, b_vals = _steps_and_evals(base_cfg, timing["train_samples"])
            pixels = _batch_pixels(base_cfg) / max(_batch_pixels(cfgs[CONTROL]), 1)
            # the baseline trains with every thread; its step scales with its batch's pixels
            seconds += b_steps * control_s * pixels * study.threads_per_run / study.threads
            seconds += b_vals * per_eval
    terms_of = {arm: term for arm, (term, _w) in arena.arms().items()}
    work = sum(finetune_s(terms_of.get(job.arm, CONTROL)) for job in left)
    if arena.confirm_split:  # a worker per run, evaluating its best and last checkpoints
        jobs = (1 + len(arena.terms)) * len(arena.seeds)
        work += jobs * (timing_start + 2 * (confirm_images * image_s + build_s))
    seconds += work / study.parallel
    if finished:
        line += f"; {len(finished)} finished earlier"
    side = f"{study.parallel} side by side" if study.parallel > 1 else "one at a time"
    left_word = " left" if finished or baseline_done else ""
    line += f"; {estimate_text(seconds)}{left_word} here at {side}"
    if untimed:
        line += f" (not timed, counted as CE only: {', '.join(untimed)})"
    record = {
        "timed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "threads": study.threads_per_run,
        "steps_timed": _TIMED_STEPS,
        **timing,
        "labels": {t: arena_terms()[t].label for t in step_s if t != CONTROL},
        "steps_per_finetune": steps,
        "estimate_s": round(seconds, 1),
    }
    return Plan(line, len(finetunes), len(finished), seconds, step_s, untimed, record)


def _batch_pixels(cfg: Mapping[str, Any]) -> int:
    h, w = cfg["data"]["crop_size"] or (1, 1)
    return int(cfg["data"]["batch_size"]) * int(h) * int(w)
