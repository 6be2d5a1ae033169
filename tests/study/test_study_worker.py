"""A study's worker: it stops with its study however the study ends, saving a checkpoint that
the study resumes, and is not recorded as finished."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from arseg.engine.config import load_config, merge_config, validate_config
from arseg.engine.dirlock import LOCK_NAME

# A study stand-in: it starts one study worker (its log to a file) and waits for it.
STUDY = """
import subprocess, sys
with open(sys.argv[2], "w") as log:
    worker = subprocess.Popen(
        [sys.executable, "-m", "arseg.study.worker", sys.argv[1]], stdout=log, stderr=log
    )
    print(worker.pid, flush=True)
    worker.wait()
"""


def _train_steps(run) -> list[int]:
    try:
        lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    except OSError:
        return []
    rows = [line.split(",") for line in lines if line.endswith("\n")]
    if not rows or "train/loss" not in rows[0]:
        return []
    step, loss = rows[0].index("step"), rows[0].index("train/loss")
    return [int(float(r[step])) for r in rows[1:] if len(r) == len(rows[0]) and r[loss]]


def _write_spec(tmp_path, run, config, overrides: list[str]):
    """The spec a study writes for run ``ce_seed1`` (its state file: ``ce_seed1.json``)."""
    cfg = validate_config(merge_config(load_config(config, overrides), {"run_dir": str(run)}))
    spec = tmp_path / "ce_seed1.spec.json"
    spec.write_text(
        json.dumps(
            {
                "name": "ce_seed1",
                "run_dir": str(run),
                "config": cfg,
                "split": "val",
                "data_root": None,
                "checkpoints": ["best", "last"],
                "state": str(tmp_path / "ce_seed1.json"),
            }
        )
    )
    return spec


def test_a_worker_whose_study_is_killed_stops_within_a_step(tmp_path, tiny_config) -> None:
    from arseg.engine import dirlock

    run = tmp_path / "ce" / "seed1"
    spec = _write_spec(
        tmp_path, run, tiny_config(), ["trainer.max_epochs=50", "data.num_workers=1"]
    )
    log = tmp_path / "worker.log"
    study = subprocess.Popen(
        [sys.executable, "-c", STUDY, str(spec), str(log)], stdout=subprocess.PIPE, text=True
    )
    worker = int(study.stdout.readline())
    try:
        deadline = time.time() + 120
        while len(_train_steps(run)) < 2 and time.time() < deadline:
            assert study.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        holder = json.loads((run / LOCK_NAME).read_text())
        assert holder["pid"] == worker and holder["parent_pid"] == study.pid
        logged = max(_train_steps(run))
        study.kill()  # SIGKILL: the worker is left alone
        study.wait()
        deadline = time.time() + 60
        while time.time() < deadline:  # its run is free once it has exited
            try:
                lock = dirlock.acquire(run)
            except dirlock.DirectoryBusyError:
                time.sleep(0.05)
                continue
            lock.release()
            break
        else:
            pytest.fail(
                f"the worker still runs 60 s after its study was killed:\n{log.read_text()}"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert logged < saved <= logged + 3, (logged, saved)  # within a step or two
    text = log.read_text()
    assert "SIGTERM received: saving a checkpoint after this step" in text
    assert "the study resumes it when run again" in text
    assert not (tmp_path / "ce_seed1.json").exists()  # not recorded as finished


def test_a_worker_stopped_outside_training_exits_143_unrecorded(tmp_path, tiny_config) -> None:
    """SIGTERM before training (here: while the worker waits for its run, held by what looks
    like an orphan of a killed study) is exit 143 with nothing recorded, as inside training:
    the status a cluster runner reads as a preemption (a default handler gave -15, and
    Lightning's exit 0 mid-evaluation)."""
    from arseg.engine import dirlock

    run = tmp_path / "ce" / "seed1"
    spec = _write_spec(tmp_path, run, tiny_config(), [])
    state = tmp_path / "ce_seed1.json"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a parent pid that no longer runs: the holder below looks orphaned
    with dirlock.held(run, record={"parent_pid": gone.pid}):
        worker = subprocess.Popen(
            [sys.executable, "-m", "arseg.study.worker", str(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout.readline().startswith("waiting: "), worker.stderr.read()
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
    assert worker.returncode == 128 + signal.SIGTERM, err
    assert "arseg: SIGTERM: stopped; the run is not recorded as finished" in err
    assert not state.exists()
