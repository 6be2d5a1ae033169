"""The cluster runner of a study: one submitit job per run (SLURM, or submitit's local
executor), requeued on preemption or timeout, each run then resuming its own directory from its
last checkpoint. Needs the ``cluster`` extra (submitit); loaded by
:func:`arseg.study.run.make_runner` only for a study config with a ``cluster`` section.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from arseg._extras import require

from .config import ClusterSettings, StudyError
from .runner import Job, Runner

__all__ = ["ClusterJob", "ClusterRunner"]

submitit = require("submitit", "cluster", "a study with a 'cluster' section")

# How long a stopped worker may take to save its checkpoint (under the 90 s of warning SLURM
# gives submitit before a time limit), and a job's time limit where the config sets none
# (submitit's default is a few minutes).
_STOP_WAIT_S = 60.0
DEFAULT_TIMEOUT_MIN = 24 * 60
# A worker's exit on a SIGTERM that its job did not send: SLURM preempts by signalling every
# process of the job, SIGTERM first, then submitit's USR2, which requeues the job (same id).
# The job waits this long for that signal; where none comes, the runner submits the run again
# (it resumes from its last checkpoint), at most MAX_RESUBMISSIONS times.
PREEMPTED = 128 + signal.SIGTERM
_REQUEUE_SIGNAL_WAIT_S = 10.0
MAX_RESUBMISSIONS = 20
# Scheduler states of a job that is still (or again) queued or running, and how often to ask.
_ACTIVE_STATES = ("PENDING", "REQUEUED", "REQUEUE", "RUNNING", "CONFIGURING", "COMPLETING")
_STATE_POLL_S = 30.0


class ClusterJob:
    """What submitit runs for one study run: the worker, as a process of the allocated job
    (the same worker as on this machine, its output in the study's log). Requeued by
    submitit on preemption or timeout; the run then resumes from its last checkpoint."""

    def __init__(self, spec_path: str, log_path: str) -> None:
        self.spec_path = spec_path
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "arseg.study.worker", self.spec_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                # poll, not wait(): submitit's signal handler (checkpoint, below) runs in this
                # frame and must be able to wait for the worker itself
                while (rc := self._proc.poll()) is None:
                    time.sleep(0.5)
                if rc == PREEMPTED:  # the scheduler's SIGTERM: give its requeue signal time
                    time.sleep(_REQUEUE_SIGNAL_WAIT_S)
                return rc
            except BaseException:  # cancelled (SIGINT) or submitit's requeue exit
                self._stop_worker()
                raise

    def _stop_worker(self) -> None:
        """SIGTERM the worker (it saves ``last.ckpt`` at its next step) and wait for it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()

    def checkpoint(self) -> Any:  # submitit's hook before a requeue (timeout, preemption)
        self._stop_worker()  # the requeued job resumes from the checkpoint saved now
        return submitit.helpers.DelayedSubmission(ClusterJob(self.spec_path, self.log_path))

    def __getstate__(self) -> dict[str, Any]:  # pickled by submitit: no process handle
        return {"spec_path": self.spec_path, "log_path": self.log_path, "_proc": None}


class ClusterRunner(Runner):
    """One submitit job per run (SLURM, or submitit's local executor).

    Stopping the study (Ctrl-C, SIGTERM) cancels its jobs, each saving ``last.ckpt`` first;
    jobs of a study process that was killed outright keep running: let them end (or
    ``scancel`` them) before running the study again, which keeps every finished run."""

    def __init__(
        self,
        out: Path,
        total: int,
        parallel: int,
        split: str,
        cluster: ClusterSettings,
        to_run: int | None = None,
    ) -> None:
        super().__init__(out, total, parallel, split, to_run)
        folder = out / "submitit" / "%j"
        if cluster.executor == "local":
            self.executor = submitit.LocalExecutor(folder=folder)
        else:
            self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        parameters = {"timeout_min": DEFAULT_TIMEOUT_MIN, **cluster.parameters}
        try:
            self.executor.update_parameters(**parameters)
        except (NameError, ValueError, TypeError) as err:  # a parameter submitit does not know
            raise StudyError(f"cluster parameters {parameters}: {err}") from None

    def _study_pid(self) -> int | None:
        return None  # a job on another node cannot watch this process: it watches its job

    def _start(self, job: Job, spec_path: Path, log_path: Path) -> _Submission:
        submission = _Submission(job.name, ClusterJob(str(spec_path), str(log_path)))
        submission.submit(self.executor)
        print(f"{job.name}: submitted as job {submission.handle.job_id}", flush=True)
        return submission

    def _poll(self, submission: _Submission) -> int | None:
        handle = submission.handle
        if not handle.done():
            return None
        if submission.requeued_by_scheduler:  # its old result stays until the rerun ends
            if time.time() - submission.state_checked < _STATE_POLL_S:
                return None
            submission.state_checked = time.time()
            if _scheduler_state(handle).startswith(_ACTIVE_STATES):
                return None
            submission.requeued_by_scheduler = False
        try:
            rc = int(handle.result())
        except Exception as err:  # the scheduler's failure (cancelled, out of memory, ...)
            print(
                f"arseg: job {handle.job_id}: {str(err).strip().splitlines()[-1]}", file=sys.stderr
            )
            return 1
        if rc != PREEMPTED:
            return rc
        state = _scheduler_state(handle)
        if state.startswith("CANCELLED"):  # scancel: the user's decision, not a preemption
            print(f"arseg: job {handle.job_id} of run {submission.name}: {state}", file=sys.stderr)
            return rc
        if state.startswith(_ACTIVE_STATES):  # the scheduler requeued the job itself
            submission.requeued_by_scheduler = True
            submission.state_checked = time.time()
            print(f"{submission.name}: job {handle.job_id} preempted and requeued", flush=True)
            return None
        if submission.resubmissions >= MAX_RESUBMISSIONS:
            return rc
        submission.resubmissions += 1
        submission.submit(self.executor)
        print(
            f"{submission.name}: job {handle.job_id} stopped by SIGTERM (preempted);"
            f" resubmitted as job {submission.handle.job_id}, it resumes from its last"
            f" checkpoint ({submission.resubmissions}/{MAX_RESUBMISSIONS})",
            flush=True,
        )
        return None

    def _terminate(self, submissions: list[_Submission]) -> None:
        for submission in submissions:
            if not submission.handle.done():
                submission.handle.cancel(check=False)


class _Submission:
    """One run's current submitit job; a preempted run is submitted again in its place."""

    def __init__(self, name: str, job: ClusterJob) -> None:
        self.name = name
        self.job = job
        self.handle: Any = None
        self.resubmissions = 0
        self.requeued_by_scheduler = False
        self.state_checked = 0.0

    def submit(self, executor: Any) -> None:
        self.handle = executor.submit(self.job)


def _scheduler_state(handle: Any) -> str:
    """The job's state as the scheduler reports it now (SLURM's sacct, or the local executor's),
    upper case; ``UNKNOWN`` where it cannot be asked."""
    try:
        info = handle.get_info(mode="force")
    except Exception:  # the scheduler's command failed: say so rather than guess
        return "UNKNOWN"
    return str(info.get("State") or info.get("jobState") or "UNKNOWN").upper()
