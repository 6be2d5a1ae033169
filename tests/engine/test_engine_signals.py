"""SIGTERM / SIGINT during ``arseg fit``: a resumable checkpoint at the next step, a non-zero exit
with the command that continues, and the resumed run ends with the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from arseg.cli import main

# 16 samples / batch 4 = 4 steps per epoch; 2 epochs; no periodic checkpoint: only the signal
# (or an epoch's end) writes last.ckpt.
ARGS = ["trainer.max_epochs=2", "data.num_workers=1"]


def _state(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"], ckpt["optimizer_states"][0]["state"]


class _SignalAtStep:
    """A Lightning callback that sends ``signum`` to its own process at training step ``step``
    (a deterministic stand-in for a signal arriving from outside mid-step)."""

    def __new__(cls, signum: int, step: int):
        import lightning as L

        class Sender(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signum)

        return Sender()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_the_resumed_run_matches(tmp_path, tiny_config, signum):
    from arseg.engine.config import load_config
    from arseg.engine.train import TrainingInterrupted, fit

    cfg = tiny_config()
    reference = tmp_path / "reference"
    assert main(["fit", str(cfg), "--run-dir", str(reference), *ARGS]) == 0

    run = tmp_path / "stopped"
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        fit(load_config(cfg, [*ARGS, f"run_dir={run}"]), callbacks=[_SignalAtStep(signum, 2)])
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stop = info.value
    assert stop.step == 3 and stop.exit_code == 128 + signum  # the step in flight completed
    assert _state(run)[0] == 3  # mid-epoch: no epoch-end checkpoint was due

    assert main(["fit", str(cfg), "--run-dir", str(run), "--resume", *ARGS]) == 0
    ref_step, ref_weights, ref_momentum = _state(reference)
    step, weights, momentum = _state(run)
    assert step == ref_step == 8
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    for key, value in ref_momentum.items():
        assert torch.equal(momentum[key]["momentum_buffer"], value["momentum_buffer"]), key


@pytest.mark.slow
def test_sigterm_from_outside_exits_non_zero_with_the_resume_command(tmp_path, tiny_config):
    cfg = tiny_config()
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "arseg.cli", "fit", str(cfg), "--run-dir", str(run), *ARGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the first epoch's progress line: training is under way
            if line.startswith("epoch 1"):
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "--resume" in err.splitlines()[-1] and str(run) in err.splitlines()[-1]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert main(["fit", str(cfg), "--run-dir", str(run), "--resume", *ARGS]) == 0
    assert _state(run)[0] == 8


def test_the_cli_prints_the_resume_command_and_exits_with_the_signal_status(
    tmp_path, tiny_config, capsys, monkeypatch
):
    from arseg.engine import train

    run = tmp_path / "run"

    def interrupted(cfg, **kwargs):
        raise train.TrainingInterrupted("SIGTERM", 15, 3, run / "checkpoints" / "last.ckpt")

    monkeypatch.setattr(train, "fit", interrupted)
    cfg = str(tiny_config())
    assert main(["fit", cfg, "--run-dir", str(run), "optim.lr=0.02", "--overwrite"]) == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("arseg: SIGTERM: stopped at step 3")
    assert line.endswith(f"arseg fit {cfg} --run-dir {run} optim.lr=0.02 --resume")
