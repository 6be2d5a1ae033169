"""Exclusive directories and workers that stop with their parent, with real second processes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from arseg.engine import dirlock

# A second process that holds a directory until its stdin closes (or it is killed).
HOLDER = textwrap.dedent(
    """
    import sys
    from arseg.engine import dirlock
    lock = dirlock.acquire(sys.argv[1], command="holder of the test", record={RECORD})
    print("held", flush=True)
    sys.stdin.read()
    """
)


def _hold(directory: Path, record: str = "{}") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.replace("{RECORD}", record), str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line == "held\n", proc.stderr.read()
    return proc


def _snapshot(directory: Path) -> list[tuple[str, int, bytes]]:
    return sorted(
        (str(p.relative_to(directory)), p.stat().st_mtime_ns, p.read_bytes())
        for p in directory.rglob("*")
        if p.is_file()
    )


def test_a_second_process_gets_one_line_and_the_lock_dies_with_its_holder(tmp_path) -> None:
    run = tmp_path / "run"
    holder = _hold(run)
    try:
        (run / "metrics.csv").write_text("step\n1\n")
        before = _snapshot(run)
        with pytest.raises(dirlock.DirectoryBusyError) as info:
            dirlock.acquire(run)
        message = str(info.value)
        assert "\n" not in message
        assert f"{run} is in use by another arseg process: pid {holder.pid}" in message
        assert "`holder of the test`" in message and "since " in message
        assert f"`kill {holder.pid}`" in message and "Nothing was changed" in message
        assert info.value.holder["host"] == socket.gethostname()
        assert _snapshot(run) == before  # the refused process changed nothing
        # the early check of a Guard refuses it too, before anything is created
        with pytest.raises(dirlock.DirectoryBusyError), dirlock.Guard(run):
            pass
    finally:
        holder.kill()  # SIGKILL: the kernel releases the lock, no stale lock is left
        holder.wait()
    lock = dirlock.acquire(run)
    assert lock is not None
    assert json.loads((run / dirlock.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert (run / dirlock.LOCK_NAME).read_text() == ""  # a record only while held


def test_the_lock_is_reentrant_within_a_process(tmp_path) -> None:
    run = tmp_path / "run"
    first = dirlock.acquire(run)
    second = dirlock.acquire(run)  # e.g. a study worker, then fit and eval in it
    first.release()
    probe = [
        sys.executable,
        "-c",
        f"from arseg.engine import dirlock; dirlock.acquire({str(run)!r})",
    ]
    refused = subprocess.run(probe, capture_output=True, text=True)
    assert refused.returncode != 0 and "DirectoryBusyError" in refused.stderr
    second.release()
    assert subprocess.run(probe, capture_output=True, text=True).returncode == 0


def test_a_guard_creates_nothing_before_it_takes_the_lock(tmp_path) -> None:
    run = tmp_path / "new"
    with dirlock.Guard(run) as guard:
        assert not run.exists()  # a start that fails here leaves nothing
        guard.take(mkdir=False)  # a resume: the directory must already exist
        assert not run.exists()
    with dirlock.Guard(run) as guard:
        guard.take()
        assert (run / dirlock.LOCK_NAME).is_file()
    with dirlock.Guard(run, enabled=False) as guard:  # a DDP process other than rank 0
        guard.take()
    assert dirlock.acquire(run) is not None


def test_an_evaluation_holds_the_run_only_when_it_writes_into_it(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold(run)
    try:
        with dirlock.output_lock(run, tmp_path / "elsewhere"):  # read-only for the run
            pass
        for out in (None, run / "eval" / "val"):
            with pytest.raises(dirlock.DirectoryBusyError), dirlock.output_lock(run, out):
                pass
    finally:
        holder.kill()
        holder.wait()
    # a study's view of a read-only run: the lock lives in the view, never in what it links to
    source = tmp_path / "given"
    (source / "checkpoints").mkdir(parents=True)
    view = tmp_path / "study" / "baseline"
    view.mkdir(parents=True)
    (view / "checkpoints").symlink_to(source / "checkpoints", target_is_directory=True)
    source.chmod(0o555)
    try:
        with dirlock.output_lock(view, view / "eval" / "val"):
            assert (view / dirlock.LOCK_NAME).is_file()
        assert not (source / dirlock.LOCK_NAME).exists()
    finally:
        source.chmod(0o755)


def test_a_file_system_without_locks_is_used_with_a_warning(tmp_path, monkeypatch, capsys):
    def refuse(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(dirlock.fcntl, "flock", refuse)
    lock = dirlock.acquire(tmp_path / "nfs")
    assert lock is not None
    err = capsys.readouterr().err
    assert "does not support file locks (No locks available)" in err
    assert "make sure only one process uses it at a time" in err
    lock.release()


def test_a_worker_waits_for_an_orphan_and_not_for_a_live_holder(tmp_path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a study that has ended
    run = tmp_path / "run"
    orphan = _hold(run, record=f"{{'parent_pid': {gone.pid}}}")
    told: list[str] = []
    try:
        assert dirlock.orphaned(json.loads((run / dirlock.LOCK_NAME).read_text()))
        # the orphan stops (releases the run) 1.5 s from now, while the worker waits for it
        threading.Timer(1.5, orphan.stdin.close).start()
        start = time.monotonic()
        lock = dirlock.acquire_when_free(
            run, wait_if=dirlock.orphaned, timeout_s=30, notify=told.append
        )
        assert lock is not None and time.monotonic() - start >= 1.0
        assert len(told) == 1 and f"pid {orphan.pid}" in told[0]
        lock.release()
    finally:
        orphan.kill()
        orphan.wait()
    live = _hold(run, record=f"{{'parent_pid': {os.getpid()}}}")  # its study is alive
    try:
        start = time.monotonic()
        with pytest.raises(dirlock.DirectoryBusyError):
            dirlock.acquire_when_free(run, wait_if=dirlock.orphaned, timeout_s=30)
        assert time.monotonic() - start < 5  # refused at once, not waited for
    finally:
        live.kill()
        live.wait()


# A parent that starts a child which stops with it (SIGTERM: it writes a file and exits).
PARENT = textwrap.dedent(
    """
    import subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
    print(child.pid, flush=True)
    child.wait()  # the child prints "ready" on the same stdout
    """
)
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from arseg.engine.parentwatch import stop_with_parent

    def on_term(signum, frame):
        Path(sys.argv[1]).write_text("SIGTERM")
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)
    assert stop_with_parent(os.getppid(), use_prctl=sys.argv[2] == "prctl")
    print("ready", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("how", ["prctl", "polling"])
def test_a_child_stops_when_its_parent_is_killed(tmp_path, how) -> None:
    marker = tmp_path / "stopped"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD, str(marker), how], stdout=subprocess.PIPE, text=True
    )
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline() == "ready\n"
    parent.kill()  # SIGKILL: nothing of the parent runs any more
    parent.wait()
    deadline = time.time() + 15
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert marker.read_text() == "SIGTERM"
    finally:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path) -> None:
    """A data loader worker forked by a training run must not hold the run once the run is
    killed (flock locks belong to the open file, which a fork shares)."""
    run = tmp_path / "run"
    code = textwrap.dedent(
        """
        import os, sys, time
        from arseg.engine import dirlock
        lock = dirlock.acquire(sys.argv[1])
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True
    )
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(dirlock.DirectoryBusyError):
            dirlock.acquire(run)
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child lives on ...
        lock = dirlock.acquire(run)  # ... and the run is free at once
        assert lock is not None
        lock.release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
