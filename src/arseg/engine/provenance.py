"""What produced a run: arseg version, git commit (in a checkout), torch version, threads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["provenance"]


@lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout that holds this arseg, or (None, None) when installed."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status)


def provenance(num_threads: int | None = None) -> dict[str, Any]:
    """A JSON-able record of the software and machine a run uses.

    ``git_dirty`` says whether ``src/`` held uncommitted changes to tracked files.
    """
    import torch

    from arseg import __version__

    commit, dirty = _git_state()
    return {
        "arseg_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "num_threads": int(num_threads if num_threads is not None else torch.get_num_threads()),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "command": sys.argv,
    }
