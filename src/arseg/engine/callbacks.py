"""The Lightning callbacks and the CSV logger of a training run.

``BestCheckpoint`` (``checkpoints/best.ckpt``), ``SaveLastEachEpoch`` (``last.ckpt``),
``StopOnSignal`` (SIGTERM / SIGINT: a resumable ``last.ckpt``, then :class:`TrainingInterrupted`),
``ProgressLines`` (one line per epoch where no progress bar is shown), and the loggers
(``metrics.csv``, which a resumed run continues, and TensorBoard when it is installed).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from arseg.rundir import RunDir

__all__ = [
    "BestCheckpoint",
    "ProgressLines",
    "SaveLastEachEpoch",
    "StopOnSignal",
    "TrainingInterrupted",
    "run_loggers",
    "truncate_metrics",
]


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


class BestCheckpoint(Checkpoint):
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


class StopOnSignal(L.Callback):
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


class ProgressLines(L.Callback):
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


class SaveLastEachEpoch(L.Callback):
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


def truncate_metrics(run_dir: Path, checkpoint: dict[str, Any]) -> None:
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


def run_loggers(run_dir: Path) -> list[Any]:
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
