"""``arseg demo``: the paper's protocol in miniature, on synthetic scenes, on a CPU in minutes.

1. CE baseline: LW-RefineNet-18 (32-channel decoder) from scratch on 64x64 synthetic scenes.
2. From the baseline's last checkpoint, the same number of steps with CE + 0.1 AR ...
3. ... and with CE alone (the fair control).
4. Evaluation of the three (mIoU, pixel accuracy, val AR loss), a printed table, and prediction
   PNGs of a few validation scenes.

Everything lands under ``runs/demo/`` (one run directory per stage, ``predictions/`` with inputs,
truth and each stage's label/colour/overlay PNGs, ``results.json``). No files are read and nothing
is downloaded. Only what a newcomer uses is kept: each stage's ``best.ckpt`` (what the table,
``arseg eval`` and ``arseg predict`` read) and the baseline's ``last.ckpt`` (where the fine-tunes
started, read by ``arseg trend``), as weights without optimiser state (about 45 MB each, 180 MB
in all, where the full checkpoints took 520 MB); the fine-tunes' ``last.ckpt`` are deleted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from arseg.rundir import RunDir, write_json

from .config import load_config

__all__ = ["demo_config", "run_demo"]

DEFAULT_SIZE = 64
DEFAULT_STEPS = 120  # baseline steps; each fine-tune runs half as many


def demo_config(out: Path, *, size: int, steps: int, seed: int) -> dict[str, Any]:
    """The baseline config of the demo (the fine-tunes change loss/optim/trainer keys)."""
    batch = 8
    return load_config(
        None,
        {
            "name": "demo_baseline",
            "run_dir": str(out / "baseline"),
            "seed": seed,
            "model": {"name": "lwrefinenet18", "options": {"decoder_channels": 32}},
            "data": {
                "name": "synthetic",
                "options": {"size": [size, size], "seed": seed},
                "train_options": {"num_samples": batch * 25},
                "val_options": {"num_samples": 48},
                "crop_size": [size, size],
                "scale_range": [0.75, 1.25],
                "batch_size": batch,
                "val_batch_size": 16,
                "num_workers": 0,
            },
            "loss": {"lambda_ar": 0.0},
            "optim": {"lr": 0.02, "weight_decay": 1e-4},
            "trainer": {
                "max_epochs": -1,
                "max_steps": steps,
                "accelerator": "cpu",
                "check_val_every_n_epoch": 1,
                "log_every_n_steps": 1,
                "deterministic": False,
                # Under CPU contention two BLAS threads can be ~8x slower than one; one is safe.
                "num_threads": 1,
            },
        },
    )


def _stage_config(
    base: dict[str, Any], out: Path, name: str, lambda_ar: float, steps: int
) -> dict[str, Any]:
    from .config import merge_config

    return merge_config(
        base,
        {
            "name": f"demo_{name}",
            "run_dir": str(out / name),
            "init_from": str(RunDir(out / "baseline").last_ckpt),
            "loss": {"lambda_ar": lambda_ar},
            "optim": {"lr": 0.005},
            "trainer": {"max_steps": steps},
        },
    )


def _check_only_demo_runs(out: Path, stages: list[str], overwrite: bool) -> None:
    from .preflight import RunDirError

    for name in stages:
        run_dir = out / name
        if overwrite or not run_dir.exists() or not any(run_dir.iterdir()):
            continue
        config = RunDir(run_dir).config
        stored = yaml.safe_load(config.read_text()) if config.is_file() else None
        written_by = stored.get("name") if isinstance(stored, dict) else None
        if written_by != f"demo_{name}":
            raise RunDirError(
                f"{run_dir} exists and was not written by arseg demo: choose another --out, or "
                "pass --overwrite to replace it"
            )


def _keep_what_a_newcomer_needs(out: Path, stages: list[str]) -> None:
    """Delete the fine-tunes' last.ckpt and keep the remaining checkpoints as weights only
    (model weights, config, step): a finished demo is evaluated and inspected, never resumed."""
    from .checkpoint import atomic_torch_save, load_checkpoint

    keep = ("state_dict", "arseg_config", "epoch", "global_step", "pytorch-lightning_version")
    for stage in stages:
        run = RunDir(out / stage)
        ckpt_dir = run.checkpoints
        if stage != "baseline":
            run.last_ckpt.unlink(missing_ok=True)
        for path in sorted(ckpt_dir.glob("*.ckpt")):
            ckpt = load_checkpoint(path)
            atomic_torch_save({k: ckpt[k] for k in keep if k in ckpt}, path)


def _size_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _write_predictions(out: Path, stages: list[str], cfg: dict[str, Any], count: int = 4) -> None:
    from arseg.data import denormalize

    from .datamodule import build_eval_dataset
    from .predict import colorize, predict_paths

    inputs = out / "predictions" / "inputs"
    truth = out / "predictions" / "truth"
    inputs.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    dataset = build_eval_dataset(cfg)
    for i in range(min(count, len(dataset))):
        image, target = dataset[i]
        rgb = (denormalize(image).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        name = dataset.sample_name(i)
        Image.fromarray(rgb).save(inputs / f"{name}.png")
        gt = target.numpy().astype(np.uint8)
        Image.fromarray(colorize(gt, dataset.palette)).save(truth / f"{name}.png")
    for stage in stages:
        predict_paths(out / stage, inputs, out / "predictions" / stage)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    steps: int | None = None,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns ``{stage: metrics}`` (also written to ``out/results.json``).

    An earlier demo's runs under ``out`` are replaced; any other run directory in the way is
    refused unless ``overwrite`` (the demo never deletes a run it did not write).
    """
    from .evaluation import evaluate
    from .train import fit

    out = Path(out)
    steps = int(steps or DEFAULT_STEPS)
    size = int(size or DEFAULT_SIZE)
    if steps < 2 or size < 32:
        raise ValueError(f"demo needs steps >= 2 and size >= 32, got steps={steps}, size={size}")
    ft_steps = max(1, steps // 2)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    start = time.time()
    base = demo_config(out, size=size, steps=steps, seed=seed)
    stages = [
        ("baseline", "CE baseline", base),
        (
            "finetune_ar",
            "fine-tune CE + 0.1 AR",
            _stage_config(base, out, "finetune_ar", 0.1, ft_steps),
        ),
        (
            "finetune_ce",
            "fine-tune CE only",
            _stage_config(base, out, "finetune_ce", 0.0, ft_steps),
        ),
    ]
    _check_only_demo_runs(out, [s[0] for s in stages], overwrite)
    results: dict[str, Any] = {}
    for i, (name, title, cfg) in enumerate(stages, 1):
        n = cfg["trainer"]["max_steps"]
        print(
            f"[{i}/3] {title}: {n} steps of batch {cfg['data']['batch_size']} at {size}x{size} "
            f"-> {cfg['run_dir']}  ({time.time() - start:.0f} s elapsed)",
            flush=True,
        )
        fit(cfg, overwrite=True)
        results[name] = evaluate(Path(cfg["run_dir"]), progress=False)
    print(f"writing prediction PNGs -> {out / 'predictions'}", flush=True)
    _write_predictions(out, [s[0] for s in stages], base)
    wall = time.time() - start

    rows = [(title, results[name]) for name, title, _ in stages]
    print()
    print(f"{'stage':<24} {'mIoU':>7} {'pixel acc':>10} {'val AR':>8}")
    for title, m in rows:
        print(f"{title:<24} {m['miou']:>7.4f} {m['pixel_acc']:>10.4f} {m['val_ar']:>8.4f}")
    delta = results["finetune_ar"]["miou"] - results["finetune_ce"]["miou"]
    print(
        f"\nCE+AR minus CE-only: {delta:+.4f} mIoU (one seed on toy data: not evidence either way)"
    )
    _keep_what_a_newcomer_needs(out, [s[0] for s in stages])
    print(
        f"wall time {wall:.0f} s; output in {out.resolve()}/ ({_size_mib(out):.0f} MiB): "
        "baseline/ finetune_ar/ finetune_ce/ (config.yaml, metrics.csv, summary.json, "
        "checkpoints/best.ckpt, eval/), predictions/ (PNGs), results.json"
    )
    print(f"next: arseg report {out / 'finetune_ce'} {out / 'finetune_ar'} -o {out / 'report'}")
    summary = {
        "wall_time_s": round(wall, 1),
        "steps": {"baseline": steps, "finetune": ft_steps},
        "results": {
            name: {k: results[name][k] for k in ("miou", "pixel_acc", "val_ar")}
            for name, _, _ in stages
        },
    }
    write_json(out / "results.json", summary)
    return summary
