"""The layout of a run directory, in one place: what the engine writes, analysis and study read.

::

    RUN/config.yaml                   resolved config
    RUN/metrics.csv                   per-step and per-epoch rows (Lightning's CSVLogger)
    RUN/summary.json                  {"best_miou", "final", "steps", "wall_time_s"}
    RUN/provenance.json               arseg version, git commit, torch version, threads
    RUN/checkpoints/best.ckpt         best val/miou
    RUN/checkpoints/last.ckpt         latest
    RUN/eval/<split>/                 evaluation of best.ckpt on <split> (metrics.json, ...)
    RUN/eval/<split>-last/            the same for last.ckpt
    RUN/.arseg.lock                   the directory's lock (:mod:`arseg.engine.dirlock`)

Standard library only: importable by every floor (engine, analysis, study) without torch.

Example:
    >>> run = RunDir("runs/ar")
    >>> run.best_ckpt.as_posix(), run.eval_dir("val", "last").as_posix()
    ('runs/ar/checkpoints/best.ckpt', 'runs/ar/eval/val-last')
    >>> RunDir.of_checkpoint("runs/ar/checkpoints/last.ckpt").path.as_posix()
    'runs/ar'
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINTS_DIR",
    "CONFIG",
    "EVAL_DIR",
    "EVAL_METRICS",
    "LOCK_NAME",
    "METRICS_CSV",
    "PROVENANCE",
    "SUMMARY",
    "RunDir",
    "checkpoint_file",
    "eval_dir_name",
    "nan_to_none",
    "write_json",
]

CONFIG = "config.yaml"
METRICS_CSV = "metrics.csv"
SUMMARY = "summary.json"
PROVENANCE = "provenance.json"
CHECKPOINTS_DIR = "checkpoints"
EVAL_DIR = "eval"
#: The metrics of one evaluation, in its folder under ``RUN/eval``.
EVAL_METRICS = "metrics.json"
#: The lock file arseg keeps in every directory it writes (never deleted: see
#: :mod:`arseg.engine.dirlock`).
LOCK_NAME = ".arseg.lock"
#: The checkpoints a run keeps, by name (``checkpoints/<name>.ckpt``).
CHECKPOINTS = ("best", "last")


def checkpoint_file(name: str) -> str:
    """File name of the checkpoint ``name``: ``checkpoint_file("best") == "best.ckpt"``."""
    return f"{name}.ckpt"


def eval_dir_name(split: str, checkpoint: str = "best") -> str:
    """Folder under ``RUN/eval`` of an evaluation: ``<split>`` for the best checkpoint,
    ``<split>-<checkpoint>`` for another one.

    Example:
        >>> eval_dir_name("val"), eval_dir_name("test", "last")
        ('val', 'test-last')
    """
    return split if checkpoint == "best" else f"{split}-{checkpoint}"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is read or created)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunDir:
        """The run directory of a checkpoint file: ``RUN`` for ``RUN/checkpoints/x.ckpt``, else
        the file's folder."""
        ckpt = Path(ckpt)
        return cls(ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS_DIR else ckpt.parent)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_csv(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def provenance(self) -> Path:
        return self.path / PROVENANCE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, name: str) -> Path:
        """``RUN/checkpoints/<name>.ckpt`` (whether or not it exists)."""
        return self.checkpoints / checkpoint_file(name)

    @property
    def best_ckpt(self) -> Path:
        return self.checkpoint("best")

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoint("last")

    @property
    def eval_root(self) -> Path:
        return self.path / EVAL_DIR

    def eval_dir(self, split: str, checkpoint: str = "best") -> Path:
        """``RUN/eval/<split>`` (best) or ``RUN/eval/<split>-<checkpoint>``."""
        return self.eval_root / eval_dir_name(split, checkpoint)

    def eval_metrics(self, split: str, checkpoint: str = "best") -> Path:
        """The ``metrics.json`` of that evaluation."""
        return self.eval_dir(split, checkpoint) / EVAL_METRICS


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float (in dicts, lists and tuples) as None: what a
    strict JSON record holds, readable by any parser."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` to ``path`` as strict JSON (NaN and inf as null), atomically: through a
    temporary file beside it (flushed to disk) and a rename, so that a reader, a crash or a kill
    sees the old record or the new one, never half of one. A link (``/dev/stdout``) or a path
    that is no regular file (a pipe) is written through, directly."""
    path = Path(path)
    text = json.dumps(nan_to_none(data), indent=2, allow_nan=False) + "\n"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        with open(path, "w") as stream:
            stream.write(text)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per writing process
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
