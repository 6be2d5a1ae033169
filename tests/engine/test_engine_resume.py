"""A run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
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


@pytest.mark.parametrize("crash_at", ["first validation", "second epoch start"])
def test_resume_at_an_epoch_boundary_matches_uninterrupted(tmp_path, tiny_config, crash_at):
    """A crash between an epoch's last step checkpoint and its validation (Lightning restores that
    state as 'epoch done': the next epoch must run whole), or right after the end-of-epoch
    last.ckpt: either way the resumed run ends with the uninterrupted run's weights."""
    import lightning as L

    from arseg.engine.config import load_config
    from arseg.engine.train import fit

    class Crash(L.Callback):
        def on_validation_start(self, trainer, pl_module):
            if crash_at == "first validation":
                raise RuntimeError("simulated crash")

        def on_train_epoch_start(self, trainer, pl_module):
            if crash_at == "second epoch start" and trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    cfg = tiny_config()
    reference = tmp_path / "reference"
    assert main(["fit", str(cfg), "--run-dir", str(reference), *ARGS]) == 0
    run = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(load_config(cfg, [*ARGS, f"run_dir={run}"]), callbacks=[Crash()])
    assert _weights(run)[0] == 4  # the last step of epoch 0 was checkpointed
    assert main(["fit", str(cfg), "--run-dir", str(run), "--resume", *ARGS]) == 0
    ref_step, ref_weights, _ = _weights(reference)
    got_step, weights, _ = _weights(run)
    assert got_step == ref_step == 8
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key


def test_resume_log_repair_restores_the_row_lost_with_the_process(tmp_path):
    """Lightning checkpoints a step before its logger writes that step's row: a kill in between
    leaves the row only in the checkpoint, and a crash can cut the last CSV line short."""
    from arseg.engine.callbacks import truncate_metrics

    header = "epoch,lr,step,train/ar,train/ce,train/loss\n"
    (tmp_path / "metrics.csv").write_text(
        header + "0,0.01,0,0.5,1.5,1.5\n" + "0,0.009,1,0.4,1.3,1.3\n" + "0,0.008,2,0.4,1."
    )
    lost = {
        "step": 2.0,
        "epoch": 0.0,
        "train/loss": 1.25,
        "train/ce": 1.25,
        "train/ar": 0.375,
        "lr": 0.008,
    }
    truncate_metrics(tmp_path, {"global_step": 3, "arseg_last_train_row": lost})
    with open(tmp_path / "metrics.csv") as f:
        assert f.readline() == header  # sorted, as Lightning appends
        rows = list(csv.DictReader([header, *f]))
    assert [(int(r["step"]), float(r["train/loss"])) for r in rows] == [
        (0, 1.5),
        (1, 1.3),
        (2, 1.25),
    ]

    # resuming from an earlier checkpoint drops the steps the run will log again
    truncate_metrics(tmp_path, {"global_step": 1, "arseg_last_train_row": {**lost, "step": 0.0}})
    with open(tmp_path / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0]

    # an empty file (killed before the first flush) gets the header and the row
    (tmp_path / "metrics.csv").write_text("")
    truncate_metrics(tmp_path, {"global_step": 1, "arseg_last_train_row": {**lost, "step": 0.0}})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        header.strip(),
        "0,0.008,0,0.375,1.25,1.25",
    ]
