"""Where a study's runs execute: the jobs of a study and the two runners.

A *runner* takes jobs one at a time (:meth:`Runner.run`), keeps up to ``parallel`` of them
going, prints one progress line per finished run, and raises :class:`StudyError` with the
failed run's log when one fails. :class:`LocalRunner` starts worker processes on this machine
(:mod:`arseg.study.worker`); :class:`arseg.study.cluster.ClusterRunner` submits the same worker
as one job per run through submitit (SLURM, or submitit's local executor).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arseg.engine.records import read_eval_metrics
from arseg.rundir import RunDir, write_json

from .config import BUSY, StudyConfig, StudyError, run_config

__all__ = ["Job", "LocalRunner", "Runner", "plan_jobs"]


@dataclass
class Job:
    """One run of a study: the baseline (``arm=None``) or one arm's seed."""

    name: str  # "baseline" or "<arm>_seed<k>"
    arm: str | None
    seed: int | None
    run_dir: Path
    trains: bool = True  # False: a finished run given as the baseline, evaluated only

    def state_path(self, out: Path, split: str | None = None) -> Path:
        """``OUT/state/<job>.json``: the run has finished (``<job>.<split>.json``: it has been
        evaluated on a split other than the study's)."""
        suffix = f".{split}.json" if split else ".json"
        return out / "state" / f"{self.name}{suffix}"

    def config(self, study: StudyConfig, out: Path) -> dict[str, Any]:
        """The resolved run config the job trains (:func:`~arseg.study.config.run_config`)."""
        return run_config(study, out, self.arm, self.seed)


def plan_jobs(study: StudyConfig, out: Path) -> tuple[Job, list[Job]]:
    """The baseline job and the fine-tunes, seed-major (a study stopped early still holds
    complete seed pairs of every arm)."""
    baseline = Job("baseline", None, None, study.run_dir(out), trains=not study.baseline_is_run)
    finetunes = []
    for i in range(max(len(arm.seeds) for arm in study.arms.values())):
        for name, arm in study.arms.items():
            if i < len(arm.seeds):
                seed = arm.seeds[i]
                finetunes.append(
                    Job(f"{name}_seed{seed}", name, seed, study.run_dir(out, name, seed))
                )
    return baseline, finetunes


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text().strip().splitlines()
    except OSError:
        return ""
    return "" if not text else "; it ends with: " + " | ".join(text[-lines:])


def fmt_seconds(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Runner:
    """Runs jobs, ``parallel`` at a time, and reports progress (see the module docstring).

    Subclasses start a job (:meth:`_start`), tell whether it has ended (:meth:`_poll`: its exit
    status, or None) and stop it (:meth:`_terminate`).
    """

    def __init__(
        self, out: Path, total: int, parallel: int, split: str, to_run: int | None = None
    ) -> None:
        self.out = out
        self.total = total
        # the jobs of ``total`` still to run (the others finished earlier and are skipped):
        # what is left is estimated from these, not from every job not yet reached
        self.left = total if to_run is None else to_run
        self.parallel = parallel
        self.split = split
        self.done = 0
        self.start = time.time()
        self.job_times: list[float] = []
        self.running: dict[str, tuple[Any, Job, float]] = {}

    # -- what a subclass provides
    def _start(self, job: Job, spec_path: Path, log_path: Path) -> Any:
        raise NotImplementedError

    def _poll(self, handle: Any) -> int | None:
        raise NotImplementedError

    def _terminate(self, handles: list[Any]) -> None:
        raise NotImplementedError

    def _study_pid(self) -> int | None:
        return os.getpid()

    # -- the protocol
    def log_path(self, job: Job) -> Path:
        return self.out / "logs" / f"{job.name}.log"

    def run(self, job: Job, spec: dict[str, Any]) -> None:
        """Start ``job`` (its spec written whole first) once fewer than ``parallel`` run."""
        self._reap(block=True)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        (self.out / "state").mkdir(parents=True, exist_ok=True)
        spec_path = self.out / "state" / f"{job.name}.spec.json"
        write_json(spec_path, {**spec, "study_pid": self._study_pid()})
        self.running[job.name] = (self._start(job, spec_path, self.log_path(job)), job, time.time())

    def wait(self) -> None:
        """Until every started job has ended."""
        while self.running:
            self._reap(block=False)
            time.sleep(0.5)

    def skip(self, job: Job) -> None:
        self.done += 1
        print(f"[{self.done:>3}/{self.total}] {job.name}: finished earlier, kept", flush=True)

    def stop(self) -> None:
        """Stop every running job (each saves ``last.ckpt`` first)."""
        self._terminate([handle for handle, _job, _started in self.running.values()])
        self.running.clear()

    def _reap(self, block: bool) -> None:
        while self.running:
            for name, (handle, job, started) in list(self.running.items()):
                rc = self._poll(handle)
                if rc is None:
                    continue
                del self.running[name]
                if rc != 0:
                    self.stop()
                    log = self.log_path(job)
                    if rc == BUSY:  # its run directory is held: the worker's line says by whom
                        line = _tail(log, 1)
                        raise StudyError(f"run {job.name}: {line.split('arseg: error: ')[-1]}")
                    raise StudyError(
                        f"run {job.name} failed (exit {rc}); its log: {log}{_tail(log)}"
                    )
                took = time.time() - started
                if (
                    job.arm is not None
                ):  # the estimate counts fine-tunes only (the baseline is longer)
                    self.job_times.append(took)
                self.done += 1
                self.left -= 1
                self._progress(job, took)
            if not block or len(self.running) < self.parallel:
                return
            time.sleep(0.5)

    def _progress(self, job: Job, took: float) -> None:
        elapsed = time.time() - self.start
        try:
            best = read_eval_metrics(RunDir(job.run_dir).eval_dir(self.split, "best"))
            last = read_eval_metrics(RunDir(job.run_dir).eval_dir(self.split, "last"))
        except ValueError:  # a damaged record: the analysis names it
            best = last = None
        what = ""
        if best:
            what = f"{self.split} mIoU best {100 * best['miou']:.2f}"
            if last:
                what += f", last {100 * last['miou']:.2f}"
        eta = ""
        if self.left and self.job_times:
            mean = sum(self.job_times) / len(self.job_times)
            eta = f", about {fmt_seconds(mean * self.left / self.parallel)} left"
        print(
            f"[{self.done:>3}/{self.total}] {job.name}: done in {fmt_seconds(took)}"
            f" ({what}); elapsed {fmt_seconds(elapsed)}{eta}",
            flush=True,
        )


class LocalRunner(Runner):
    """Worker processes on this machine; they stop with the study however it ends."""

    def _start(self, job: Job, spec_path: Path, log_path: Path) -> Any:
        log = open(log_path, "a")  # closed when the job ends or is stopped
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "arseg.study.worker", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        return proc, log

    def _poll(self, handle: Any) -> int | None:
        proc, log = handle
        rc = proc.poll()
        if rc is not None:
            log.close()
        return rc

    def _terminate(self, handles: list[Any]) -> None:
        for proc, _log in handles:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in handles:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
