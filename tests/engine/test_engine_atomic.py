"""Atomic checkpoint writes: a process killed in the middle of a write leaves the previous
checkpoint loadable."""

from __future__ import annotations

import io
import os
import signal

import pytest
import torch

from arseg.engine.checkpoint import AtomicCheckpointIO, CheckpointMismatchError, load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")


def _die_while_writing(path) -> None:
    """In a forked child: write half of a new checkpoint's bytes, flush them to disk, SIGKILL
    itself. The kill lands inside the write, where no Python cleanup can run."""
    real_save = torch.save

    def save_half_then_die(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_half_then_die
    new = {"state_dict": {"w": torch.full((4096,), 2.0)}, "global_step": 2}
    AtomicCheckpointIO().save_checkpoint(new, path)
    os._exit(0)  # not reached


def test_kill_during_a_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt_io = AtomicCheckpointIO()
    ckpt_io.save_checkpoint({"state_dict": {"w": torch.ones(4096)}, "global_step": 1}, path)
    pid = os.fork()  # the parent has torch imported already: no interpreter start-up
    if pid == 0:
        try:
            _die_while_writing(path)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    # the killed write left its half-written temporary file behind ...
    partial = [p for p in path.parent.iterdir() if p != path]
    assert len(partial) == 1 and partial[0].name.endswith(".tmp")
    with pytest.raises(CheckpointMismatchError):
        load_checkpoint(partial[0])
    # ... and the previous checkpoint is intact
    ckpt = ckpt_io.load_checkpoint(path)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(4096))
    # the next write replaces it completely
    ckpt_io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 3}, path)
    assert load_checkpoint(path)["global_step"] == 3


def test_fit_writes_checkpoints_through_the_atomic_io(tmp_path, tiny_config, monkeypatch):
    from arseg.engine import checkpoint, fit, load_config

    written = []
    real = checkpoint.atomic_torch_save
    monkeypatch.setattr(
        checkpoint, "atomic_torch_save", lambda obj, p: (written.append(p.name), real(obj, p))
    )
    cfg = load_config(
        tiny_config(),
        {
            "run_dir": str(tmp_path / "run"),
            "trainer": {"limit_train_batches": 1, "limit_val_batches": 1},
        },
    )
    fit(cfg)
    assert {"best.ckpt", "last.ckpt"} <= set(written)
