"""The ``arseg`` command line: one sub-command per task.

Each area of the package (data, engine, analysis) owns a ``cli`` module with a
``register(subparsers)`` function that adds its sub-commands; this file only
assembles them, so that ``arseg --help`` lists everything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# Modules that contribute sub-commands, in the order they appear in --help.
_COMMAND_MODULES = (
    "arseg.engine.cli",
    "arseg.study.cli",
    "arseg.analysis.cli",
    "arseg.data.cli",
    "arseg.losses.cli",
)


class ArsegParser(argparse.ArgumentParser):
    """argparse with one error prefix for every command: ``arseg: error: ...`` (exit status 2).

    Sub-command parsers inherit the class (argparse's default), so ``arseg fit --bad`` reads
    like ``arseg eval RUN --accelerator gpu`` without a GPU and like ``arseg data check x``.
    """

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"arseg: error: {message}\n")


def _module_exists(module_name: str) -> bool:
    """Whether ``arseg.x.cli`` exists, without importing its package (``arseg.losses`` loads
    torch): building the parser must stay fast."""
    parts = module_name.split(".")[1:]
    base = Path(__file__).resolve().parent.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def build_parser() -> argparse.ArgumentParser:
    """The ``arseg`` parser. Only argparse and the ``cli`` modules are imported (no torch,
    Lightning, matplotlib...): ``arseg --help`` and every ``--help`` stay fast."""
    from arseg import __version__

    parser = ArsegParser(
        prog="arseg",
        description="Affinity Regression (AR) loss for semantic segmentation: "
        "train, fine-tune, evaluate and analyse segmentation networks.",
    )
    parser.add_argument("--version", action="version", version=f"arseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        if not _module_exists(module_name):  # that area has no commands (yet)
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. for a "resume with" hint
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:  # an extra not installed: one line naming it
        from arseg._extras import missing_extra_message

        message = missing_extra_message(err, f"'arseg {args.command}'", args.func.__module__)
        if message is None:  # no extra provides that module: a bug, keep the traceback
            raise
        print(f"arseg: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `arseg compare ... | head`: the reader left, nothing is wrong
        # Python would report the failed flush of sys.stdout at exit: point it at devnull
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell tool killed by the signal reports


if __name__ == "__main__":
    sys.exit(main())
