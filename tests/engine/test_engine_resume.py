"""A run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from arseg.cli import main

# 16 samples / batch 4 = 4 steps per epoch; 2 epochs; last.ckpt after every step.
ARGS = ["trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=1", "data.num_workers=1"]


def _weights(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"], ckpt["optimizer_states"][0]["state"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, tiny_config):
    cfg = tiny_config()
    reference = tmp_path / "reference"
    assert main(["fit", str(cfg), "--run-dir", str(reference), *ARGS]) == 0

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "arseg.cli", "fit", str(cfg), "--run-dir", str(run), *ARGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    try:
        while not last.exists():  # written atomically: it exists only when complete
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step, _, _ = _weights(run)
    assert step % 4 != 0, f"killed at step {step}, not mid-epoch"

    assert main(["fit", str(cfg), "--run-dir", str(run), "--resume", *ARGS]) == 0
    ref_step, ref_weights, ref_momentum = _weights(reference)
    got_step, weights, momentum = _weights(run)
    assert got_step == ref_step == 8
    assert weights.keys() == ref_weights.keys()
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    for key, value in ref_momentum.items():
        assert torch.equal(momentum[key]["momentum_buffer"], value["momentum_buffer"]), key

    # the log of the resumed run: every step once, with the uninterrupted run's values
    def train_rows(path):
        with open(path / "metrics.csv") as f:
            return [
                (int(r["step"]), float(r["train/loss"]))
                for r in csv.DictReader(f)
                if r["train/loss"]
            ]

    assert train_rows(run) == train_rows(reference)
    assert [s for s, _ in train_rows(run)] == list(range(8))
