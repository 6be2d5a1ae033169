"""What every run (``fit``, ``evaluate``) checks and sets before it starts: Lightning's noise
silenced, the accelerator, the run directory (exists, writable, enough space, resumable).

Importing this module silences the Lightning warnings and info lines that say nothing useful to
arseg users (:mod:`arseg.engine.train` and :mod:`arseg.engine.evaluation` both import it).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from arseg import rundir
from arseg.rundir import RunDir

from .config import ConfigError

__all__ = [
    "RunDirError",
    "check_accelerator",
    "prepare_run_dir",
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


def prepare_run_dir(
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
