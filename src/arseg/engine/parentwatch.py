"""A child process that stops when its parent is gone (a study worker and its study).

When the parent process ends, however it ends (SIGKILL, the OOM killer), the child gets SIGTERM:
on Linux from the kernel (``prctl(PR_SET_PDEATHSIG)``), elsewhere (or where prctl fails) from a
daemon thread that polls the parent pid once a second. A
training run handles SIGTERM by saving ``last.ckpt`` at its next step boundary and exiting
(:class:`arseg.engine.callbacks.TrainingInterrupted`), so an orphaned worker stops within a step and
its run resumes exactly.

Torch-free: importable without Lightning.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

__all__ = ["stop_with_parent"]

_PR_SET_PDEATHSIG = 1


def stop_with_parent(
    parent_pid: int, signum: int = signal.SIGTERM, *, poll_s: float = 1.0, use_prctl: bool = True
) -> bool:
    """Send ``signum`` to this process as soon as ``parent_pid`` (its parent) is gone.

    ``use_prctl=False``: the polling thread only (what other systems get).

    Returns:
        False when the parent is already gone (nothing is set up: the caller should stop now).
    """
    by_kernel = False
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            by_kernel = libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
        except (OSError, AttributeError):  # no prctl: the thread below does it
            pass
    if os.getppid() != parent_pid:  # it died before prctl took effect (we were re-parented)
        return False
    if by_kernel:
        return True
    watcher = threading.Thread(
        target=_watch,
        args=(parent_pid, int(signum), poll_s),
        name="arseg-parent-watch",
        daemon=True,
    )
    watcher.start()
    return True


def _watch(parent_pid: int, signum: int, poll_s: float) -> None:
    import time

    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os.kill(os.getpid(), signum)
