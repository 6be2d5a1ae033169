"""One process per run directory: a second ``fit --resume``, ``--overwrite`` or ``eval`` into the
run is refused in one line while another process trains it, and changes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from arseg.analysis.records import check_metrics_csv
from arseg.cli import main
from arseg.engine.dirlock import LOCK_NAME

ARGS = ["trainer.max_epochs=3", "data.num_workers=0"]


def _stop_at(step: int):
    """A Lightning callback sending SIGTERM to its own process at a training step."""
    import lightning as L

    class Sender(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == step:
                os.kill(os.getpid(), signal.SIGTERM)

    return Sender()


def _last(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_a_second_resume_overwrite_or_eval_of_a_run_in_training_is_refused(
    tmp_path, tiny_config, capsys
) -> None:
    from arseg.engine.config import load_config
    from arseg.engine.train import TrainingInterrupted, fit

    cfg = tiny_config()
    reference = tmp_path / "reference"
    assert main(["fit", str(cfg), "--run-dir", str(reference), *ARGS]) == 0
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):  # stopped at step 5 (mid epoch 2), resumable
        fit(load_config(cfg, [*ARGS, f"run_dir={run}"]), callbacks=[_stop_at(4)])

    # process A resumes the run; it is frozen (SIGSTOP) once it holds the run directory
    cmd = [sys.executable, "-m", "arseg.cli", "fit", str(cfg), "--run-dir", str(run), "--resume"]
    a = subprocess.Popen([*cmd, *ARGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and a.poll() is None:
            text = (run / LOCK_NAME).read_text()
            if text and json.loads(text)["pid"] == a.pid:
                break
            time.sleep(0.05)
        assert a.poll() is None, a.communicate()[1][-2000:]
        a.send_signal(signal.SIGSTOP)
        capsys.readouterr()
        # B: the same resume, an --overwrite, an evaluation into the run: one line each
        for argv in (
            [*cmd, *ARGS],
            ["fit", str(cfg), "--run-dir", str(run), "--overwrite", *ARGS],
            ["eval", str(run), "--no-progress"],
        ):
            assert main(argv[3:] if argv[0] == sys.executable else argv) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"arseg: error: {run} is in use by another arseg process: ")
            assert f"pid {a.pid}, `arseg fit {cfg} --run-dir {run} --resume" in err
            assert "Nothing was changed" in err and len(err.splitlines()) == 1
        assert "evaluate into another folder with --out" in err
        # an evaluation written elsewhere only reads the run
        elsewhere = tmp_path / "elsewhere"
        assert main(["eval", str(run), "--out", str(elsewhere), "--no-progress"]) == 0
        assert (elsewhere / "metrics.json").is_file()
    finally:
        a.send_signal(signal.SIGCONT)
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err[-2000:]

    # A's run is what an uninterrupted run gives: nothing of B reached it
    step, weights = _last(run)
    ref_step, ref_weights = _last(reference)
    assert step == ref_step == 12
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    assert len(json.loads((run / "provenance.json").read_text())) == 2  # the start and A
    rows = check_metrics_csv(run / "metrics.csv")
    header = rows[0]
    steps = [int(r[header.index("step")]) for r in rows[1:] if r[header.index("train/loss")]]
    assert steps == list(range(12))
    assert not (run / "eval").exists()
