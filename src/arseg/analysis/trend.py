"""The AR-loss trend of a run (the paper's Table 2) and the curves of its metrics.

:func:`trend_of_run` regresses a run's training AR loss on the step and relates the change of
its val AR loss to where the run started (its ``init_from`` checkpoint when known);
:func:`curve_data` gives the series :func:`arseg.analysis.figures.plot_curves` draws. Used by
``arseg trend``, ``arseg curves`` and the report page.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arseg.analysis.runs import Run
from arseg.analysis.stats import TrendResult, ols_trend, relative_change
from arseg.rundir import RunDir

__all__ = ["TrendReport", "curve_data", "init_warnings_once", "trend_of_run", "warn"]


def warn(msg: str) -> None:
    """A one-line ``warning: ...`` on standard error (what the analysis commands go on past)."""
    print(f"warning: {msg}", file=sys.stderr)


def curve_data(
    run: Run, *, miou_key: str = "val/miou", ar_key: str = "train/ar"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"miou": (epochs, values), "ar": (steps, values)} for :func:`plot_curves` (what exists)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if run.has_series(miou_key):
        s = run.series(miou_key, index="epoch")
        out["miou"] = (s.index.to_numpy(), s.to_numpy())
    if run.has_series(ar_key):
        s = run.series(ar_key, index="step")
        out["ar"] = (s.index.to_numpy(), s.to_numpy())
    return out


@dataclass(frozen=True)
class TrendReport:
    """Table 2 for one run: OLS of the AR loss on the iteration + val AR change."""

    run: str
    key: str
    ols: TrendResult
    val_start: float | None
    val_end: float | None
    val_start_source: str

    @property
    def val_change_pct(self) -> float | None:
        if self.val_start is None or self.val_end is None or self.val_start == 0:
            return None
        return relative_change(self.val_start, self.val_end)

    def format(self) -> str:
        lines = [f"OLS: {self.key} ~ iteration ({self.run})", self.ols.table()]
        direction = "falls" if self.ols.slope < 0 else "rises"
        lines.append(
            f"slope {self.ols.slope:.3e} per iteration ({direction}; p = {self.ols.p_value[1]:.3g})"
        )
        if self.val_change_pct is not None:
            lines.append(
                f"val AR loss: {self.val_start:.4f} ({self.val_start_source}) -> {self.val_end:.4f} "
                f"(last epoch): {self.val_change_pct:+.1f}%"
            )
        else:
            lines.append("val AR loss: fewer than two values logged, no change computed")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            "run": self.run,
            "key": self.key,
            "ols": self.ols.as_dict(),
            "val_ar_start": self.val_start,
            "val_ar_end": self.val_end,
            "val_ar_start_source": self.val_start_source,
            "val_ar_change_pct": self.val_change_pct,
        }


def _locate_run_dir(written: Path, run: Run) -> Path | None:
    """Where the run directory ``written`` (from ``run``'s config) is now.

    As written (absolute, or relative to the current directory) first; a relative path was
    relative to wherever the fine-tune was launched, so it is then looked for beside the run:
    under each ancestor of the run directory (nearest first), with its leading folders dropped
    one by one (``runs/camvid/baseline`` is found as ``camvid/baseline`` next to a copied
    ``camvid/ar_s1``). Only directories holding a ``metrics.csv`` count.
    """
    if RunDir(written).metrics_csv.is_file():
        return written
    if written.is_absolute():
        return None
    parts = written.parts
    here = run.path.resolve()
    for ancestor in here.parents:
        for k in range(len(parts)):
            candidate = ancestor.joinpath(*parts[k:])
            if RunDir(candidate).metrics_csv.is_file() and candidate.resolve() != here:
                return candidate
    return None


#: Inside :func:`init_warnings_once`: the ``init_from`` paths already warned about as not found.
_init_warned: set[str] | None = None


@contextmanager
def init_warnings_once() -> Iterator[None]:
    """Within, a missing ``init_from`` is warned about once per path, not once per run that
    names it (a study's trends and report read every fine-tune of the same baseline)."""
    global _init_warned
    if _init_warned is not None:  # nested: the outer one counts
        yield
        return
    _init_warned = set()
    try:
        yield
    finally:
        _init_warned = None


def _init_source(run: Run) -> tuple[Run, str] | None:
    """The run a fine-tune was initialised from (config ``init_from``) and which checkpoint."""
    init = run.config.get("init_from")
    if not init:
        return None
    written = Path(str(init))
    base = written.parent.parent if written.suffix == ".ckpt" else written
    found = _locate_run_dir(base, run)
    if found is None:
        if _init_warned is None or str(written) not in _init_warned:
            if _init_warned is not None:
                _init_warned.add(str(written))
            warn(
                f"init_from {written} not found (no metrics.csv in {base}); the val AR start "
                "of the runs fine-tuned from it is their first epoch"
            )
        return None
    return Run(found), _init_which(run)


def _init_which(run: Run) -> str:
    """``best`` or ``last``: which checkpoint the config's ``init_from`` names (default best)."""
    init = Path(str(run.config.get("init_from") or ""))
    return init.stem if init.suffix == ".ckpt" and init.stem in ("best", "last") else "best"


def _val_at_checkpoint(base: Run, which: str, val_key: str, miou_key: str = "val/miou") -> float:
    """``val_key`` of ``base`` at the epoch of its ``best`` (highest val mIoU) or ``last`` checkpoint."""
    val = base.series(val_key, index="step")
    if which == "best" and base.has_series(miou_key):
        miou = base.series(miou_key, index="step")
        step = miou.idxmax()  # the engine keeps the first epoch reaching the best mIoU
        if step in val.index:
            return float(val.loc[step])
    return float(val.iloc[-1])


def trend_of_run(
    run: Run,
    *,
    key: str = "train/ar",
    val_key: str = "val/ar",
    start_from: Run | None = None,
    min_step: int | None = None,
) -> TrendReport:
    """OLS of ``key`` against the step over ``run``, and the change of ``val_key``.

    The start value of ``val_key`` is the state before fine-tuning when it can be found: the
    value of ``start_from`` (or else of the run named by the config's ``init_from``) at the epoch
    of the checkpoint the fine-tune started from (``best`` = highest val mIoU, or ``last``);
    otherwise the run's first logged value.

    Args:
        run: a (fine-tuning) run whose metrics.csv logs ``key`` per step.
        start_from: the run it was initialised from (the baseline), if not in its config.
        min_step: leave out steps below this one.

    Raises:
        RunError: the column is missing; ValueError: fewer than 3 values.
    """
    series = run.series(key, index="step")
    if min_step is not None:
        series = series[series.index >= min_step]
    ols = ols_trend(series.index.to_numpy(dtype=np.float64), series.to_numpy(dtype=np.float64))
    start = end = None
    source = "first epoch"
    if run.has_series(val_key):
        val = run.series(val_key, index="step")
        end = float(val.iloc[-1])
        init = _init_source(run) if start_from is None else (start_from, _init_which(run))
        if init is not None and init[0].has_series(val_key):
            base, which = init
            start = _val_at_checkpoint(base, which, val_key)
            source = f"{which} checkpoint of {base.label}"
        elif len(val) >= 2:
            start = float(val.iloc[0])
    return TrendReport(str(run.path), key, ols, start, end, source)
