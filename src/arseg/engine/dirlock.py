"""One process at a time in a run or study directory: an advisory lock on ``DIR/.arseg.lock``.

``arseg fit`` / ``finetune`` (also with ``--resume``), ``arseg eval`` writing into the run's own
``eval/``, ``arseg study`` (its study directory) and each study worker (its run directory) hold
the lock of the directory they write while they run. A second process gets one line, what holds
the directory (pid, host, command, since when) and what to do, and changes nothing on disk: the
lock is checked before anything in the directory is created, truncated or cleared.

The lock is ``fcntl.flock`` on the lock file: the kernel releases it when its process ends, however
it ends (SIGKILL, the OOM killer), so a crash never leaves a stale lock; the file itself stays
and only describes the last holder. The holder writes its pid, host, command and start time into
it for the message of the next process. Within one process the lock is re-entrant (a study worker
holds its run and then trains and evaluates it in-process). On a file system that refuses
``flock`` the directory is used without the lock, after a warning; on one that accepts it but
does not share it between machines (some network file systems), processes on different machines
do not see each other's locks (README, "Resume").

Torch-free: importable without Lightning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not a POSIX system: directories are used without a lock
    fcntl = None  # type: ignore[assignment]

from arseg.rundir import LOCK_NAME  # the lock file (never deleted: see the module doc)

__all__ = [
    "LOCK_NAME",
    "DirectoryBusyError",
    "DirectoryLock",
    "DirectoryLockError",
    "Guard",
    "acquire",
    "acquire_when_free",
    "held",
    "orphaned",
    "output_lock",
]


# flock errors of a file system without (working) locks, as opposed to "someone holds it"
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class DirectoryLockError(OSError):
    """A directory cannot be locked: it cannot be created or its lock file written."""


class DirectoryBusyError(DirectoryLockError):
    """Another process holds the directory; ``holder`` is what it recorded (may be empty)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass
class _Held:
    fd: int | None  # None: the file system refused flock, nothing is held
    pid: int
    count: int


_HELD: dict[str, _Held] = {}
_WARNED: set[str] = set()


def _forget_in_child() -> None:
    """A forked child (e.g. a data loader worker) drops its copies of the lock descriptors:
    flock locks belong to the open file, so a child still holding one after its parent was
    killed would keep the directory locked until it exits. Closing a copy keeps the parent's
    lock (LOCK_UN would not)."""
    for held in _HELD.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class DirectoryLock:
    """A reference to a held directory lock (from :func:`acquire`); :meth:`release` it once."""

    def __init__(self, key: str) -> None:
        self._key = key
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        held = _HELD.get(self._key)
        if held is None or held.pid != os.getpid():
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[self._key]
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(held.fd, 0)  # the record describes a holder only while it holds
                fcntl.flock(held.fd, fcntl.LOCK_UN)
            os.close(held.fd)


def acquire(
    directory: str | Path,
    *,
    create: bool = True,
    mkdir: bool = True,
    command: str | None = None,
    record: dict[str, Any] | None = None,
    hint: str = "",
) -> DirectoryLock | None:
    """Hold ``directory`` (exclusive, non-blocking) until the lock is released or the process ends.

    Args:
        create: create the lock file (and with ``mkdir`` the directory) if needed. With
            ``create=False`` a directory without a lock file is not touched and ``None`` is
            returned (a quick check before the real, creating acquisition).
        mkdir: with ``create``, also create a missing directory (else ``None`` is returned for
            it: a command that needs an existing directory says so itself).
        command: what the holder is doing, for the message of a second process (default: this
            process's command line).
        record: more holder fields written into the lock file.
        hint: appended to the advice of the busy message (e.g. ``"or evaluate into --out"``).

    Returns:
        The lock (``None`` where nothing is held: ``create=False`` and no lock file, or no
        ``fcntl``).

    Raises:
        DirectoryBusyError: another process holds it (its message is the one line to show).
        DirectoryLockError: the directory or its lock file cannot be created.
    """
    directory = Path(directory)
    key = os.path.realpath(directory)
    mine = _HELD.get(key)
    if mine is not None and mine.pid == os.getpid():  # re-entrant within this process
        mine.count += 1
        return DirectoryLock(key)
    if fcntl is None:
        return None
    path = directory / LOCK_NAME
    if (not create and not path.is_file()) or (not mkdir and not directory.is_dir()):
        return None
    for _attempt in range(5):
        if create:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DirectoryLockError(f"{directory} is not writable: {_reason(err)}") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
        except OSError as err:
            if not create:
                return None  # e.g. read-only: the creating acquisition says so
            raise DirectoryLockError(
                f"{directory} is not writable: {_reason(err)} (arseg keeps its lock file "
                f"{LOCK_NAME} there)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise DirectoryBusyError(busy_message(directory, holder, hint), holder) from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(fd)
                raise DirectoryLockError(f"cannot lock {path}: {_reason(err)}") from None
            os.close(fd)
            _warn_no_locks(directory, err)
            _HELD[key] = _Held(None, os.getpid(), 1)
            return DirectoryLock(key)
        try:  # the file may have been replaced since it was opened (its directory deleted)
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        _write(fd, command, record or {})
        _HELD[key] = _Held(fd, os.getpid(), 1)
        return DirectoryLock(key)
    raise DirectoryLockError(f"cannot lock {directory}: its lock file keeps being replaced")


def acquire_when_free(
    directory: str | Path,
    *,
    wait_if: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    notify: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> DirectoryLock | None:
    """:func:`acquire`, but while the holder is one that ``wait_if(holder record)`` says will end
    soon (e.g. :func:`orphaned`), wait for it, up to ``timeout_s``; ``notify`` gets the busy
    message once when the wait starts."""
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            return acquire(directory, **kwargs)
        except DirectoryBusyError as err:
            if time.monotonic() >= deadline or not wait_if(err.holder):
                raise
            if notify is not None and not told:
                notify(str(err))
                told = True
        time.sleep(0.5)


def orphaned(holder: dict[str, Any]) -> bool:
    """Whether a lock holder recorded a ``parent_pid`` (on this host) that is gone: an orphaned
    study worker, which stops by itself at its next step (:mod:`arseg.engine.parentwatch`)."""
    parent = holder.get("parent_pid")
    return (
        isinstance(parent, int)
        and holder.get("host") == socket.gethostname()
        and not _alive(parent)
    )


@contextlib.contextmanager
def held(directory: str | Path, **kwargs: Any) -> Iterator[DirectoryLock | None]:
    """``with held(DIR):`` -- :func:`acquire` for the block (same arguments)."""
    lock = acquire(directory, **kwargs)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


class Guard:
    """Holds a directory for a ``with`` block, in two steps.

    Entering checks the lock without creating anything (an existing directory held by another
    process is refused at once, before any work); :meth:`take` acquires it for real, creating the
    directory if needed, right before the first write. Leaving releases it. ``enabled=False``
    (e.g. a DDP process other than rank 0) does nothing.
    """

    def __init__(self, directory: str | Path, *, enabled: bool = True, **kwargs: Any) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self.kwargs = kwargs
        self._locks: list[DirectoryLock] = []
        self._taken = False

    def __enter__(self) -> Guard:
        if self.enabled:
            self._add(acquire(self.directory, create=False, **self.kwargs))
        return self

    def take(self, *, mkdir: bool = True) -> None:
        """Acquire the lock for real (``mkdir``: create a missing directory)."""
        if self.enabled and not self._taken:
            self._add(acquire(self.directory, create=True, mkdir=mkdir, **self.kwargs))
            self._taken = True

    def _add(self, lock: DirectoryLock | None) -> None:
        if lock is not None:
            self._locks.append(lock)

    def __exit__(self, *exc: Any) -> None:
        while self._locks:
            self._locks.pop().release()


def output_lock(
    run_dir: str | Path, out_dir: str | Path | None, **kwargs: Any
) -> contextlib.AbstractContextManager[Any]:
    """The lock an evaluation needs: ``run_dir``'s when it writes inside it (``out_dir`` None or
    inside ``run_dir``), none when it writes elsewhere. Paths are compared as given and resolved
    (a study's view of a read-only run is locked in the view, never in the run it links to)."""
    if out_dir is not None:
        run, out = Path(run_dir), Path(out_dir)
        inside = any(
            Path(o) == Path(r) or Path(r) in Path(o).parents
            for r, o in (
                (os.path.abspath(run), os.path.abspath(out)),
                (os.path.realpath(run), os.path.realpath(out)),
            )
        )
        if not inside:
            return contextlib.nullcontext()
    return held(run_dir, **kwargs)


def busy_message(directory: Path, holder: dict[str, Any], hint: str = "") -> str:
    """One line: who holds ``directory`` and what to do."""
    pid = holder.get("pid")
    if isinstance(pid, int):
        who = f"pid {pid}"
        host = holder.get("host")
        here = host in (None, socket.gethostname())
        if not here:
            who += f" on host {host}"
        if holder.get("command"):
            who += f", `{holder['command']}`"
        since = holder.get("since")
        if isinstance(since, (int, float)):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            who += f", since {stamp} ({_ago(time.time() - since)} ago)"
        if here and not _alive(pid):
            who += " (that process has ended; one it started still holds the lock)"
        stop = (
            f"stop it (`kill {pid}`{'' if here else f' on {host}'} lets training save a checkpoint)"
        )
    else:
        who = "a process that has not recorded itself yet"
        stop = "stop it"
    return (
        f"{directory} is in use by another arseg process: {who}; wait until it has finished or "
        f"{stop}, then run this command again{hint}. Nothing was changed"
    )


def _ago(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists
        return True
    return True


def _command_line() -> str:
    argv = list(sys.argv)
    if not argv:
        return "python"
    name = Path(argv[0]).name
    prog = "arseg" if name in ("arseg", "cli.py") or argv[0].endswith("arseg/cli.py") else name
    text = shlex.join([prog, *argv[1:]])
    return text if len(text) <= 300 else text[:297] + "..."


def _write(fd: int, command: str | None, record: dict[str, Any]) -> None:
    data = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or _command_line(),
        "since": time.time(),
        **record,
    }
    text = json.dumps(data).encode()
    try:  # informative only: a full disk must not stop the run here (it is checked later)
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _warn_no_locks(directory: Path, err: OSError) -> None:
    key = os.path.realpath(directory)
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(
        f"arseg: warning: {directory}: this file system does not support file locks "
        f"({_reason(err)}); arseg cannot keep a second process out of it: make sure only one "
        "process uses it at a time",
        file=sys.stderr,
        flush=True,
    )
