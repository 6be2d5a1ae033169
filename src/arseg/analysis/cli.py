"""Analysis sub-commands of ``arseg``: affinity, curves, trend, compare, report."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from arseg.rundir import CHECKPOINTS_DIR, write_json

__all__ = ["register"]


def _scales(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected grid sizes like '12,6', got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"grid sizes must be positive integers, got {text!r}")
    return values


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where the help text does not already give the default and
    there is one to show (no "(default: None)" after "(default: run/best, ...)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # identity, not ==: 0 == False, and a default of 0 is worth showing
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class OutputError(OSError):
    """An output file or folder cannot be written."""


def _fail(err: Exception) -> int:
    print(f"arseg: error: {err}", file=sys.stderr)  # the prefix of every arseg command
    return 2


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err)


def _check_output(path: str | Path | None, *, folder: bool = False) -> None:
    """Fail early, in one line, when ``path`` (a file, or a folder with ``folder``) cannot be
    written: before any table is printed or model loaded."""
    if not path:
        return
    path = Path(path)
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(
            f"cannot write {path}: cannot create {target}: {_os_reason(err)}"
        ) from None
    if not folder and path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    probe = target if folder or not path.exists() else path
    if not os.access(probe, os.W_OK):
        raise OutputError(f"cannot write {path}: {probe} is not writable")


def _write_json(path: str | None, data: object) -> None:
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_json(path, data)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {_os_reason(err)}") from None


def _save(fig, out: str | Path, formats: tuple[str, ...]) -> list[Path]:
    from arseg.analysis.figures import save_figure

    try:
        return save_figure(fig, out, formats)
    except OSError as err:
        raise OutputError(f"cannot write {out}: {_os_reason(err)}") from None


def _checkpoint_label(path: Path) -> str:
    """``run/best`` for ``run/checkpoints/best.ckpt``, the directory name for a run directory."""
    if path.suffix == ".ckpt":
        return (
            f"{path.parent.parent.name}/{path.stem}"
            if path.parent.name == CHECKPOINTS_DIR
            else path.stem
        )
    return path.name


# ----------------------------------------------------------------------- handlers
def _affinity(args: argparse.Namespace) -> int:
    from arseg.analysis.affinity import (
        affinity_figure,
        compute_affinity_panels,
        dataset_samples,
        load_models_and_dataset,
    )
    from arseg.analysis.runs import distinct_labels

    try:
        labels = distinct_labels(args.checkpoints, args.labels)
        _check_output(args.out)
    except (OutputError, ValueError) as err:
        return _fail(err)
    if args.labels is None:  # run/best, run/last ... where those differ, else path suffixes
        defaults = [_checkpoint_label(Path(c)) for c in args.checkpoints]
        labels = defaults if len(set(defaults)) == len(defaults) else labels
    try:
        models, _, dataset = load_models_and_dataset(
            args.checkpoints, split=args.split, data_root=args.data_root
        )
        samples = dataset_samples(dataset, args.images)
    except (OSError, ValueError, IndexError) as err:
        return _fail(err)
    ignore_index = int(getattr(dataset, "ignore_index", 255))
    panels = compute_affinity_panels(
        dict(zip(labels, models)), samples, scales=args.scales, ignore_index=ignore_index
    )
    for p in panels:
        losses = ", ".join(f"{m}: {v:.4f}" for m, v in p.ar_loss.items())
        print(f"{p.name}: AR loss {losses}")
    try:
        written = _save(
            affinity_figure(panels, scales=args.scales, show_grid=not args.no_grid),
            args.out,
            ("png",),
        )
    except OutputError as err:
        return _fail(err)
    print(f"wrote {written[0]}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from arseg.analysis.figures import plot_curves
    from arseg.analysis.runs import RunError, distinct_labels, load_run
    from arseg.analysis.trend import curve_data

    try:
        runs = [load_run(p) for p in args.runs]
        labels = distinct_labels(args.runs, args.labels)
        _check_output(args.out)
    except (RunError, OutputError, ValueError) as err:
        return _fail(err)
    curves = {}
    for label, run in zip(labels, runs):
        try:
            data = curve_data(run, miou_key=args.miou_key, ar_key=args.ar_key)
        except RunError as err:
            return _fail(err)
        if not data:
            print(
                f"warning: {run.path} logs neither {args.miou_key} nor {args.ar_key}",
                file=sys.stderr,
            )
        curves[label] = data
    try:
        written = _save(plot_curves(curves, smooth=args.smooth), args.out, ("png", "svg"))
    except OutputError as err:
        return _fail(err)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _trend(args: argparse.Namespace) -> int:
    from arseg.analysis.runs import RunError, load_run
    from arseg.analysis.trend import trend_of_run

    try:
        _check_output(args.json)
        run = load_run(args.run)
        start = load_run(args.start_from) if args.start_from else None
        report = trend_of_run(
            run, key=args.key, val_key=args.val_key, start_from=start, min_step=args.min_step
        )
    except (RunError, OutputError, ValueError) as err:
        return _fail(err)
    print(report.format())
    try:
        _write_json(args.json, report.as_dict())
    except OutputError as err:
        return _fail(err)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from arseg.analysis.compare import compare_runs, format_comparison
    from arseg.analysis.runs import RunError, distinct_labels, expand_run_group

    try:
        _check_output(args.json)  # before the (long) bootstrap and before any table is printed
        select = {"split": args.split, "checkpoint": args.checkpoint}
        runs_a = expand_run_group(args.run_a, **select)
        runs_b = expand_run_group(args.run_b, **select)
        # default names: the arms' folders, with parents where they are the same (ce/s0, ar/s0)
        names = distinct_labels([args.run_a.split(",")[0], args.run_b.split(",")[0]])
        cmp = compare_runs(
            runs_a,
            runs_b,
            n_boot=args.n_boot,
            level=args.level,
            seed=args.seed,
            label_a=args.label_a or names[0],
            label_b=args.label_b or names[1],
        )
    except (RunError, OutputError, ValueError) as err:
        return _fail(err)
    print(format_comparison(cmp, markdown=args.markdown))
    try:
        _write_json(args.json, cmp.as_dict())
    except OutputError as err:
        return _fail(err)
    return 0


def _report(args: argparse.Namespace) -> int:
    from arseg.analysis.report import build_report
    from arseg.analysis.runs import RunError, distinct_labels

    try:
        if args.labels is not None:
            distinct_labels(args.runs, args.labels)  # a clear error before any work
        _check_output(args.out, folder=True)
        paths = build_report(
            args.runs,
            args.out,
            labels=args.labels,
            title=args.title,
            num_images=args.num_images,
            split=args.split,
            images=not args.no_images,
            n_boot=args.n_boot,
            seed=args.seed,
            scales=args.scales,
            checkpoint=args.checkpoint,
            data_root=args.data_root,
        )
    except (RunError, OutputError, ValueError) as err:
        return _fail(err)
    except OSError as err:  # a figure or page that cannot be written after all (disk full)
        return _fail(OutputError(f"cannot write the report to {args.out}: {_os_reason(err)}"))
    print(f"wrote {paths.html} and {paths.markdown} ({len(paths.figures)} figures)")
    return 0


# ----------------------------------------------------------------------- parsers
def _add_eval_selection(p: argparse.ArgumentParser, *, images: bool = False) -> None:
    """``--split`` and ``--checkpoint``: which `arseg eval` results (RUN/eval/SPLIT[-last]) to read."""
    also = "; also the images of the heat maps and overlays" if images else ""
    p.add_argument(
        "--split",
        default=None,
        help=f"evaluation split read from RUN/eval/SPLIT (default: each run's data.val_split){also}",
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="read the evaluation of this checkpoint (`arseg eval RUN --checkpoint last` writes "
        f"RUN/eval/SPLIT-last){'; the heat maps use it too' if images else ''}",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``affinity``, ``curves``, ``trend``, ``compare`` and ``report`` to ``arseg``."""
    fmt = _HelpFormatter

    p = subparsers.add_parser(
        "affinity",
        formatter_class=fmt,
        help="heat maps of the label and square-root affinities (paper Figure 4)",
        description="For one or two checkpoints (e.g. baseline and +AR) and some validation "
        "images: the label affinity M, each model's square-root affinity A (one shared colour "
        "scale, 0 blue to 1 red, grey = ignored) and the per-image AR loss; writes a PNG.",
    )
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="checkpoint files or run directories (best.ckpt is used)",
    )
    p.add_argument(
        "--images",
        type=int,
        nargs="+",
        default=[0, 1],
        help="indices of the images in the evaluation split",
    )
    p.add_argument(
        "--split",
        default=None,
        help="dataset split (default: the first checkpoint's data.val_split)",
    )
    p.add_argument(
        "--data-root", default=None, help="dataset root if it moved since training (as for eval)"
    )
    p.add_argument(
        "--labels", nargs="+", help="names of the models (default: run/best, run/last, ...)"
    )
    p.add_argument("--scales", type=_scales, default=[12, 6], help="sampling grids, e.g. '12,6'")
    p.add_argument("--no-grid", action="store_true", help="do not draw the sampled points")
    p.add_argument("--out", "-o", default="affinity.png", help="output PNG")
    p.set_defaults(func=_affinity)

    p = subparsers.add_parser(
        "curves",
        formatter_class=fmt,
        help="val mIoU per epoch and AR loss per iteration of several runs (paper Figure 3)",
        description="Plot the validation mIoU per epoch and the AR loss per iteration of one or "
        "more runs on one figure (e.g. CE-only vs +AR fine-tunes); writes PNG and SVG.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument(
        "--labels", nargs="+", help="legend names (default: directory names, made distinct)"
    )
    p.add_argument("--miou-key", default="val/miou", help="metrics.csv column of the mIoU")
    p.add_argument("--ar-key", default="train/ar", help="metrics.csv column of the AR loss")
    p.add_argument(
        "--smooth",
        type=int,
        default=None,
        help="moving-average window of the AR loss (default: 1/20 of the points)",
    )
    p.add_argument(
        "--out", "-o", default="curves.png", help="output path; .png and .svg are written"
    )
    p.set_defaults(func=_curves)

    p = subparsers.add_parser(
        "trend",
        formatter_class=fmt,
        help="OLS of the AR loss against the iteration (paper Table 2)",
        description="Ordinary least squares of the per-iteration AR loss on the iteration over a "
        "(fine-tuning) run: Estimate, Std. Error, t value and Pr(>|t|) of intercept and slope "
        "(statsmodels), and the change of the validation AR loss from start to end in %.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--key", default="train/ar", help="metrics.csv column regressed on the step")
    p.add_argument("--val-key", default="val/ar", help="metrics.csv column of the val AR loss")
    p.add_argument(
        "--start-from",
        metavar="RUN",
        help="the baseline run it was fine-tuned from (default: the config's init_from): "
        "its val AR at that checkpoint is the start value",
    )
    p.add_argument("--min-step", type=int, default=None, help="leave out earlier steps")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_trend)

    p = subparsers.add_parser(
        "compare",
        formatter_class=fmt,
        help="is B better than A? paired bootstrap over images, per-class IoU, seeds",
        description="Compare two arms of evaluated runs (`arseg eval` first). Each arm is a run "
        "directory, a directory of run directories (one per seed) or a comma-separated list. "
        "Prints the mIoU difference B - A with a paired bootstrap interval over validation "
        "images, per-class IoU differences, and across seeds mean ± std and a paired t-test.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="reference arm (e.g. CE-only fine-tunes)")
    p.add_argument("run_b", metavar="RUN_B", help="other arm (e.g. CE + AR fine-tunes)")
    _add_eval_selection(p)
    p.add_argument("--label-a", help="name of arm A")
    p.add_argument("--label-b", help="name of arm B")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same result)")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    p.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    p.set_defaults(func=_compare)

    p = subparsers.add_parser(
        "report",
        formatter_class=fmt,
        help="one self-contained HTML page and a Markdown summary of some runs",
        description="Config, results table, per-class IoU, curves, AR trend, paired comparison "
        "against the first run, affinity heat maps and prediction overlays, as OUT/report.html "
        "(figures embedded) and OUT/report.md (+ OUT/figures/*.png).",
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories; the first is the reference"
    )
    p.add_argument("--out", "-o", default="report", help="output directory")
    p.add_argument(
        "--labels", nargs="+", help="display names (default: directory names, made distinct)"
    )
    p.add_argument("--title", default="arseg report", help="page title")
    p.add_argument("--num-images", type=int, default=3, help="images in heat maps and overlays")
    _add_eval_selection(p, images=True)
    p.add_argument(
        "--data-root",
        default=None,
        help="dataset root for heat maps and overlays if it moved since training (as for eval)",
    )
    p.add_argument(
        "--no-images", action="store_true", help="skip heat maps and overlays (no model loading)"
    )
    p.add_argument("--scales", type=_scales, default=[12, 6], help="AR sampling grids, e.g. '12,6'")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.set_defaults(func=_report)
