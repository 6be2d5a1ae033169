"""The runner's progress lines: what is left is estimated from the jobs that will run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from arseg.study import runner as runner_module
from arseg.study.runner import Job, Runner

_NOW = [0.0]  # the fake clock: only a job's end moves it


class _InstantRunner(Runner):
    """Each job ends at its first poll, having taken 60 s of the fake clock."""

    def _start(self, job: Job, spec_path: Path, log_path: Path) -> Any:
        return job.name

    def _poll(self, handle: Any) -> int | None:
        _NOW[0] += 60.0
        return 0

    def _terminate(self, handles: list[Any]) -> None:
        pass


@pytest.fixture
def fake_clock(monkeypatch):
    _NOW[0] = 0.0
    monkeypatch.setattr(runner_module.time, "time", lambda: _NOW[0])
    monkeypatch.setattr(runner_module.time, "sleep", lambda _s: None)


def _lines_left(capsys) -> list[str]:
    return re.findall(r"about (.+?) left", capsys.readouterr().out)


def test_the_estimate_counts_the_jobs_that_will_run_not_those_finished_earlier(
    tmp_path, fake_clock, capsys
):
    # a study of 10 fine-tunes extended by a second arm (jobs 0 and 5, seed-major order):
    # the 8 runs finished earlier lie between and after the 2 that run, one at a time
    jobs = [Job(f"j{i}", "a", i, tmp_path / f"j{i}") for i in range(10)]
    runner = _InstantRunner(tmp_path, total=10, parallel=1, split="val", to_run=2)
    runner.run(jobs[0], {})
    for job in jobs[1:5]:
        runner.skip(job)
    runner.run(jobs[5], {})  # the first run is reaped: its progress line is printed
    for job in jobs[6:]:
        runner.skip(job)
    runner.wait()
    # after the first of 2 runs (60 s each): one left, about 1 min (not 60 s x 5 not reached)
    assert _lines_left(capsys) == ["1 min 00 s"]


def test_without_to_run_every_job_runs(tmp_path, fake_clock, capsys):
    jobs = [Job(f"a_seed{i}", "a", i, tmp_path / f"a_seed{i}") for i in range(3)]
    runner = _InstantRunner(tmp_path, total=3, parallel=1, split="val")
    for job in jobs:
        runner.run(job, {})
    runner.wait()
    assert _lines_left(capsys) == ["2 min 00 s", "1 min 00 s"]


def test_skipped_jobs_after_the_last_run_leave_no_estimate(tmp_path, fake_clock, capsys):
    # the runs to do come first; the finished ones after them are not "left"
    jobs = [Job(f"a_seed{i}", "a", i, tmp_path / f"a_seed{i}") for i in range(6)]
    runner = _InstantRunner(tmp_path, total=6, parallel=1, split="val", to_run=1)
    runner.run(jobs[0], {})
    runner.wait()
    for job in jobs[1:]:
        runner.skip(job)
    out = capsys.readouterr().out
    assert "left" not in out.split("\n")[0]
    assert "[  1/6] a_seed0: done in 1 min 00 s" in out
