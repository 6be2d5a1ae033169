"""Running a study: the baseline, every fine-tune, then the analysis; resumable and exclusive.

:func:`run_study` records the config in the study directory (refusing one that holds another
study), starts the runs through the runner the config asks for, skips those recorded as
finished, and hands the directory to :func:`arseg.study.table.analyse`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from arseg import rundir

from .config import (
    StudyConfig,
    StudyError,
    load_study_config,
    record_study,
    recorded_study,
    refuse_foreign,
)
from .runner import Job, LocalRunner, Runner, plan_jobs
from .table import analyse, provenance_line

__all__ = ["make_runner", "run_jobs", "run_study"]

# What a run directory given as the baseline lends the study: read through symlinks, so its
# evaluation (and nothing else) is written into the study's own ``baseline`` folder and the
# given folder may be read-only or someone else's.
_BASELINE_VIEW = (
    rundir.CONFIG,
    rundir.SUMMARY,
    rundir.METRICS_CSV,
    rundir.PROVENANCE,
    rundir.CHECKPOINTS_DIR,
)


def prepare_baseline_view(study: StudyConfig, out: Path) -> None:
    """``OUT/baseline`` of a study that starts from a finished run: symlinks to that run."""
    source = Path(study.baseline).resolve()
    view = study.run_dir(out)
    view.mkdir(parents=True, exist_ok=True)
    for name in _BASELINE_VIEW:
        link = view / name
        if (source / name).exists() and not link.is_symlink() and not link.exists():
            link.symlink_to(source / name, target_is_directory=(source / name).is_dir())
    finished = Job("baseline", None, None, view, trains=False).state_path(out)
    if finished.is_file() and not (view / "eval").exists():
        # a study recorded before the view existed evaluated the baseline inside the run
        (view / "eval").symlink_to(source / "eval", target_is_directory=True)


def make_runner(
    study: StudyConfig, out: Path, total: int, split: str, to_run: int | None = None
) -> Runner:
    """The runner the study config asks for (``cluster``: submitit; else this machine);
    ``to_run`` of the ``total`` jobs will run (default: all)."""
    if study.cluster is None:
        return LocalRunner(out, total, study.parallel, split, to_run)
    import importlib

    # by name: the cluster runner is an optional backend (the `cluster` extra), like a command
    cluster = importlib.import_module("arseg.study.cluster")
    return cluster.ClusterRunner(out, total, study.parallel, split, study.cluster, to_run)


def _check_states(out: Path) -> None:
    """Every record of a finished run must be readable (one line naming a damaged one)."""
    from arseg.engine.records import RunError, read_json

    for path in sorted((out / "state").glob("*.json")) if (out / "state").is_dir() else []:
        if path.name.endswith(".spec.json"):
            continue  # rewritten before each start
        try:
            read_json(path, mapping=True)
        except RunError as err:
            raise StudyError(
                f"{err}; it records that run {path.name.split('.')[0]} has finished: delete it "
                "and run the study again (the run is then resumed from its last checkpoint, "
                "not trained again if it had finished, and evaluated again)"
            ) from None


def run_study(
    config: str | Path,
    out: str | Path | None = None,
    *,
    eval_split: str | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study; returns the final table as a dict (also ``OUT/summary_*``).

    Args:
        config: a study config file, or the directory of an earlier study (to continue it, or
            with ``eval_split`` to evaluate it on another split).
        out: the study directory (required with a config file).
        eval_split: evaluate the finished runs on this split instead of the study's own
            (no training); the comparisons and the report of that split are written too.
        data_root: dataset root for ``eval_split`` (e.g. where a test split lives).

    Raises:
        StudyError: a refused config or directory, a failed run (its log named), or an
            incomplete analysis (after the table of what could be read).
        DirectoryBusyError: another process holds the study directory.
    """
    from arseg._extras import require
    from arseg.engine.dirlock import acquire

    for module in ("pandas", "matplotlib", "statsmodels"):  # the last step runs the analysis
        require(module, "analysis", "'arseg study'")  # checked before any run is trained
    config = Path(config)
    study: StudyConfig | None
    if config.is_dir():
        if out is not None and Path(out).resolve() != config.resolve():
            raise StudyError("give either a study config with --out, or a study directory")
        out = config
        config = out / "study.yaml"
        if not config.is_file():
            raise StudyError(f"{out} is not a study directory (no study.yaml)")
        study = None
    else:
        if out is None:
            raise StudyError("--out DIR is required with a study config")
        out = Path(out)
        study = load_study_config(config)
        refuse_foreign(out)
    lock = acquire(out)  # one study process per directory, before anything is written into it
    try:
        if study is None:
            study = recorded_study(config)
        else:
            record_study(study, config, out)
        return _run(study, Path(out).resolve(), eval_split, data_root)
    finally:
        if lock is not None:
            lock.release()


def _run(
    study: StudyConfig, out: Path, eval_split: str | None, data_root: str | None
) -> dict[str, Any]:
    split = run_jobs(study, out, eval_split=eval_split, data_root=data_root)
    return analyse(study, out, split, data_root)


def run_jobs(
    study: StudyConfig,
    out: Path,
    *,
    eval_split: str | None = None,
    data_root: str | None = None,
    announce: bool = True,
) -> str:
    """Run every job of a recorded study that has not finished (the caller holds ``out``'s
    lock); returns the split evaluated. With ``eval_split``, every run, finished before, is
    evaluated on that split without training. ``announce``: print the provenance and the
    study's one-line plan first."""
    if study.baseline_is_run:
        prepare_baseline_view(study, out)
    baseline, finetunes = plan_jobs(study, out)
    split = eval_split or study.eval_split
    # With eval_split, every finished run is evaluated (again) on it, without training: another
    # split, or the study's own after the evaluation code changed.
    retarget = eval_split is not None
    jobs = [baseline, *finetunes]
    if announce:
        print(provenance_line(), flush=True)
        arm_counts = ", ".join(f"{a} x{len(s.seeds)}" for a, s in study.arms.items())
        where = "" if study.cluster is None else f" through submitit ({study.cluster.executor})"
        print(
            f"study {study.name}: 1 baseline + {len(finetunes)} fine-tunes ({arm_counts}), "
            f"{study.parallel} side by side, {study.threads} threads in all{where}; output {out}",
            flush=True,
        )

    def on_signal(signum: int, _frame: Any) -> None:
        runner.stop()
        print(
            f"arseg: study stopped by {signal.Signals(signum).name}; finished runs are kept: "
            f"run the same command again to continue",
            file=sys.stderr,
        )
        sys.exit(128 + signum)

    _check_states(out)
    # Every spec is resolved before the first run starts: a config that no longer resolves (a
    # recorded study whose files changed) is one line, not a failure after hours of runs.
    plan: list[tuple[Job, dict[str, Any] | None]] = []  # None: finished earlier
    for job in jobs:
        state = job.state_path(out, split if retarget else None)
        if retarget and not job.state_path(out).is_file():
            raise StudyError(f"run {job.name} of {out} is not finished: continue the study first")
        if state.is_file():
            plan.append((job, None))
            continue
        spec = {
            "name": job.name,
            "run_dir": str(job.run_dir),
            "config": job.config(study, out) if job.trains and not retarget else None,
            "split": split,
            "data_root": data_root,
            "checkpoints": ["best"] if job is baseline else ["best", "last"],
            "state": str(state),
        }
        plan.append((job, spec))
    to_run = sum(spec is not None for _job, spec in plan)
    runner = make_runner(study, out, total=len(jobs), split=split, to_run=to_run)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for job, spec in plan:
            if spec is None:
                runner.skip(job)
                continue
            runner.run(job, spec)
            if job is baseline:
                runner.wait()  # every fine-tune starts from the baseline's best checkpoint
        runner.wait()
    except BaseException:  # a failed run, an interrupt: nothing left running
        runner.stop()
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return split
