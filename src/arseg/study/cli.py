"""``arseg study``: the command (see :mod:`arseg.study` for what a study does)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _cmd_study(args: argparse.Namespace) -> int:
    from arseg.engine.cli import expected_errors, fail

    from .config import StudyError
    from .run import run_study

    try:
        run_study(args.config, args.out, eval_split=args.eval_split, data_root=args.data_root)
    except StudyError as err:
        return fail(err)
    except Exception as err:
        if isinstance(err, expected_errors()):
            return fail(err)
        raise
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``arseg study`` to the ``arseg`` parser."""
    p = subparsers.add_parser(
        "study",
        help="the whole protocol: CE baseline, every arm x seed fine-tune, eval, compare, report",
        description="Run a study config (see configs/camvid/pretrained/study.yaml): the CE "
        "baseline, then every fine-tune arm for every seed from its best checkpoint, each run "
        "evaluated at its best and last checkpoints, then compare (every arm vs the control), "
        "trend and report. Resumable: run the same command again after a kill; a config with more "
        "seeds or arms extends the study. With a study "
        "directory and --eval-split, evaluates the finished runs on that split (no training).",
    )
    p.add_argument("config", type=Path, help="study config YAML, or the directory of a study")
    p.add_argument("--out", type=Path, default=None, help="study directory (runs, tables, report)")
    p.add_argument(
        "--eval-split",
        default=None,
        help="evaluate every run of a finished study on this split (no training)",
    )
    p.add_argument(
        "--data-root", default=None, help="dataset root for --eval-split (if it lives elsewhere)"
    )
    p.set_defaults(func=_cmd_study)
