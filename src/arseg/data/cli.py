"""``arseg data ...``: prepare official dataset files once, list and check datasets.

Examples::

    arseg data prepare nyuv2 --mat nyu_depth_v2_labeled.mat --splits splits.mat \\
        --mapping classMapping40.mat --out data/nyuv2
    arseg data check camvid --root ../shared/data/camvid --split val
    arseg data list
"""

from __future__ import annotations

import argparse
import sys
import time

# Names for --help only (building the parser must not import the datasets: torch); the
# registry checks the name and lists the valid ones when it is wrong.
_DATASET_NAMES = "camvid, cityscapes, nyuv2, synthetic"


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
        help="read every sample of a dataset split and report class frequencies",
        description="Decode every image and label of a split, checking sizes and label "
        "values; print the pixel share of each class. Exit status 1 on the first bad file.",
    )
    check.add_argument("name", help=f"dataset name ({_DATASET_NAMES})")
    check.add_argument("--root", default=None, help="dataset folder (not for synthetic)")
    check.add_argument("--split", default="train")
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


def _check(args: argparse.Namespace) -> int:
    import numpy as np

    from .base import DatasetError
    from .registry import build_dataset

    try:
        ds = build_dataset(args.name, root=args.root, split=args.split)
        counts = np.zeros(256, dtype=np.int64)
        start = time.perf_counter()
        for i in range(len(ds)):
            _, target = ds.load(i)
            counts += np.bincount(target.ravel(), minlength=256)
        elapsed = time.perf_counter() - start
    except (FileNotFoundError, DatasetError, ValueError) as err:
        return _fail(err)
    total = max(int(counts.sum()), 1)
    print(f"{args.name} {args.split}: {len(ds)} samples OK, read in {elapsed:.1f} s")
    for c, name in enumerate(ds.classes):
        print(f"  {c:3d} {name:<20s} {100 * counts[c] / total:6.2f} %")
    print(f"  255 {'(ignored)':<20s} {100 * counts[255] / total:6.2f} %")
    return 0
