"""One run of a study, in its own process: train (or resume) it, then evaluate it.

``python -m arseg.study.worker SPEC.json``. The spec (written whole by the runner) holds the
run's resolved config (``config``; ``null``: evaluate only), its directory, the split and
checkpoints to evaluate, and where to record that the run has finished (``state``). The worker
calls :func:`arseg.engine.train.fit` and :func:`arseg.engine.evaluation.evaluate` in Python:
the config it trains is the one the study checked before its first run.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from arseg import rundir
from arseg.rundir import RunDir

from .config import BUSY

__all__ = ["run_job"]

# how long a worker waits for an orphan of a killed study to stop in its run
_ORPHAN_WAIT_S = 600.0


def _error(message: str) -> int:
    print(f"arseg: error: {message}", file=sys.stderr, flush=True)
    return 2


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    # os.write: a print here could land inside a print the signal interrupted
    os.write(2, b"arseg: SIGTERM: stopped; the run is not recorded as finished\n")
    raise SystemExit(128 + signum)


def run_job(spec_path: str | Path) -> int:
    """Train (or resume) one run, then evaluate it at its checkpoints; the exit status.

    The worker stops with its study (SIGTERM, saving ``last.ckpt`` at the next step, when the
    study process, ``study_pid`` of the spec, else its parent, is gone however it ended). It
    holds its run directory while it runs.
    """
    from arseg.engine import dirlock
    from arseg.engine.cli import expected_errors, fail
    from arseg.engine.parentwatch import stop_with_parent
    from arseg.engine.records import RunError, read_json

    # SLURM signals a job's processes before a requeue: the job process stops the worker
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    # SIGTERM outside training (waiting for the run, setting up, evaluating): exit 143 with
    # nothing recorded as finished (Lightning's own handler would exit 0 mid-evaluation);
    # inside training, fit saves last.ckpt at the next step and returns the same status
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        spec = read_json(spec_path, mapping=True)
    except RunError as err:
        return _error(str(err))
    if "config" not in spec:
        return _error(f"{spec_path} was written by an older arseg: run the study again")
    # the study process; on a cluster (no study_pid) the job process that started the worker
    if not stop_with_parent(int(spec.get("study_pid") or os.getppid())):
        print("arseg: the study that started this worker is gone; not starting", file=sys.stderr)
        return 128 + signal.SIGTERM
    run_dir = Path(spec["run_dir"])
    try:  # held until the worker exits; an orphan of a killed study still in it is waited for
        dirlock.acquire_when_free(
            run_dir,
            wait_if=dirlock.orphaned,
            timeout_s=_ORPHAN_WAIT_S,
            notify=lambda message: print(f"waiting: {message}", flush=True),
            command=f"arseg study (the worker of run {spec['name']})",
            record={"parent_pid": os.getppid()},
        )
    except dirlock.DirectoryLockError as err:
        _error(str(err))
        return BUSY if isinstance(err, dirlock.DirectoryBusyError) else 2
    start = time.time()
    try:
        if spec["config"] is not None:  # null: evaluate only (a finished study on another split)
            rc = _train(spec["config"], run_dir)
            if rc:
                return rc
        fit_s = time.time() - start
        for checkpoint in spec["checkpoints"]:
            _evaluate(run_dir, spec, checkpoint)
    except expected_errors() as err:
        return fail(err)
    except ModuleNotFoundError as err:  # an extra not installed: one line naming it
        from arseg._extras import missing_extra_message

        message = missing_extra_message(err, "'arseg study'")
        if message is None:
            raise
        return _error(message)
    _record_finished(spec, fit_s=fit_s, total_s=time.time() - start)
    return 0


def _train(cfg: dict[str, Any], run_dir: Path) -> int:
    from arseg.engine.config import validate_config
    from arseg.engine.train import TrainingInterrupted, fit

    resume = RunDir(run_dir).last_ckpt.is_file()
    # a start that died before its first checkpoint left files but nothing to resume
    overwrite = not resume and any(p.name != rundir.LOCK_NAME for p in run_dir.iterdir())
    if resume:
        print(f"resuming {run_dir} from its last checkpoint", flush=True)
    elif overwrite:
        print(f"training {run_dir} again (an earlier start left no checkpoint)", flush=True)
    try:
        summary = fit(validate_config(cfg), resume=resume, overwrite=overwrite)
    except TrainingInterrupted as stop:
        print(
            f"arseg: {stop.signal_name}: stopped at step {stop.step}, checkpoint saved to "
            f"{stop.checkpoint}; the study resumes it when run again",
            file=sys.stderr,
            flush=True,
        )
        return stop.exit_code
    best = summary["best_miou"]
    print(
        f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; best val mIoU "
        f"{best if best is None else f'{best:.4f}'}",
        flush=True,
    )
    return 0


def _evaluate(run_dir: Path, spec: dict[str, Any], checkpoint: str) -> None:
    from arseg.engine.evaluation import evaluate, format_evaluation

    split = spec["split"]
    dest = RunDir(run_dir).eval_dir(split, checkpoint)
    done_as = _same_weights_evaluated(run_dir, split, checkpoint, spec["checkpoints"])
    if done_as is not None:  # the best epoch is the last: its evaluation holds for both
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(done_as, dest)
        _note_copy(dest, done_as)
        print(f"{dest}: same checkpoint step as {done_as}, evaluation copied", flush=True)
        return
    target = run_dir if checkpoint == "best" else RunDir(run_dir).last_ckpt
    data = {"root": str(spec["data_root"])} if spec.get("data_root") else {}
    metrics = evaluate(target, split=split, out_dir=dest, data_overrides=data, progress=False)
    print(f"{format_evaluation(metrics)}\nwrote {dest}", flush=True)


def _checkpoint_step(path: Path) -> int | None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable checkpoint is simply evaluated (and fails there, clearly)
        return None
    step = ckpt.get("global_step")
    return int(step) if step is not None else None


def _same_weights_evaluated(
    run_dir: Path, split: str, checkpoint: str, checkpoints: list[str]
) -> Path | None:
    """The evaluation folder of an earlier checkpoint of this list that was saved at the same
    step as ``checkpoint`` (best.ckpt and last.ckpt of a run whose best epoch is its last)."""
    names = {name: RunDir(run_dir).checkpoint(name) for name in rundir.CHECKPOINTS}
    here = _checkpoint_step(names[checkpoint])
    if here is None:
        return None
    for earlier in checkpoints[: checkpoints.index(checkpoint)]:
        done = RunDir(run_dir).eval_dir(split, earlier)
        if (done / rundir.EVAL_METRICS).is_file() and _checkpoint_step(names[earlier]) == here:
            return done
    return None


def _note_copy(dest: Path, source: Path) -> None:
    from arseg.engine.records import read_json

    metrics_path = dest / rundir.EVAL_METRICS
    metrics = read_json(metrics_path, mapping=True)
    metrics["copied_from"] = str(source)  # same global step: the same weights
    rundir.write_json(metrics_path, metrics)


def _record_finished(spec: dict[str, Any], *, fit_s: float, total_s: float) -> None:
    from arseg.engine.provenance import provenance

    state = {
        "job": spec["name"],
        "provenance": provenance(),
        "fit_s": round(fit_s, 1),
        "total_s": round(total_s, 1),
        "evaluated_only": spec["config"] is None,
    }
    rundir.write_json(spec["state"], state)  # the run counts as finished once this is written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m arseg.study.worker SPEC.json (internal to arseg study)")
    sys.exit(run_job(sys.argv[1]))
