"""``arseg study`` and ``arseg arena``: the commands (see :mod:`arseg.study` for what a study
does, :mod:`arseg.study.arena` for an arena)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _one_line_errors(run, *args, **kwargs) -> int:
    """``run(*args, **kwargs)``, with a study's and the engine's expected errors as one line."""
    from arseg.engine.cli import expected_errors, fail

    from .config import StudyError

    try:
        run(*args, **kwargs)
    except StudyError as err:
        return fail(err)
    except Exception as err:
        if isinstance(err, expected_errors()):
            return fail(err)
        raise
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .run import run_study

    return _one_line_errors(
        run_study, args.config, args.out, eval_split=args.eval_split, data_root=args.data_root
    )


def _cmd_arena(args: argparse.Namespace) -> int:
    from .arena_run import run_arena

    return _one_line_errors(
        run_arena,
        args.source,
        out=args.out,
        baseline=args.baseline,
        finetune=args.finetune,
        terms=args.terms,
        weights=args.weights,
        seeds=args.seeds,
        confirm_split=args.confirm_split,
        parallel=args.parallel,
        threads=args.threads,
        data_root=args.data_root,
    )


def _register_arena(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "arena",
        help="which structural loss, at which weight, helps here: every term x weight x seed "
        "against CE only, ranked",
        description="Fine-tune CE only and every structural loss term at every weight of its "
        "ladder from one CE peak, seed paired, as a study (resumable, locked, on a cluster "
        "with a YAML's cluster section), then rank each term's best weight by its mIoU gain "
        "over CE only (two-level bootstrap interval, seeds ahead, Boundary IoU, pixel accuracy, "
        "cost per step) and name the term to add, or none. Prints its plan and an estimate "
        "before the first run. Defaults: every term (ar, ar_bce, lovasz, rmi, aaf, dice) at "
        "ladders from the CamVid arena (ar 1,3,10; ar_bce, lovasz, dice 1,3; rmi, aaf 0.3,1), "
        "seeds 1-3. `arseg arena DIR` continues an arena; more --terms or --weights extend it.",
    )
    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        default=None,
        help="an arena YAML (per-term ladders, overrides, cluster), or an arena directory to "
        "continue or extend",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a run config (its CE peak is trained first) or a finished run (read only)",
    )
    p.add_argument(
        "--finetune", type=Path, default=None, help="the fine-tune recipe (a run config)"
    )
    p.add_argument("--out", type=Path, default=None, help="the arena directory")
    p.add_argument(
        "--terms",
        default=None,
        help="comma-separated terms: ar, ar_bce (AR with objective bce), lovasz, rmi, aaf, "
        "dice (default: all)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="one ladder for every term, e.g. 1,3,10 (default: each term's own ladder)",
    )
    p.add_argument("--seeds", default=None, help="seeds, e.g. 1,2,3 or 1-5 (default: 1-3)")
    p.add_argument(
        "--confirm-split",
        default=None,
        help="a split beyond val (e.g. test): each term's picked weight and CE only are "
        "evaluated there and the answer is stated on it",
    )
    p.add_argument("--parallel", type=int, default=None, help="fine-tunes side by side (1)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads in all (default: this machine's); a fine-tune gets threads // parallel",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="dataset root of the confirm split, if it lives elsewhere",
    )
    p.set_defaults(func=_cmd_arena)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``arseg study`` and ``arseg arena`` to the ``arseg`` parser."""
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
    _register_arena(subparsers)
