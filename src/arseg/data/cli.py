"""``arseg data ...``: prepare official dataset files once, list and check datasets.

Examples::

    arseg data prepare nyuv2 --mat nyu_depth_v2_labeled.mat --splits splits.mat \\
        --mapping classMapping40.mat --out data/nyuv2
    arseg data check camvid --root ../shared/data/camvid --split val
    arseg data check configs/stanford_background/baseline.yaml --split val --out check.png
    arseg data list

``arseg data check CONFIG.yaml`` checks the data section of a run config exactly as a run
resolves it (``_base_`` files, defaults, a relative root): reading configs is the engine's
(floor 2), so the engine's command module hands its reader to this one
(:func:`set_config_reader`) and the data floor never imports it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Names for --help only (building the parser must not import the datasets: torch); the
# registry checks the name and lists the valid ones when it is wrong.
_DATASET_NAMES = "camvid, cityscapes, folder, nyuv2, synthetic"

# (config path, root or None, split or None) -> {"name", "root", "split", "options"}: set by
# arseg.engine.cli when it registers its commands.
_config_reader: Callable[[str, str | None, str | None], dict[str, Any]] | None = None


def set_config_reader(reader: Callable[[str, str | None, str | None], dict[str, Any]]) -> None:
    """Let ``arseg data check CONFIG`` read run configs with ``reader``: ``(config path, root
    or None, split or None) -> {"name", "root", "split", "options"}``, the arguments of
    :func:`arseg.data.build_dataset` for the split a run of that config reads."""
    global _config_reader
    _config_reader = reader


def _fail(err: Exception) -> int:
    print(f"arseg: error: {err}", file=sys.stderr)
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its sub-commands to the ``arseg`` parser."""
    data = subparsers.add_parser("data", help="prepare, list and check datasets")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    prepare = sub.add_parser("prepare", help="convert official dataset files once")
    prepare.set_defaults(func=lambda args: (prepare.print_help(), 2)[1])
    prepare_sub = prepare.add_subparsers(dest="dataset", metavar="DATASET")
    nyu = prepare_sub.add_parser(
        "nyuv2",
        help="NYUv2-40 from the official .mat files",
        description="Write PNG images, 40-class labels (0..39, unlabelled = 255) and the "
        "train.nyu / val.nyu lists (795 / 654 images) from the official NYUv2 files.",
    )
    nyu.add_argument("--mat", required=True, help="nyu_depth_v2_labeled.mat (MATLAB v7.3)")
    nyu.add_argument("--splits", required=True, help="splits.mat (trainNdxs, testNdxs)")
    nyu.add_argument("--mapping", required=True, help="classMapping40.mat (mapClass)")
    nyu.add_argument("--out", required=True, help="output folder (the dataset root)")
    nyu.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    nyu.set_defaults(func=_prepare_nyuv2)

    lister = sub.add_parser("list", help="list the dataset names")
    lister.set_defaults(func=_list)

    check = sub.add_parser(
        "check",
        help="read every sample of a split, report sizes and classes, draw a few",
        description="Decode every image and mask of a split (of a dataset by name, or of the "
        "data section of a run config, exactly as the run reads it), checking files, sizes and "
        "label values; print the image count, the size histogram and each class's pixel share "
        "and image count, and write a picture of a few images with their masks overlaid. Exit "
        "status 1 with one line naming the file at the first problem.",
    )
    check.add_argument(
        "name",
        metavar="NAME|CONFIG",
        help=f"a dataset name ({_DATASET_NAMES}) or a run config (.yaml)",
    )
    check.add_argument(
        "--root", default=None, help="dataset folder (with a config: replaces data.root)"
    )
    check.add_argument(
        "--split",
        default=None,
        help="the split to read (default: train, or a config's data.train_split)",
    )
    check.add_argument(
        "--out",
        default=None,
        help="the picture (PNG; default: data_check_<name>_<split>.png in the current "
        "directory); never inside the data folder",
    )
    check.add_argument("--no-picture", action="store_true", help="write no picture")
    check.set_defaults(func=_check)


def _prepare_nyuv2(args: argparse.Namespace) -> int:
    from .base import DatasetError
    from .nyuv2 import prepare_nyuv2

    try:
        counts = prepare_nyuv2(
            args.mat, args.splits, args.mapping, args.out, progress=not args.no_progress
        )
    except (FileNotFoundError, DatasetError) as err:
        return _fail(err)
    print(f"wrote {counts['train']} train and {counts['val']} val samples to {args.out}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .registry import list_datasets

    print("\n".join(list_datasets()))
    return 0


def _is_config(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or Path(name).is_file()


def _check(args: argparse.Namespace) -> int:
    from .base import DatasetError
    from .check import check_split, format_report, write_picture
    from .registry import build_dataset

    try:
        if _is_config(args.name):
            if _config_reader is None:
                raise ValueError(
                    f"reading the config {args.name} needs arseg's engine (pip install 'arseg[train]')"
                )
            spec = _config_reader(args.name, args.root, args.split)
            label = Path(args.name).stem
        else:
            spec = {"name": args.name, "root": args.root, "split": args.split or "train"}
            spec["options"], label = {}, args.name
        dataset = build_dataset(
            spec["name"], root=spec["root"], split=spec["split"], **spec["options"]
        )
        out = None
        if not args.no_picture:
            out = Path(args.out or f"data_check_{label}_{spec['split']}.png").expanduser()
            # the root, and the image and mask folders where a layout puts them elsewhere
            for attr in ("root", "img_dir", "ann_dir"):
                folder = getattr(dataset, attr, None)
                if folder is not None and out.resolve().is_relative_to(Path(folder).resolve()):
                    raise ValueError(
                        f"the picture {out} would be written into the data folder {folder}: "
                        "give --out a path outside it"
                    )
        report = check_split(dataset, progress=sys.stderr.isatty())
    except (FileNotFoundError, DatasetError, ValueError, TypeError) as err:
        return _fail(err)
    title = f"{spec['name']} {spec['split']}"
    if label != args.name:  # a config
        title = f"{args.name}: {title}"
    where = [f"root {dataset.root}"] if getattr(dataset, "root", None) is not None else []
    if getattr(dataset, "list_file", None) is not None:
        where.append(f"names from {dataset.list_file}")
    elif getattr(dataset, "img_dir", None) is not None:
        where.append(f"every image of {dataset.img_dir}")
    print(format_report(report, title, ["; ".join(where)] if where else []))
    if out is not None:
        names = [_sample_name(dataset, i) for i, _, _ in report.samples]
        try:
            write_picture(report, out, getattr(dataset, "palette", None), names, title)
        except OSError as err:
            return _fail(OSError(f"cannot write the picture {out}: {err.strerror or err}"))
        print(f"picture: {out}")
    return 0


def _sample_name(dataset: Any, index: int) -> str:
    name = getattr(dataset, "sample_name", None)
    return name(index) if name is not None else f"#{index}"
