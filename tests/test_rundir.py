"""The run-directory layout (arseg.rundir): one name for every path of a run."""

from __future__ import annotations

from pathlib import Path

from arseg import rundir
from arseg.rundir import RunDir, eval_dir_name


def test_paths_of_a_run() -> None:
    run = RunDir("runs/ar")
    assert run.path == Path("runs/ar")
    assert run.config == Path("runs/ar/config.yaml")
    assert run.metrics_csv == Path("runs/ar/metrics.csv")
    assert run.summary == Path("runs/ar/summary.json")
    assert run.provenance == Path("runs/ar/provenance.json")
    assert run.lock == Path("runs/ar/.arseg.lock")
    assert run.best_ckpt == Path("runs/ar/checkpoints/best.ckpt")
    assert run.last_ckpt == Path("runs/ar/checkpoints/last.ckpt")
    assert run.eval_dir("val") == Path("runs/ar/eval/val")
    assert run.eval_dir("test", "last") == Path("runs/ar/eval/test-last")
    assert run.eval_metrics("val", "last") == Path("runs/ar/eval/val-last/metrics.json")
    assert RunDir(Path("runs/ar")) == run


def test_run_of_a_checkpoint() -> None:
    assert RunDir.of_checkpoint("runs/ar/checkpoints/best.ckpt") == RunDir("runs/ar")
    assert RunDir.of_checkpoint("weights/model.ckpt") == RunDir("weights")


def test_one_name_for_each_place() -> None:
    from arseg.analysis import runs
    from arseg.engine import dirlock, train

    assert dirlock.LOCK_NAME == rundir.LOCK_NAME
    assert train.eval_dir_name is eval_dir_name
    assert runs.eval_dir_name is eval_dir_name


def test_rundir_is_torch_free() -> None:
    import subprocess
    import sys

    source = Path(rundir.__file__).read_text()
    assert "torch" not in source.split('"""', 2)[2]
    assert subprocess.run([sys.executable, "-c", "import arseg.rundir"]).returncode == 0


def test_write_json_is_strict_and_never_leaves_half_a_record(tmp_path: Path, monkeypatch) -> None:
    import json
    import os

    import pytest

    path = tmp_path / "metrics.json"
    rundir.write_json(path, {"miou": float("nan"), "per_class": (0.5, float("inf"))})
    assert json.loads(path.read_text()) == {"miou": None, "per_class": [0.5, None]}
    before = path.read_text()
    with pytest.raises(TypeError):  # not JSON: nothing written
        rundir.write_json(path, {"miou": 0.7, "bad": object()})

    def killed(*args):  # the process dies between writing the new record and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.write_json(path, {"miou": 0.7})
    monkeypatch.undo()
    assert path.read_text() == before  # the old record, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
    rundir.write_json(path, {"miou": 0.7})
    assert json.loads(path.read_text()) == {"miou": 0.7}
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # a normal file's mode
    link = tmp_path / "out.json"  # e.g. --json /dev/stdout: written through, the link kept
    link.symlink_to(path)
    rundir.write_json(link, {"miou": 0.8})
    assert link.is_symlink() and json.loads(path.read_text()) == {"miou": 0.8}


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
