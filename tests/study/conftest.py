"""Fixtures of the study tests: the engine's tiny run configs and the analysis's fake runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ..analysis.conftest import write_fake_run
from ..engine.conftest import tiny_config, write_config

__all__ = ["arseg_process", "finish", "tiny_config", "write_config"]


def arseg_process(*args: str) -> subprocess.Popen:
    """``arseg ARGS`` in its own process group (so that it can be killed with its workers)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "arseg.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    """The output of :func:`arseg_process`'s command; a command past ``timeout`` is killed with
    its workers and fails the test."""
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # never leave workers training behind
        stdout, _ = proc.communicate()
        pytest.fail(f"arseg {proc.args[3]} did not finish in {timeout} s:\n{stdout}")
    return stdout


@pytest.fixture
def make_run():
    """The fake finished run of the analysis tests (:func:`write_fake_run`)."""
    return write_fake_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here with one BLAS thread (``one_thread`` of tests/conftest.py)."""
