"""The ``arseg`` command line: one sub-command per task.

Each area of the package (data, engine, analysis) owns a ``cli`` module with a
``register(subparsers)`` function that adds its sub-commands; this file only
assembles them, so that ``arseg --help`` lists everything.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute sub-commands, in the order they appear in --help.
_COMMAND_MODULES = ("arseg.engine.cli", "arseg.analysis.cli", "arseg.data.cli", "arseg.losses.cli")


def build_parser() -> argparse.ArgumentParser:
    from arseg import __version__

    parser = argparse.ArgumentParser(
        prog="arseg",
        description="Affinity Regression (AR) loss for semantic segmentation: "
        "train, fine-tune, evaluate and analyse segmentation networks.",
    )
    parser.add_argument("--version", action="version", version=f"arseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # that area has no commands (yet)
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
