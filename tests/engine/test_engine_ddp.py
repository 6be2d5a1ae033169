"""DDP on CPU (2 gloo processes): validation metrics synced over processes equal one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from arseg.engine import evaluate


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_ddp_two_cpu_processes_report_the_single_process_miou(tmp_path, tiny_config):
    cfg = tiny_config()
    run = tmp_path / "ddp"
    # 7 validation images over 2 processes: uneven shards (4 + 3), no padding or duplicates.
    cmd = [
        sys.executable,
        "-m",
        "arseg.cli",
        "fit",
        str(cfg),
        "--run-dir",
        str(run),
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--strategy",
        "ddp",
        "trainer.max_epochs=1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2  # 16 samples, batch 4 per process, 2 processes

    single = evaluate(run, progress=False, accelerator="cpu")  # one process, same weights & data
    assert single["num_images"] == 7
    assert summary["final"]["val/miou"] == pytest.approx(single["miou"], abs=1e-6)
    assert summary["final"]["val/pixel_acc"] == pytest.approx(single["pixel_acc"], abs=1e-6)
    assert summary["final"]["val/ar"] == pytest.approx(single["val_ar"], rel=1e-5)


def test_more_processes_than_validation_samples_is_a_clear_error(tiny_config, monkeypatch):
    from arseg.engine import datamodule as dm
    from arseg.engine.config import load_config

    data = dm.SeedDataModule(load_config(tiny_config()))  # 7 validation samples
    data.setup("fit")
    monkeypatch.setattr(dm, "_dist_info", lambda trainer: (0, 8))
    with pytest.raises(ValueError, match="7 samples for 8 processes"):
        data.val_dataloader()
    monkeypatch.setattr(dm, "_dist_info", lambda trainer: (6, 7))
    assert len(data.val_dataloader().sampler) == 1
