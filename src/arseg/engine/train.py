"""Run a config: ``fit`` (train / fine-tune / resume) and ``evaluate`` (metrics.json + confusions).

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
import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from arseg import rundir
from arseg.rundir import RunDir, eval_dir_name

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
    resolve_data_root,
    validate_config,
)
from .datamodule import SeedDataModule, build_eval_dataset
from .dirlock import Guard, output_lock
from .metrics import BOUNDARY_RATIO, boundary_iou_from_counts
from .module import SegmentationModule

__all__ = [
    "RunDirError",
    "TrainingInterrupted",
    "check_accelerator",
    "config_differences",
    "eval_dir_name",
    "evaluate",
    "fit",
    "resolve_run_dir",
]

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
    # the module's batch hook (channels_last) is meant to serve every data module
    r".*You have overridden `on_after_batch_transfer` in `LightningModule`.*",
):
    warnings.filterwarnings("ignore", message=_pattern)

# Lightning's info lines ("GPU available: False, used: False", "TPU available ...", the
# litlogger tip, "Restoring states ...") on every run: arseg prints its own progress lines.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class RunDirError(OSError):
    """The run directory cannot be used (exists, not writable, disk full)."""


class TrainingInterrupted(Exception):
    """``fit`` stopped on SIGTERM / SIGINT after saving a resumable ``last.ckpt``.

    Attributes: ``signal_name`` ("SIGTERM"), ``step`` (global step saved), ``checkpoint`` (path),
    ``run_dir``, ``exit_code`` (128 + the signal number, the shell's convention).
    """

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: Path) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        self.run_dir = checkpoint.parent.parent
        self.exit_code = 128 + signum
        super().__init__(
            f"{signal_name} received: stopped at step {step}, resumable checkpoint {checkpoint}"
        )


def check_accelerator(accelerator: str) -> None:
    """Raise :class:`ConfigError` when ``accelerator`` names a device this machine lacks.

    Lightning would raise its own multi-line exception, and ``predict`` used to fall back to the
    CPU silently.
    """
    name = str(accelerator).lower()
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--accelerator {accelerator}: no CUDA GPU is available on this machine "
            "(torch.cuda.is_available() is False); use --accelerator cpu (or auto)"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "--accelerator mps: Apple's MPS backend is not available on this machine; "
            "use --accelerator cpu (or auto)"
        )


def resolve_run_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["run_dir"] or Path("runs") / cfg["name"])


def _check_writable(run_dir: Path, need_bytes: int) -> None:
    try:
        RunDir(run_dir).checkpoints.mkdir(parents=True, exist_ok=True)
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


# What arseg writes into a run directory (cleared by --overwrite, or when a start that failed
# before its first checkpoint is retried).
_RUN_FILES = (
    rundir.CHECKPOINTS_DIR,
    rundir.EVAL_DIR,
    "tensorboard",
    rundir.METRICS_CSV,
    rundir.SUMMARY,
    rundir.CONFIG,
    "hparams.yaml",
    "predictions",
    rundir.PROVENANCE,
    ".write_test",
)


def _checkpoints_in(run_dir: Path) -> list[Path]:
    ckpt_dir = RunDir(run_dir).checkpoints
    return sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []


def _is_failed_start(run_dir: Path) -> bool:
    """Only arseg's own files and no checkpoint: a start that failed (or was killed) before its
    first checkpoint, which a retry may reuse without --overwrite."""
    return not _checkpoints_in(run_dir) and all(
        p.name in _RUN_FILES or p.name == rundir.LOCK_NAME for p in run_dir.iterdir()
    )


def _prepare_run_dir(
    run_dir: Path, *, resume: bool, overwrite: bool, need_bytes: int
) -> Path | None:
    """Check the run directory before training; returns the checkpoint to resume from."""
    last = RunDir(run_dir).last_ckpt
    if rank_zero_only.rank != 0:  # a DDP worker: rank 0 has checked (and made) the directory
        return last if resume else None
    if resume:
        if not last.is_file():
            if not run_dir.is_dir():
                hint = f"run directory {run_dir} does not exist: start the run without --resume"
            elif _checkpoints_in(run_dir):
                found = ", ".join(p.name for p in _checkpoints_in(run_dir))
                hint = (
                    f"{run_dir} has {found} but no last.ckpt: evaluate or fine-tune from it, or "
                    "start again with --overwrite"
                )
            else:
                hint = (
                    f"{run_dir} holds none (the run stopped before saving one): start it again "
                    "without --resume (the directory is reused)"
                )
            raise RunDirError(f"--resume: no checkpoint to resume from at {last}; {hint}")
        _check_writable(run_dir, need_bytes)
        return last
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite and not _is_failed_start(run_dir):
            raise RunDirError(
                f"run directory {run_dir} already exists and is not empty: pass --resume to continue "
                "it, --overwrite to replace it, or choose another --run-dir"
            )
        for name in _RUN_FILES:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    _check_writable(run_dir, need_bytes)
    return None


class _BestCheckpoint(Checkpoint):
    """``checkpoints/best.ckpt``: the weights of the validation with the highest ``val/miou``.

    The best score (with its step) and the last validation's metrics are this callback's state,
    stored in every checkpoint Lightning writes: best.ckpt, last.ckpt and summary.json always
    agree, a resumed run compares against the true best (never replacing best.ckpt with a worse
    epoch), and a resume of a finished run reports the same best and final metrics. (Lightning's
    ``ModelCheckpoint`` kept a score one validation old in last.ckpt, and dropped it when the run
    directory moved.) A ``Checkpoint``, so that Lightning adds no checkpoint callback of its own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best: float | None = None
        self.best_step: int | None = None
        self.last_val: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.last_val = metrics
        score = metrics.get("val/miou")
        if score is None or math.isnan(score) or (self.best is not None and score <= self.best):
            return
        self.best, self.best_step = score, int(trainer.global_step)
        trainer.save_checkpoint(str(self.path), weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best_miou": self.best, "best_step": self.best_step, "last_val": self.last_val}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best_miou"), state.get("best_step")
        self.last_val = dict(state.get("last_val") or {})

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # A run written before this callback: its best score is the ModelCheckpoint's.
        for key, state in checkpoint.get("callbacks", {}).items():
            if key.startswith("ModelCheckpoint{'monitor': 'val/miou'") and self.best is None:
                score = state.get("best_model_score")
                self.best = float(score) if score is not None else None


class _StopOnSignal(L.Callback):
    """SIGTERM or SIGINT: finish the current step, save a resumable ``last.ckpt``, stop.

    Lightning 2.6 also catches SIGTERM (``trainer.received_sigterm``) but then exits without a
    checkpoint (and with status 0), and it stops mid-validation; SIGINT (Ctrl-C) ends in its
    KeyboardInterrupt path, also without one. This handler replaces both once training starts.
    The checkpoint is taken at ``on_train_batch_end``, the same point as the every-N-steps
    checkpoints that resume exactly. A second Ctrl-C stops at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker (Ctrl-C reaches the whole process group)
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        if self.received is None:
            print(
                f"{signal.Signals(signum).name} received: saving a checkpoint after this step",
                file=sys.stderr,
                flush=True,
            )
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # after Lightning's own SIGTERM handler (set up after on_fit_start)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        received = self.received is not None
        if trainer.world_size > 1:  # every process stops at the same step
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        trainer.save_checkpoint(str(self.path), weights_only=False)
        signum = self.received or signal.SIGTERM
        raise TrainingInterrupted(
            signal.Signals(signum).name, int(signum), int(trainer.global_step), self.path
        )


class _ProgressLines(L.Callback):
    """One short line per epoch (and one per ``every_s`` seconds inside a long epoch) on rank 0:
    the progress report where a progress bar would fill a log file with carriage returns."""

    def __init__(self, every_s: float = 60.0) -> None:
        self.every_s = every_s
        self._start = self._last = 0.0

    def _print(self, trainer: L.Trainer, what: str) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [what, f"step {trainer.global_step}"]
        if trainer.max_steps and trainer.max_steps > 0:
            parts[-1] += f"/{trainer.max_steps}"
        for key, label in (("train/loss", "loss"), ("val/miou", "val mIoU")):
            if key in metrics:
                parts.append(f"{label} {float(metrics[key]):.4f}")
        parts.append(f"{time.time() - self._start:.0f} s")
        print("  ".join(parts), flush=True)
        self._last = time.time()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if time.time() - self._last >= self.every_s:
            self._print(trainer, f"epoch {trainer.current_epoch + 1} (in progress)")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._print(trainer, f"epoch {trainer.current_epoch + 1}{total}")


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
    path = RunDir(run_dir).metrics_csv
    global_step = int(checkpoint["global_step"])
    rows: list[dict[str, Any]] = []
    fields: list[str] = []
    if path.is_file():
        from .records import check_metrics_csv

        text = path.read_text()
        check_metrics_csv(path, text, cut_last_ok=True)  # damaged: one line naming the file
        lines = text.splitlines(keepends=True)
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
    best_cb = _BestCheckpoint(run.best_ckpt)
    stop_cb = _StopOnSignal(run.last_ckpt)
    show_bar = bool(tcfg["enable_progress_bar"]) and sys.stdout.isatty()
    all_callbacks: list[Any] = [best_cb, _SaveLastEachEpoch(run.last_ckpt), stop_cb]
    if not show_bar:
        all_callbacks.append(_ProgressLines())
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
            logger=_loggers(run_dir),
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
    ckpt_path = _prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, need_bytes=need)

    if init_ckpt is not None:
        load_weights(module.model, model_state_dict(init_ckpt), cfg["init_from"])
    if rank_zero_only.rank == 0:
        dump_config(cfg, run.config)
        _record_provenance(run_dir, resume=resume)
        if resume_ckpt is not None:
            _truncate_metrics(run_dir, resume_ckpt)

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
        run.summary.write_text(json.dumps(_nan_to_none(summary), indent=2))
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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=2))
    os.replace(tmp, path)


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
        path = RunDir(ckpt_or_run_dir).last_ckpt
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoints/last.ckpt in run directory {ckpt_or_run_dir}")
    else:
        path = find_checkpoint(ckpt_or_run_dir)
    ckpt = load_checkpoint(path)
    cfg = ckpt.get("arseg_config")
    if cfg is None:
        raise ValueError(f"{path} has no arseg config: it was not written by arseg")
    threads = torch.get_num_threads()
    # writing into the run's own eval/ holds the run directory (not an evaluation elsewhere)
    run_dir = Path(ckpt_or_run_dir)
    if not run_dir.is_dir():
        run_dir = RunDir.of_checkpoint(path).path
    lock = output_lock(run_dir, out_dir, hint=", or evaluate into another folder with --out")
    try:
        if cfg["trainer"].get("num_threads"):
            torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
        with lock:
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
    if "root" not in overrides["data"]:
        # A relative root stored in a run is relative to the run directory (a run handed over
        # with its data beside it, possibly through a symlinked view), else to the current one.
        real = path.resolve()
        cfg["data"]["root"] = resolve_data_root(
            cfg["data"]["root"], RunDir.of_checkpoint(real).path
        )
    _validate_eval_options(cfg)
    if not (math.isfinite(boundary_ratio) and boundary_ratio > 0):
        raise ValueError(f"the boundary ratio must be a positive number, got {boundary_ratio}")
    split = split or cfg["data"]["val_split"]
    if out_dir is None:
        base = Path(ckpt_or_run_dir)
        run = RunDir(base) if base.is_dir() else RunDir.of_checkpoint(path)
        out_dir = run.eval_dir(split, path.stem)
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
        # the other loss terms of the run, on this split (e.g. val_lovasz)
        **{f"val_{name}": res[f"test/{name}"] for name in module.val_terms},
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
    (out_dir / rundir.EVAL_METRICS).write_text(json.dumps(_nan_to_none(metrics), indent=2))
    return {**metrics, "eval_dir": str(out_dir)}
