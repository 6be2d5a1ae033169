"""The cluster runner of a study: one submitit job per run (SLURM, or submitit's local
executor), requeued on preemption or timeout, each run then resuming its own directory from its
last checkpoint. Needs the ``cluster`` extra (submitit); loaded by
:func:`arseg.study.run.make_runner` only for a study config with a ``cluster`` section.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from arseg._extras import require

from .config import ClusterSettings
from .runner import Job, Runner

__all__ = ["ClusterJob", "ClusterRunner"]

submitit = require("submitit", "cluster", "a study with a 'cluster' section")


class ClusterJob:
    """What submitit runs for one study run: the worker, as a process of the allocated job
    (the same worker as on this machine, its output in the study's log). Requeued by
    submitit on preemption or timeout; the run then resumes from its last checkpoint."""

    def __init__(self, spec_path: str, log_path: str) -> None:
        self.spec_path = spec_path
        self.log_path = log_path

    def __call__(self) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log:
            rc = subprocess.call(
                [sys.executable, "-m", "arseg.study.worker", self.spec_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return rc

    def checkpoint(self) -> Any:  # submitit's hook: requeue the same run
        return submitit.helpers.DelayedSubmission(ClusterJob(self.spec_path, self.log_path))


class ClusterRunner(Runner):
    """One submitit job per run (SLURM, or submitit's local executor).

    Stopping the study (Ctrl-C, SIGTERM) cancels its jobs, each saving ``last.ckpt`` first;
    jobs of a study process that was killed outright keep running: let them end (or
    ``scancel`` them) before running the study again, which keeps every finished run."""

    def __init__(
        self, out: Path, total: int, parallel: int, split: str, cluster: ClusterSettings
    ) -> None:
        super().__init__(out, total, parallel, split)
        folder = out / "submitit" / "%j"
        if cluster.executor == "local":
            self.executor = submitit.LocalExecutor(folder=folder)
        else:
            self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        if cluster.parameters:
            self.executor.update_parameters(**cluster.parameters)

    def _study_pid(self) -> int | None:
        return None  # a job on another node cannot watch this process: it watches its job

    def _start(self, job: Job, spec_path: Path, log_path: Path) -> Any:
        submitted = self.executor.submit(ClusterJob(str(spec_path), str(log_path)))
        print(f"{job.name}: submitted as job {submitted.job_id}", flush=True)
        return submitted

    def _poll(self, handle: Any) -> int | None:
        if not handle.done():
            return None
        try:
            return int(handle.result())
        except Exception as err:  # the scheduler's failure (cancelled, out of memory, ...)
            print(
                f"arseg: job {handle.job_id}: {str(err).strip().splitlines()[-1]}", file=sys.stderr
            )
            return 1

    def _terminate(self, handles: list[Any]) -> None:
        for handle in handles:
            if not handle.done():
                handle.cancel(check=False)
