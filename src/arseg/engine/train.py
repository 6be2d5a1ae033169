"""Run a config: ``fit`` (train / fine-tune / resume); ``evaluate`` is in
:mod:`arseg.engine.evaluation` (metrics.json + confusions), re-exported here.

Run directory (read by :mod:`arseg.analysis`)::

    RUN/config.yaml                   resolved config
    RUN/metrics.csv                   CSVLogger: train/loss, train/ce, train/ar, lr per step;
                                      val/miou, val/pixel_acc, val/ar, val/iou/<class> per epoch
    RUN/tensorboard/                  TensorBoard events (when tensorboard is installed)
    RUN/checkpoints/best.ckpt         best val/miou
    RUN/checkpoints/last.ckpt         latest (end of epoch, and every N steps if configured)
    RUN/summary.json                  {"best_miou", "final", "steps", "wall_time_s"}: the best
                                      val/miou (that of best.ckpt) and the last validation
    RUN/eval/<split>/                 evaluate() of checkpoints/best.ckpt on <split>:
        metrics.json                  mIoU, pixel acc, val AR, Boundary IoU, per class
        per_image_confusion.npy       (n_images, C, C) int64, rows = truth, cols = prediction
        per_image_boundary.npy        (n_images, 2, C) int64 Boundary IoU intersections, unions
    RUN/eval/<split>-last/            the same for checkpoints/last.ckpt (``--checkpoint last``;
                                      any other checkpoint file X.ckpt: RUN/eval/<split>-X/)

The evaluation folder is named after the checkpoint actually evaluated (a run without
best.ckpt is evaluated on last.ckpt, into ``<split>-last``). Runs evaluated before results were
kept per split have ``RUN/eval/metrics.json`` and ``RUN/eval/per_image_confusion.npy`` (best
checkpoint, the split named in that metrics.json); :mod:`arseg.analysis` still reads them.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from arseg.rundir import RunDir, eval_dir_name, write_json

from .callbacks import (
    BestCheckpoint,
    ProgressLines,
    SaveLastEachEpoch,
    StopOnSignal,
    TrainingInterrupted,
    run_loggers,
    truncate_metrics,
)
from .checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    model_state_dict,
)
from .config import ConfigError, complete_config, dump_config
from .datamodule import SeedDataModule
from .dirlock import Guard
from .evaluation import evaluate
from .module import SegmentationModule
from .preflight import RunDirError, check_accelerator, prepare_run_dir, resolve_run_dir

__all__ = [
    "MisconfigurationException",
    "RunDirError",
    "TrainingInterrupted",
    "check_accelerator",
    "config_differences",
    "eval_dir_name",
    "evaluate",
    "fit",
    "resolve_run_dir",
]


def _trainer_kwargs(tcfg: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_epochs": tcfg["max_epochs"],
        "max_steps": tcfg["max_steps"],
        "accelerator": tcfg["accelerator"],
        "devices": tcfg["devices"],
        "num_nodes": tcfg["num_nodes"],
        "strategy": tcfg["strategy"],
        "precision": tcfg["precision"],
        "deterministic": tcfg["deterministic"],
        "check_val_every_n_epoch": tcfg["check_val_every_n_epoch"],
        "log_every_n_steps": tcfg["log_every_n_steps"],
        "num_sanity_val_steps": tcfg["num_sanity_val_steps"],
        "enable_progress_bar": tcfg["enable_progress_bar"],
        "gradient_clip_val": tcfg["gradient_clip_val"],
    }
    for key in ("limit_train_batches", "limit_val_batches"):
        if tcfg[key] is not None:
            kwargs[key] = tcfg[key]
    return kwargs


def _num_processes(tcfg: dict[str, Any]) -> int:
    devices = tcfg["devices"]
    n = devices if isinstance(devices, int) and devices > 0 else 1
    if isinstance(devices, (list, tuple)):
        n = len(devices)
    return n * int(tcfg["num_nodes"])


def _resolve_classes(cfg: dict[str, Any], dataset: Any) -> None:
    ds_classes = int(dataset.num_classes)
    if cfg["model"]["num_classes"] is None:
        cfg["model"]["num_classes"] = ds_classes
    elif cfg["model"]["num_classes"] != ds_classes:
        raise ConfigError(
            f"model.num_classes={cfg['model']['num_classes']} but dataset '{cfg['data']['name']}' "
            f"has {ds_classes} classes"
        )


def fit(
    cfg: dict[str, Any],
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: bool = False,
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune, with ``cfg['init_from']``, or resume) the run of ``cfg``.

    Args:
        resume: continue ``RUN/checkpoints/last.ckpt`` exactly; refused when ``cfg`` differs
            from the run's settings (:func:`config_differences`) unless ``allow_changes``.
        overwrite: replace an existing run directory (one that holds no checkpoint, a start
            that failed, is reused without it).

    Returns the summary written to ``RUN/summary.json``.

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT arrived; a resumable last.ckpt was saved.
        DirectoryBusyError: another process holds the run directory (nothing was changed).
    """
    threads = torch.get_num_threads()
    # The run directory's lock (arseg.engine.dirlock), held by rank 0 until the end: one
    # already held by another process is refused here, before any work.
    guard = Guard(resolve_run_dir(cfg), enabled=rank_zero_only.rank == 0)
    try:
        if cfg["trainer"]["num_threads"]:
            torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
        with guard:
            return _fit(
                copy.deepcopy(cfg),
                resume=resume,
                overwrite=overwrite,
                allow_changes=allow_changes,
                callbacks=callbacks,
                guard=guard,
            )
    finally:
        torch.set_num_threads(threads)


# Settings a resume may change without --allow-changes: where things are, how fast they load,
# how progress is shown; none changes what is computed.
_RESUME_FREE_KEYS = {
    "name",
    "run_dir",
    "init_from",
    "data.root",
    "data.num_workers",
    "trainer.enable_progress_bar",
    "trainer.num_threads",
}


def config_differences(
    stored: dict[str, Any], cfg: dict[str, Any], ignore: set[str] = _RESUME_FREE_KEYS
) -> list[str]:
    """``["optim.lr: 0.01 -> 0.02", ...]``: the dotted keys whose values differ (sorted)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict) and not prefix.endswith("options"):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    walk(stored, cfg, "")
    return out


def _trainer_error(tcfg: dict[str, Any], err: Exception) -> ConfigError:
    """Lightning's error for bad trainer settings, in one line naming the settings."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    settings = ", ".join(
        f"{k}={tcfg[k]!r}" for k in ("accelerator", "devices", "num_nodes", "strategy", "precision")
    )
    return ConfigError(f"the trainer settings ({settings}) are not usable here: {first}")


def _fit(
    cfg: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    allow_changes: bool,
    callbacks: list[Any] | None,
    guard: Guard | None = None,
) -> dict[str, Any]:
    run_dir = resolve_run_dir(cfg)
    cfg["run_dir"] = str(run_dir)
    root = cfg["data"]["root"]
    if root is not None and not Path(root).is_absolute():
        # stored absolute: eval, affinity and report of the run work from any directory
        cfg["data"]["root"] = str(Path(root).resolve())
    start = time.time()
    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    # The trainer settings (accelerator, devices, precision, strategy) are checked first, by
    # building the Trainer, before any data, model or file: a failed start leaves nothing.
    tcfg = cfg["trainer"]
    check_accelerator(tcfg["accelerator"])
    run = RunDir(run_dir)
    ckpt_dir = run.checkpoints
    best_cb = BestCheckpoint(run.best_ckpt)
    stop_cb = StopOnSignal(run.last_ckpt)
    show_bar = bool(tcfg["enable_progress_bar"]) and sys.stdout.isatty()
    all_callbacks: list[Any] = [best_cb, SaveLastEachEpoch(run.last_ckpt), stop_cb]
    if not show_bar:
        all_callbacks.append(ProgressLines())
    if tcfg["checkpoint_every_n_steps"]:
        all_callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                filename="last",
                save_top_k=0,
                save_last=True,
                every_n_train_steps=int(tcfg["checkpoint_every_n_steps"]),
                enable_version_counter=False,
            )
        )
    all_callbacks.extend(callbacks or [])
    # SyncBatchNorm under multi-GPU DDP (torch supports it on CUDA only; CPU/gloo DDP keeps
    # per-process BatchNorm statistics), converted by arseg.models.convert_sync_batchnorm below:
    # Lightning's sync_batchnorm drops the activation of timm's BatchNormAct2d.
    accel = str(tcfg["accelerator"])
    on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    distributed = _num_processes(tcfg) > 1 and on_gpu
    try:
        trainer = L.Trainer(
            default_root_dir=str(run_dir),
            logger=run_loggers(run_dir),
            callbacks=all_callbacks,
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,
            sync_batchnorm=False,
            enable_model_summary=False,
            **{**_trainer_kwargs(tcfg), "enable_progress_bar": show_bar},
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as err:
        raise _trainer_error(tcfg, err) from err

    datamodule = SeedDataModule(cfg)
    datamodule.setup("fit")
    _resolve_classes(cfg, datamodule.train_set)
    module = SegmentationModule(
        cfg,
        class_names=tuple(datamodule.train_set.classes),
        palette=getattr(datamodule.train_set, "palette", None),
    )
    if distributed:
        from arseg.models import convert_sync_batchnorm

        module.model = convert_sync_batchnorm(module.model)
    n_params = sum(p.numel() for p in module.parameters())
    # best + last (+ a temporary copy while writing), each weights + momentum, plus logs
    need = 3 * 2 * 4 * n_params + 16 * 2**20
    # Every checkpoint is found, loaded and checked against the config before the run directory
    # is touched: a failed start must not clear it (--overwrite) or rewrite its config.yaml.
    num_classes = cfg["model"]["num_classes"]
    init_ckpt = resume_ckpt = None
    if cfg["init_from"] and not resume:
        init = find_checkpoint(cfg["init_from"])
        if overwrite and init.resolve().is_relative_to(run_dir.resolve()):
            raise RunDirError(
                f"--init-from {init} lies inside the run directory {run_dir}, which --overwrite "
                "would clear: choose another --run-dir"
            )
        init_ckpt = load_checkpoint(init)
        check_compatible(cfg, init_ckpt, num_classes, init)
    last = run.last_ckpt
    if resume and rank_zero_only.rank == 0 and last.is_file():
        resume_ckpt = load_checkpoint(last)
        check_compatible(cfg, resume_ckpt, num_classes, last)
        changed = config_differences(complete_config(resume_ckpt["arseg_config"]), cfg)
        if changed and not allow_changes:
            raise ConfigError(
                f"--resume: the settings differ from those of the run ({last}): "
                f"{'; '.join(changed)}. Resume with the run's settings (its config.yaml), or "
                "pass --allow-changes to continue with the new ones"
            )
    if guard is not None:
        guard.take(mkdir=not resume)  # one process per run directory, before its first change
    ckpt_path = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, need_bytes=need)

    if init_ckpt is not None:
        load_weights(module.model, model_state_dict(init_ckpt), cfg["init_from"])
    if rank_zero_only.rank == 0:
        dump_config(cfg, run.config)
        _record_provenance(run_dir, resume=resume)
        if resume_ckpt is not None:
            truncate_metrics(run_dir, resume_ckpt)

    stop_cb.install()  # from here on; Lightning's own SIGTERM handler is replaced at train start
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)
    finally:
        stop_cb.restore()

    summary = {
        "best_miou": best_cb.best,
        "final": dict(best_cb.last_val),
        "steps": int(trainer.global_step),
        "wall_time_s": round(time.time() - start, 3),
    }
    if trainer.is_global_zero:
        if resume and run.summary.is_file():
            previous = json.loads(run.summary.read_text())
            summary["wall_time_s"] = round(
                summary["wall_time_s"] + float(previous.get("wall_time_s", 0)), 3
            )
        write_json(run.summary, summary)
    return summary


def _record_provenance(run_dir: Path, *, resume: bool) -> None:
    """Write ``RUN/provenance.json``: a list with one entry per start (the first, then each
    ``--resume``) of what ran it (arseg version, git commit, torch version, threads)."""
    from .provenance import provenance

    path = RunDir(run_dir).provenance
    entries: list[Any] = []
    if resume and path.is_file():
        try:
            entries = list(json.loads(path.read_text()))
        except (ValueError, TypeError):
            entries = []
    entries.append(provenance())
    write_json(path, entries)
