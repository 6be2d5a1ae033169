"""Run a config: ``fit`` (train / fine-tune / resume) and ``evaluate`` (metrics.json + confusions).

Run directory (read by :mod:`arseg.analysis`)::

    RUN/config.yaml                   resolved config
    RUN/metrics.csv                   CSVLogger: train/loss, train/ce, train/ar, lr per step;
                                      val/miou, val/pixel_acc, val/ar, val/iou/<class> per epoch
    RUN/tensorboard/                  TensorBoard events (when tensorboard is installed)
    RUN/checkpoints/best.ckpt         best val/miou
    RUN/checkpoints/last.ckpt         latest (end of epoch, and every N steps if configured)
    RUN/summary.json                  {"best_miou", "final", "steps", "wall_time_s"}
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
import csv
import importlib.util
import json
import math
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from .checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    model_state_dict,
)
from .config import (
    DEFAULTS,
    ConfigError,
    complete_config,
    dump_config,
    merge_config,
    validate_config,
)
from .datamodule import SeedDataModule, build_eval_dataset
from .metrics import BOUNDARY_RATIO, boundary_iou_from_counts
from .module import SegmentationModule

__all__ = ["RunDirError", "eval_dir_name", "evaluate", "fit", "resolve_run_dir"]

# Messages from Lightning that say nothing useful to arseg users.
for _pattern in (
    r".*does not have many workers.*",
    r".*You're resuming from a checkpoint that ended before the epoch ended.*",
    r".*`training_step` returned `None`.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*It is recommended to use `self.log\(.*sync_dist=True.*",
    r".*torch.use_deterministic_algorithms.*",
    r".*LeafSpec.*",
):
    warnings.filterwarnings("ignore", message=_pattern)


class RunDirError(OSError):
    """The run directory cannot be used (exists, not writable, disk full)."""


def resolve_run_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["run_dir"] or Path("runs") / cfg["name"])


def _check_writable(run_dir: Path, need_bytes: int) -> None:
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        raise RunDirError(
            f"run directory {run_dir} is not writable: {err.strerror or err}"
        ) from err
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise RunDirError(
            f"not enough free space in {run_dir}: {free / 2**20:.1f} MiB free, "
            f"about {need_bytes / 2**20:.1f} MiB needed for checkpoints and logs"
        )


def _prepare_run_dir(
    run_dir: Path, *, resume: bool, overwrite: bool, need_bytes: int
) -> Path | None:
    """Check the run directory before training; returns the checkpoint to resume from."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if rank_zero_only.rank != 0:  # a DDP worker: rank 0 has checked (and made) the directory
        return last if resume else None
    if resume:
        if not last.is_file():
            raise RunDirError(f"--resume: no checkpoint to resume from at {last}")
        _check_writable(run_dir, need_bytes)
        return last
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"run directory {run_dir} already exists and is not empty: pass --resume to continue "
                "it, --overwrite to replace it, or choose another --run-dir"
            )
        for name in (
            "checkpoints",
            "eval",
            "tensorboard",
            "metrics.csv",
            "summary.json",
            "config.yaml",
            "hparams.yaml",
            "predictions",
        ):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _check_writable(run_dir, need_bytes)
    return None


class _SaveLastEachEpoch(L.Callback):
    """Write ``checkpoints/last.ckpt`` at the end of every training epoch (after its validation).

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` refreshes last.ckpt only at the steps
    where it also wrote a top-k checkpoint, so with ``monitor="val/miou"`` it stayed at the best
    epoch: ``--resume`` restarted from there and ``--init-from RUN/checkpoints/last.ckpt`` got the
    best epoch's weights, not the last.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)  # full state, for --resume


class _KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but it never deletes an existing metrics.csv: it appends to it
    (arseg checks the run directory itself, and a resumed run continues its log)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class _RunCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def _truncate_metrics(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Make metrics.csv hold each step before the checkpoint once: drop the rows a resumed run
    will log again (steps >= the checkpoint's global step) and restore the checkpoint's last
    training row if the run died before its logger wrote it."""
    path = run_dir / "metrics.csv"
    global_step = int(checkpoint["global_step"])
    rows: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.is_file():
        lines = path.read_text().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a row cut short by the crash
        reader = csv.DictReader(lines)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step") and int(float(r["step"])) < global_step]
    last = checkpoint.get("arseg_last_train_row")
    if last is not None and int(last["step"]) == global_step - 1:
        step = int(last["step"])
        logged = any(int(float(r["step"])) == step and r.get("train/loss") for r in rows)
        if not logged:
            row = {k: (int(v) if k in ("step", "epoch") else v) for k, v in last.items()}
            # Lightning's CSV writer keeps its columns sorted and appends in that order.
            fields = sorted({*fields, *row})
            rows.append(row)
    if not rows and not path.is_file():
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _loggers(run_dir: Path) -> list[Any]:
    # Rows reach the disk as they are logged (not every 100 steps): nothing lost on a crash.
    loggers: list[Any] = [
        _RunCSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
    ]
    if (
        importlib.util.find_spec("tensorboard") is not None
        or importlib.util.find_spec("tensorboardX") is not None
    ):
        loggers.append(
            TensorBoardLogger(
                save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
            )
        )
    return loggers


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
    callbacks: list[Any] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune, with ``cfg['init_from']``, or resume) the run of ``cfg``.

    Returns the summary written to ``RUN/summary.json``.
    """
    threads = torch.get_num_threads()
    try:
        if cfg["trainer"]["num_threads"]:
            torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
        return _fit(copy.deepcopy(cfg), resume=resume, overwrite=overwrite, callbacks=callbacks)
    finally:
        torch.set_num_threads(threads)


def _fit(
    cfg: dict[str, Any], *, resume: bool, overwrite: bool, callbacks: list[Any] | None
) -> dict[str, Any]:
    run_dir = resolve_run_dir(cfg)
    cfg["run_dir"] = str(run_dir)
    start = time.time()
    L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)

    datamodule = SeedDataModule(cfg)
    datamodule.setup("fit")
    _resolve_classes(cfg, datamodule.train_set)
    module = SegmentationModule(
        cfg,
        class_names=tuple(datamodule.train_set.classes),
        palette=getattr(datamodule.train_set, "palette", None),
    )
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
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and rank_zero_only.rank == 0 and last.is_file():
        resume_ckpt = load_checkpoint(last)
        check_compatible(cfg, resume_ckpt, num_classes, last)
    ckpt_path = _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, need_bytes=need)

    if init_ckpt is not None:
        load_weights(module.model, model_state_dict(init_ckpt), cfg["init_from"])
    if rank_zero_only.rank == 0:
        dump_config(cfg, run_dir / "config.yaml")
        if resume_ckpt is not None:
            _truncate_metrics(run_dir, resume_ckpt)

    tcfg = cfg["trainer"]
    ckpt_dir = run_dir / "checkpoints"
    all_callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="best",
            monitor="val/miou",
            mode="max",
            save_top_k=1,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        _SaveLastEachEpoch(ckpt_dir / "last.ckpt"),
    ]
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
    # per-process BatchNorm statistics).
    accel = str(tcfg["accelerator"])
    on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    distributed = _num_processes(tcfg) > 1 and on_gpu
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        logger=_loggers(run_dir),
        callbacks=all_callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        sync_batchnorm=distributed,
        enable_model_summary=False,
        **_trainer_kwargs(tcfg),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None)

    best = all_callbacks[0].best_model_score
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    summary = {
        "best_miou": float(best) if best is not None else None,
        "final": final,
        "steps": int(trainer.global_step),
        "wall_time_s": round(time.time() - start, 3),
    }
    if trainer.is_global_zero:
        if resume and (run_dir / "summary.json").is_file():
            previous = json.loads((run_dir / "summary.json").read_text())
            summary["wall_time_s"] = round(
                summary["wall_time_s"] + float(previous.get("wall_time_s", 0)), 3
            )
        (run_dir / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=2))
    return summary


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def evaluate(
    ckpt_or_run_dir: str | Path,
    *,
    split: str | None = None,
    checkpoint: str | None = None,
    out_dir: str | Path | None = None,
    eval_overrides: dict[str, Any] | None = None,
    data_overrides: dict[str, Any] | None = None,
    accelerator: str = "auto",
    progress: bool = True,
    boundary_ratio: float | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a run's best or last) on a split; writes metrics.json and the
    per-image confusions and Boundary IoU counts (layout: the module docstring).

    Args:
        ckpt_or_run_dir: a run directory or a ``.ckpt`` file.
        split: dataset split (default: the config's ``data.val_split``).
        checkpoint: for a run directory, ``"best"`` (default; last.ckpt when the run has no
            best.ckpt) or ``"last"``.
        out_dir: where to write; default ``RUN/eval/<split>`` for the best checkpoint and
            ``RUN/eval/<split>-<name>`` for another one (RUN = the run directory, or the run
            that holds the checkpoint).
        eval_overrides: replaces keys of the config's ``eval`` section (scales, flip, mode, ...).
        data_overrides: replaces keys of the config's ``data`` section (root, eval_resize, ...).
        boundary_ratio: Boundary IoU band width as a fraction of the image diagonal (0.02).

    Returns:
        The metrics dict written to ``metrics.json``, and ``eval_dir``: the folder written.
    """
    if checkpoint not in (None, "best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if checkpoint is not None and not Path(ckpt_or_run_dir).is_dir():
        raise ValueError(
            f"--checkpoint {checkpoint} chooses a checkpoint of a run directory, but "
            f"{ckpt_or_run_dir} is not a directory"
        )
    if checkpoint == "last":
        path = Path(ckpt_or_run_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoints/last.ckpt in run directory {ckpt_or_run_dir}")
    else:
        path = find_checkpoint(ckpt_or_run_dir)
    ckpt = load_checkpoint(path)
    cfg = ckpt.get("arseg_config")
    if cfg is None:
        raise ValueError(f"{path} has no arseg config: it was not written by arseg")
    threads = torch.get_num_threads()
    try:
        if cfg["trainer"].get("num_threads"):
            torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
        return _evaluate(
            ckpt,
            path,
            cfg,
            ckpt_or_run_dir,
            split=split,
            out_dir=out_dir,
            eval_overrides=eval_overrides,
            data_overrides=data_overrides,
            accelerator=accelerator,
            progress=progress,
            boundary_ratio=BOUNDARY_RATIO if boundary_ratio is None else float(boundary_ratio),
        )
    finally:
        torch.set_num_threads(threads)


def eval_dir_name(split: str, checkpoint: str = "best") -> str:
    """Folder under ``RUN/eval`` of an evaluation: ``<split>`` for best, ``<split>-<name>`` else.

    Example:
        >>> eval_dir_name("val"), eval_dir_name("test", "last")
        ('val', 'test-last')
    """
    return split if checkpoint == "best" else f"{split}-{checkpoint}"


def _validate_eval_options(cfg: dict[str, Any]) -> None:
    """Check the evaluation settings of a stored config merged with the command line's.

    Only the ``eval`` section (what a command line changes at evaluation time) is checked: the
    rest was valid when the run was trained, and an older run is not refused because a check
    has been added since.
    """
    probe = copy.deepcopy(DEFAULTS)
    probe["eval"] = cfg["eval"]
    validate_config(probe)


def _evaluate(
    ckpt: dict[str, Any],
    path: Path,
    cfg: dict[str, Any],
    ckpt_or_run_dir: str | Path,
    *,
    split: str | None,
    out_dir: str | Path | None,
    eval_overrides: dict[str, Any] | None,
    data_overrides: dict[str, Any] | None,
    accelerator: str,
    progress: bool,
    boundary_ratio: float,
) -> dict[str, Any]:
    overrides = {"eval": eval_overrides or {}, "data": data_overrides or {}}
    cfg = merge_config(complete_config(cfg), overrides, source="the evaluation options")
    _validate_eval_options(cfg)
    if not (math.isfinite(boundary_ratio) and boundary_ratio > 0):
        raise ValueError(f"the boundary ratio must be a positive number, got {boundary_ratio}")
    split = split or cfg["data"]["val_split"]
    if out_dir is None:
        base = Path(ckpt_or_run_dir)
        if not base.is_dir():
            base = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        out_dir = base / "eval" / eval_dir_name(split, path.stem)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"cannot create the evaluation directory {out_dir}: {err.strerror or err}"
        ) from err

    dataset = build_eval_dataset(cfg, split=split)
    if int(dataset.num_classes) != int(cfg["model"]["num_classes"]):
        raise ValueError(
            f"{path} predicts {cfg['model']['num_classes']} classes but the {split} split of "
            f"'{cfg['data']['name']}' has {dataset.num_classes}"
        )
    module = SegmentationModule(cfg, class_names=tuple(dataset.classes))
    load_weights(module.model, model_state_dict(ckpt), path)
    module.boundary_ratio = boundary_ratio
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg["data"]["val_batch_size"],
        shuffle=False,
        num_workers=cfg["data"]["num_workers"],
    )
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        precision=cfg["trainer"]["precision"],
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    res = module.test_results
    confusions = (
        np.concatenate(module.test_confusions).astype(np.int64)
        if module.test_confusions
        else np.zeros((0, module.num_classes, module.num_classes), dtype=np.int64)
    )
    boundary = (
        np.concatenate(module.test_boundary).astype(np.int64)
        if module.test_boundary
        else np.zeros((0, 2, module.num_classes), dtype=np.int64)
    )
    b_scores = boundary_iou_from_counts(torch.from_numpy(boundary))
    metrics = {
        "miou": res["test/miou"],
        "pixel_acc": res["test/pixel_acc"],
        "val_ar": res["test/ar"],
        "boundary_iou": float(b_scores["boundary_iou"]),
        "iou_per_class": {name: res[f"test/iou/{name}"] for name in module.class_names},
        "boundary_iou_per_class": dict(zip(module.class_names, b_scores["iou"].tolist())),
        "boundary_ratio": boundary_ratio,
        "classes": list(module.class_names),
        "num_images": int(confusions.shape[0]),
        "split": split,
        "checkpoint": str(path),
        "checkpoint_name": path.stem,
        "eval": cfg["eval"],
        "sample_names": [dataset.sample_name(i) for i in range(len(dataset))]
        if hasattr(dataset, "sample_name")
        else None,
    }
    np.save(out_dir / "per_image_confusion.npy", confusions)
    np.save(out_dir / "per_image_boundary.npy", boundary)
    (out_dir / "metrics.json").write_text(json.dumps(_nan_to_none(metrics), indent=2))
    return {**metrics, "eval_dir": str(out_dir)}
