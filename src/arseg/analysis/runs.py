"""Reading run directories written by the engine.

A run directory (see the README) holds::

    RUN/config.yaml                    the resolved config
    RUN/metrics.csv                    Lightning CSVLogger: per-step and per-epoch rows
    RUN/summary.json                   {"best_miou", "final", "steps", "wall_time_s"}
    RUN/checkpoints/{best,last}.ckpt
    RUN/eval/<split>/                  ``arseg eval RUN --split <split>`` (best checkpoint)
        metrics.json                   mIoU, Boundary IoU, pixel acc, val AR, per class
        per_image_confusion.npy        (n_images, C, C) int64, rows = ground truth
        per_image_boundary.npy         (n_images, 2, C) int64 Boundary IoU intersections, unions
    RUN/eval/<split>-last/             ``arseg eval RUN --split <split> --checkpoint last``

A :class:`Run` reads the evaluation of one split and checkpoint (``split=None``: the config's
``data.val_split``, else ``val``). Runs evaluated before evaluations were kept per split hold
``RUN/eval/metrics.json`` and ``RUN/eval/per_image_confusion.npy`` directly: they are read as
the best checkpoint's evaluation of the split named in that metrics.json (else the config's
validation split).

Everything here is read lazily and only what a command needs: a run without
``eval/`` can still be plotted, a run without ``metrics.csv`` can still be compared.

Example:
    >>> from arseg.analysis.runs import load_run  # doctest: +SKIP
    >>> run = load_run("runs/demo/finetune_ar")  # doctest: +SKIP
    >>> run.series("train/ar").tail(3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from arseg import rundir
from arseg.analysis.records import RunError, read_json, read_metrics_csv, read_yaml
from arseg.rundir import RunDir, eval_dir_name

__all__ = [
    "CHECKPOINTS",
    "Run",
    "RunError",
    "distinct_labels",
    "eval_dir_name",
    "expand_run_group",
    "find_key",
    "load_run",
]

#: The checkpoints whose evaluations the analysis commands select with ``--checkpoint``.
CHECKPOINTS = ("best", "last")


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists()
        for name in (rundir.CONFIG, rundir.METRICS_CSV, rundir.SUMMARY, rundir.EVAL_DIR)
    )


def find_key(config: Any, key: str) -> Any:
    """Return the first value stored under ``key`` in a nested dict/list (depth first), else None.

    Example:
        >>> find_key({"trainer": {"seed": 3}}, "seed")
        3
    """
    if isinstance(config, dict):
        if key in config:
            return config[key]
        values: Iterable[Any] = config.values()
    elif isinstance(config, (list, tuple)):
        values = config
    else:
        return None
    for value in values:
        found = find_key(value, key)
        if found is not None:
            return found
    return None


@dataclass
class Run:
    """One run directory, read lazily.

    Attributes:
        path: the run directory.
        label: a short display name (default: the directory name).
        split: the evaluation split read (default: the config's ``data.val_split``, else val).
        eval_checkpoint: whose evaluation is read, ``best`` (default) or ``last``.
    """

    path: Path
    label: str = ""
    split: str | None = None
    eval_checkpoint: str = "best"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.label:
            self.label = self.path.name or str(self.path)
        if self.eval_checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be 'best' or 'last', got {self.eval_checkpoint!r}")

    # ------------------------------------------------------------------ files
    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config (``{}`` when the run has no config.yaml)."""
        file = RunDir(self.path).config
        if not file.is_file():
            return {}
        data = read_yaml(file)
        return data if isinstance(data, dict) else {}

    @cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json (``{}`` when absent)."""
        file = RunDir(self.path).summary
        return read_json(file, mapping=True) if file.is_file() else {}

    @property
    def config_val_split(self) -> str:
        """The config's ``data.val_split`` (``val`` when the config does not say)."""
        data = self.config.get("data")
        value = data.get("val_split") if isinstance(data, dict) else None
        return str(value) if value else "val"

    @property
    def eval_split(self) -> str:
        """The split whose evaluation is read: ``split``, else the config's validation split."""
        return self.split or self.config_val_split

    @cached_property
    def eval_dir(self) -> Path | None:
        """The folder of the selected evaluation (see the module docstring), None if absent."""
        root = RunDir(self.path).eval_root
        new = RunDir(self.path).eval_dir(self.eval_split, self.eval_checkpoint)
        if (new / rundir.EVAL_METRICS).is_file() or (new / "per_image_confusion.npy").is_file():
            return new
        legacy = root / rundir.EVAL_METRICS
        if self.eval_checkpoint == "best" and (
            legacy.is_file() or (root / "per_image_confusion.npy").is_file()
        ):
            stored = _read_json(legacy).get("split") if legacy.is_file() else None
            if (stored or self.config_val_split) == self.eval_split:
                return root
        return None

    @property
    def eval_command(self) -> str:
        """The ``arseg eval`` command that writes the selected evaluation."""
        cmd = f"arseg eval {self.path} --split {self.eval_split}"
        return cmd + (" --checkpoint last" if self.eval_checkpoint == "last" else "")

    @property
    def has_eval(self) -> bool:
        """Whether the selected evaluation has its per-image confusion matrices."""
        return self.eval_dir is not None and (self.eval_dir / "per_image_confusion.npy").is_file()

    @cached_property
    def eval_metrics(self) -> dict[str, Any]:
        """The selected evaluation's metrics.json (``{}`` when absent)."""
        if self.eval_dir is None or not (self.eval_dir / rundir.EVAL_METRICS).is_file():
            return {}
        return _read_json(self.eval_dir / rundir.EVAL_METRICS)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """metrics.csv as a DataFrame (raises RunError when absent)."""
        file = RunDir(self.path).metrics_csv
        if not file.is_file():
            raise RunError(f"{self.path} has no metrics.csv (is it a run directory?)")
        return read_metrics_csv(file)

    @property
    def has_metrics(self) -> bool:
        return RunDir(self.path).metrics_csv.is_file()

    def confusion(self) -> np.ndarray:
        """Per-image confusion matrices (n_images, C, C) int64, rows = ground truth.

        Raises:
            RunError: if the selected evaluation's ``per_image_confusion.npy`` is missing or
                malformed.
        """
        if "confusion" not in self._cache:
            if not self.has_eval:
                raise RunError(
                    f"{self.path} has no evaluation of split {self.eval_split!r} "
                    f"({self.eval_checkpoint} checkpoint): run `{self.eval_command}` first"
                )
            file = self.eval_dir / "per_image_confusion.npy"  # type: ignore[operator]
            conf = _load_npy(file)
            if conf.ndim != 3 or conf.shape[1] != conf.shape[2]:
                raise RunError(f"{file}: expected shape (n_images, C, C), got {conf.shape}")
            self._cache["confusion"] = conf.astype(np.int64, copy=False)
        return self._cache["confusion"]

    def boundary(self) -> np.ndarray | None:
        """Per-image Boundary IoU counts (n_images, 2, C) int64 (intersections, unions), or None
        when the evaluation has none (written by an arseg before Boundary IoU).

        Raises:
            RunError: if the file is malformed.
        """
        if "boundary" not in self._cache:
            file = self.eval_dir / "per_image_boundary.npy" if self.eval_dir else None
            counts = None
            if file is not None and file.is_file():
                counts = _load_npy(file)
                if counts.ndim != 3 or counts.shape[1] != 2:
                    raise RunError(f"{file}: expected shape (n_images, 2, C), got {counts.shape}")
                counts = counts.astype(np.int64, copy=False)
            self._cache["boundary"] = counts
        return self._cache["boundary"]

    def checkpoint(self, which: str = "best") -> Path:
        """Path of ``checkpoints/<which>.ckpt`` (falls back to last.ckpt for ``best``)."""
        for name in (which, "last") if which == "best" else (which,):
            file = RunDir(self.path).checkpoint(name)
            if file.is_file():
                return file
        raise RunError(f"{self.path} has no checkpoints/{which}.ckpt")

    # --------------------------------------------------------------- content
    @property
    def seed(self) -> int | None:
        seed = find_key(self.config, "seed")
        return int(seed) if isinstance(seed, (int, np.integer)) else None

    @property
    def classes(self) -> list[str]:
        """Class names: from eval/metrics.json, else from the val/iou/<name> columns."""
        if self.eval_metrics.get("classes"):
            return [str(c) for c in self.eval_metrics["classes"]]
        if self.has_metrics:
            return [c[len("val/iou/") :] for c in self.metrics.columns if c.startswith("val/iou/")]
        return []

    def series(self, key: str, *, index: str = "step") -> pd.Series:
        """The non-missing values of one metrics.csv column, indexed by ``step`` or ``epoch``.

        Several rows with the same index (Lightning writes one row per logger call) are
        averaged. Raises RunError when the column does not exist or holds no value.
        """
        df = self.metrics
        if key not in df.columns:
            raise RunError(
                f"{self.path}/metrics.csv has no column {key!r}; columns: {', '.join(df.columns)}"
            )
        if index not in df.columns:
            raise RunError(f"{self.path}/metrics.csv has no column {index!r}")
        rows = df[[index, key]].dropna()
        if rows.empty:
            raise RunError(f"{self.path}/metrics.csv: column {key!r} holds no value")
        series = rows.groupby(index)[key].mean()
        series.index = series.index.astype(np.int64)
        series.name = key
        return series

    def has_series(self, key: str) -> bool:
        return self.has_metrics and key in self.metrics.columns and self.metrics[key].notna().any()

    def per_class_iou(self) -> dict[str, float]:
        """Per-class IoU: eval/metrics.json, else the last epoch's val/iou/<class>."""
        if self.eval_metrics.get("iou_per_class"):
            return {str(k): float(v) for k, v in self.eval_metrics["iou_per_class"].items()}
        out: dict[str, float] = {}
        for name in self.classes:
            key = f"val/iou/{name}"
            if self.has_series(key):
                out[name] = float(self.series(key, index="epoch").iloc[-1])
        return out

    def per_class_boundary_iou(self) -> dict[str, float]:
        """Per-class Boundary IoU of the selected evaluation (``{}`` when it has none)."""
        values = self.eval_metrics.get("boundary_iou_per_class") or {}
        return {str(k): _as_float(v) for k, v in values.items()}

    def results(self) -> dict[str, float]:
        """Headline numbers: the selected evaluation's metrics.json and summary.json.

        A value stored as null (``best_miou`` of a run that never validated, a NaN written as
        null) is NaN here.
        """
        out: dict[str, float] = {}
        final = self.summary.get("final", {}) or {}
        for key in ("val/miou", "val/pixel_acc", "val/ar"):
            if key in final:
                out[key] = _as_float(final[key])
        if "best_miou" in self.summary:
            out["best val/miou"] = _as_float(self.summary["best_miou"])
        ev = self.eval_metrics
        for src, dst in (
            ("miou", "eval miou"),
            ("boundary_iou", "eval boundary IoU"),
            ("pixel_acc", "eval pixel_acc"),
            ("val_ar", "eval AR"),
        ):
            if src in ev:
                out[dst] = _as_float(ev[src])
        if "steps" in self.summary:
            out["steps"] = _as_float(self.summary["steps"])
        if "wall_time_s" in self.summary:
            out["wall time (s)"] = _as_float(self.summary["wall_time_s"])
        return out


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_json(file: Path) -> dict[str, Any]:
    data = read_json(file)
    return data if isinstance(data, dict) else {}


def _load_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file)
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read {file}: {err}") from None


def distinct_labels(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """Display names for ``paths``, one each and all different.

    Figures and tables key their rows by these names, so two equal names would silently put one
    run in place of the other. Given ``labels`` are checked (one per path, no repeats); by default
    each path is named by its last folder, extended with parent folders where names collide
    (``ce/seed1`` and ``ar/seed1`` rather than ``seed1`` twice).

    Raises:
        ValueError: ``labels`` has the wrong length or a repeated name.

    Example:
        >>> distinct_labels(["runs/ce/seed1", "runs/ar/seed1", "runs/baseline"])
        ['ce/seed1', 'ar/seed1', 'baseline']
    """
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != len(paths):
            raise ValueError(f"got {len(labels)} labels for {len(paths)} runs")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"labels must differ from run to run, got {repeated} more than once")
        return labels
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(pp[-d:]) for pp, d in zip(parts, depth)]
        clashes = [i for i, n in enumerate(names) if names.count(n) > 1]
        grow = [i for i in clashes if depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    # The same directory given twice: number the repeats.
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def load_run(
    path: str | Path,
    label: str | None = None,
    *,
    split: str | None = None,
    checkpoint: str = "best",
) -> Run:
    """Open a run directory (its evaluation of ``split`` with the ``checkpoint``; see :class:`Run`).

    Raises:
        RunError: if ``path`` does not exist or does not look like a run directory.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if not _is_run_dir(path):
        raise RunError(
            f"{path} is not a run directory (expected config.yaml, metrics.csv, summary.json or eval/)"
        )
    return Run(path, label or "", split=split, eval_checkpoint=checkpoint)


def expand_run_group(
    spec: str | Path | Sequence[str | Path],
    *,
    split: str | None = None,
    checkpoint: str = "best",
) -> list[Run]:
    """Turn a command-line run spec into runs (for example the seeds of one arm).

    ``spec`` is a run directory, a directory whose sub-directories are run directories
    (one per seed, sorted by name), a comma-separated list of run directories, or a
    sequence of any of these. ``split`` and ``checkpoint`` select the evaluation read.

    Example:
        >>> expand_run_group("runs/ar_seed0,runs/ar_seed1")  # doctest: +SKIP
    """
    sel = {"split": split, "checkpoint": checkpoint}
    if isinstance(spec, (list, tuple)):
        return [run for item in spec for run in expand_run_group(item, **sel)]
    text = str(spec)
    if "," in text:
        return [run for item in text.split(",") if item for run in expand_run_group(item, **sel)]
    path = Path(text)
    if not path.exists():
        raise RunError(f"run directory {path} does not exist")
    if _is_run_dir(path):
        return [load_run(path, **sel)]
    children = sorted(p for p in path.iterdir() if _is_run_dir(p))
    if not children:
        raise RunError(f"{path} is neither a run directory nor a directory of run directories")
    return [Run(p, split=split, eval_checkpoint=checkpoint) for p in children]
