"""``arseg fit | finetune | eval | predict | demo | config``: the engine's sub-commands."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["data_check_spec", "expected_errors", "fail", "register"]

_OVERRIDES_HELP = (
    "config overrides as dotted key=value pairs, e.g. optim.lr=0.02 trainer.max_epochs=10 "
    "model.options.decoder_channels=32 (values are YAML: 0.1, [12, 6], null, true); "
    "unknown keys are errors"
)


class _IntermixedMixin:
    """Allows ``KEY=VALUE`` overrides before and after options (``CONFIG --run-dir R a.b=1``)."""

    _intermixed = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def _add_parser(
    subparsers: argparse._SubParsersAction, name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    previous = subparsers._parser_class
    # on top of the class of the other sub-commands (arseg.cli's: one error prefix for all)
    subparsers._parser_class = type("IntermixedParser", (_IntermixedMixin, previous), {})
    try:
        return subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = previous


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run directory (default: the config's run_dir, else runs/<name>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir exactly from its checkpoints/last.ckpt",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the checkpoints and logs of an existing run directory (one without any "
        "checkpoint, a start that failed, is reused without it)",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue although the settings differ from the run's (they are "
        "listed; without this flag such a resume is refused)",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="devices per node for Lightning (an int, 'auto', or e.g. '0,1'); "
        ">1 uses DDP with SyncBatchNorm",
    )
    p.add_argument("--num-nodes", type=int, default=None, help="number of nodes (torchrun/SLURM)")
    p.add_argument("--accelerator", default=None, help="cpu, gpu, mps or auto")
    p.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp (default: auto)")
    p.add_argument(
        "--precision",
        default=None,
        help="32-true, bf16-mixed or 16-mixed (the AR loss always runs in float32)",
    )
    p.add_argument("--max-epochs", type=int, default=None, help="shortcut for trainer.max_epochs")
    p.add_argument("--max-steps", type=int, default=None, help="shortcut for trainer.max_steps")
    p.add_argument("--seed", type=int, default=None, help="shortcut for seed")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar, a line per epoch instead (the default when stdout is not a "
        "terminal)",
    )


def _parse_devices(value: str) -> Any:
    if value == "auto":
        return value
    try:
        if "," in value:
            return [int(v) for v in value.split(",") if v]
        return int(value)
    except ValueError:
        from .config import ConfigError

        raise ConfigError(
            f"--devices expects a number of devices, 'auto' or device ids like 0,1; got {value!r}"
        ) from None


def _config_from_args(
    args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    from .config import load_config, merge_config, parse_overrides

    overrides = parse_overrides(args.overrides)
    cli: dict[str, Any] = {"trainer": {}}
    if args.run_dir is not None:
        cli["run_dir"] = str(args.run_dir)
    if args.devices is not None:
        cli["trainer"]["devices"] = _parse_devices(args.devices)
    for attr, key in (
        ("num_nodes", "num_nodes"),
        ("accelerator", "accelerator"),
        ("strategy", "strategy"),
        ("precision", "precision"),
        ("max_epochs", "max_epochs"),
        ("max_steps", "max_steps"),
    ):
        if getattr(args, attr) is not None:
            cli["trainer"][key] = getattr(args, attr)
    if args.no_progress:
        cli["trainer"]["enable_progress_bar"] = False
    if args.seed is not None:
        cli["seed"] = args.seed
    if extra:
        cli.update(extra)
    cfg = load_config(args.config, overrides)
    from .config import validate_config

    return validate_config(merge_config(cfg, cli, source="command-line options"))


# torch re-raises an error of a DataLoader worker with the worker's whole traceback inside the
# message: "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback ...".
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback")


def _one_line(err: Exception) -> str:
    """The message of ``err`` without a loader worker's traceback (its last line: the error)."""
    text = str(err)
    if _WORKER_ERROR.match(text):
        lines = text.rstrip().splitlines()
        # the error message follows the last indented line (a frame) of the traceback
        tail = [i for i, line in enumerate(lines) if line.startswith(" ")]
        message = " ".join(lines[tail[-1] + 1 :] if tail else lines[-1:]).strip()
        text = re.sub(r"^[\w.]+: ", "", message, count=1) + " (in a data loader worker)"
    return text


def fail(err: Exception) -> int:
    """Print ``err`` as the one line ``arseg: error: ...`` on stderr; the exit status 2."""
    print(f"arseg: error: {_one_line(err)}", file=sys.stderr)
    return 2


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line (:func:`fail`), not as a traceback."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from .checkpoint import CheckpointMismatchError
    from .config import ConfigError
    from .dirlock import DirectoryLockError
    from .preflight import RunDirError

    # ValueError / TypeError cover the input checks of the datasets (DatasetError), models and
    # losses: their messages say what was expected and what came, so no traceback is shown.
    # MisconfigurationException: Lightning's refusal of trainer settings (e.g. a GPU it lacks).
    return (
        ConfigError,
        CheckpointMismatchError,
        RunDirError,
        DirectoryLockError,  # another process holds the directory: what holds it, what to do
        FileNotFoundError,
        ValueError,
        TypeError,
        MisconfigurationException,
    )


def _resume_command(args: argparse.Namespace, run_dir: str) -> str:
    """The command line that continues an interrupted run: this one, with --resume."""
    argv = [a for a in getattr(args, "argv", None) or [] if a not in ("--overwrite", "--resume")]
    if not argv:
        argv = [args.command, str(args.config)]
    if "--run-dir" not in argv and not any(a.startswith("--run-dir=") for a in argv):
        argv += ["--run-dir", run_dir]
    return shlex.join(["arseg", *argv, "--resume"])


def _cmd_fit(args: argparse.Namespace) -> int:
    from .train import TrainingInterrupted, fit

    if args.allow_changes and not args.resume:
        return fail(ValueError("--allow-changes goes with --resume"))
    try:
        extra = {"init_from": str(args.init_from)} if getattr(args, "init_from", None) else None
        cfg = _config_from_args(args, extra)
        if args.command == "finetune" and not cfg["init_from"]:
            raise FileNotFoundError("finetune needs --init-from CKPT (or init_from in the config)")
        summary = fit(
            cfg, resume=args.resume, overwrite=args.overwrite, allow_changes=args.allow_changes
        )
    except TrainingInterrupted as stop:
        print(
            f"arseg: {stop.signal_name}: stopped at step {stop.step}, checkpoint saved to "
            f"{stop.checkpoint}; continue with: {_resume_command(args, str(stop.run_dir))}",
            file=sys.stderr,
        )
        return stop.exit_code
    except expected_errors() as err:
        return fail(err)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return 0
    best = summary["best_miou"]
    print(
        f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f} s; best val mIoU "
        f"{best if best is None else f'{best:.4f}'}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_evaluation
    from .preflight import check_accelerator

    eval_over: dict[str, Any] = {}
    if args.scales is not None:
        eval_over["scales"] = args.scales
    if args.flip:
        eval_over["flip"] = True
    if args.mode is not None:
        eval_over["mode"] = args.mode
    if args.window is not None:
        eval_over["window"] = args.window
    if args.stride is not None:
        eval_over["stride"] = args.stride
    data_over: dict[str, Any] = {}
    if args.data_root is not None:
        data_over["root"] = str(args.data_root)
    if args.batch_size is not None:
        data_over["val_batch_size"] = args.batch_size
    if args.num_workers is not None:
        data_over["num_workers"] = args.num_workers
    try:
        check_accelerator(args.accelerator or "auto")  # one line, not Lightning's exception
        m = evaluate(
            args.run,
            split=args.split,
            checkpoint=args.checkpoint,
            out_dir=args.out,
            eval_overrides=eval_over,
            data_overrides=data_over,
            accelerator=args.accelerator or "auto",
            progress=not args.no_progress,
            boundary_ratio=args.boundary_ratio,
        )
    except expected_errors() as err:
        return fail(err)
    print(format_evaluation(m))
    print(f"wrote {m['eval_dir']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_paths
    from .preflight import check_accelerator

    try:
        check_accelerator(args.accelerator or "cpu")  # gpu without one: an error, no fallback
        written = predict_paths(
            args.checkpoint,
            args.inputs,
            args.out,
            scales=args.scales,
            flip=args.flip,
            accelerator=args.accelerator or "cpu",
        )
    except expected_errors() as err:
        return fail(err)
    print(f"wrote {len(written)} label PNGs and overlays to {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        run_demo(
            out=args.out,
            steps=args.steps,
            size=args.size,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except expected_errors() as err:
        return fail(err)
    return 0


def _cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from .config import DEFAULTS, load_config

    try:
        cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    except expected_errors() as err:
        return fail(err)
    if cfg is None:
        print("# every config key with its default (arseg.engine.config.DEFAULTS); the 'options'")
        print("# mappings take free keyword arguments of build_model / build_dataset")
    else:
        print(
            f"# {args.config or 'the defaults'} resolved"
            + (" with overrides" * bool(args.overrides))
        )
    print(yaml.safe_dump(cfg if cfg is not None else DEFAULTS, sort_keys=False), end="")
    return 0


def data_check_spec(config: str, root: str | None, split: str | None) -> dict[str, Any]:
    """The dataset a run of ``config`` reads for ``split`` (default: its training split), as
    ``build_dataset``'s arguments: what ``arseg data check CONFIG`` checks. ``root`` (relative to
    the current directory) replaces ``data.root``."""
    from .config import load_config
    from .datamodule import dataset_arguments

    cfg = load_config(config)
    if root is not None:
        cfg["data"]["root"] = str(Path(root).expanduser())
    split = split or cfg["data"]["train_split"]
    return dataset_arguments(cfg, split, training=split == cfg["data"]["train_split"])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fit``, ``finetune``, ``eval``, ``predict``, ``demo`` and ``config`` to the parser,
    and hand ``arseg data check`` the config reader (:func:`data_check_spec`)."""
    from arseg.data.cli import set_config_reader

    set_config_reader(data_check_spec)
    p = _add_parser(
        subparsers,
        "fit",
        help="train a model from a config",
        description="Train a model from an experiment config (Lightning: checkpoints best/last by "
        "val mIoU, CSV/TensorBoard logs, DDP with --devices N, --resume after an interruption).",
    )
    _add_run_options(p)
    p.set_defaults(func=_cmd_fit)

    p = _add_parser(
        subparsers,
        "finetune",
        help="fine-tune from a checkpoint's weights (fresh optimiser)",
        description="Start a run from the weights of another run's checkpoint (e.g. the CE "
        "baseline), with a fresh optimiser and LR schedule: the paper's CE+AR and CE-only stages.",
    )
    _add_run_options(p)
    p.add_argument(
        "--init-from",
        type=Path,
        required=True,
        help="checkpoint or run directory (its best.ckpt) whose weights start the run",
    )
    p.set_defaults(func=_cmd_fit)

    p = subparsers.add_parser(
        "eval",
        help="evaluate a run or checkpoint (mIoU, per-class IoU, pixel acc, AR loss)",
        description="Evaluate a run directory (its best.ckpt, or last.ckpt with --checkpoint "
        "last) or a checkpoint file on a split; writes metrics.json (mIoU, Boundary IoU, pixel "
        "acc, AR loss, per class), per_image_confusion.npy (n_images, C, C) and "
        "per_image_boundary.npy (n_images, 2, C) to RUN/eval/SPLIT (best) or RUN/eval/SPLIT-last.",
    )
    p.add_argument("run", type=Path, help="run directory or .ckpt file")
    p.add_argument(
        "--split", default=None, help="dataset split (default: the config's data.val_split)"
    )
    p.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default=None,
        help="checkpoint of a run directory (default: best, else last)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: RUN/eval/SPLIT, RUN/eval/SPLIT-last for the last checkpoint)",
    )
    p.add_argument(
        "--boundary-ratio",
        type=float,
        default=None,
        help="Boundary IoU band width as a fraction of the image diagonal (default 0.02)",
    )
    p.add_argument(
        "--scales",
        type=float,
        nargs="+",
        default=None,
        help="multi-scale inference, e.g. 0.5 0.75 1.0 1.25 1.5 1.75",
    )
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped images")
    p.add_argument(
        "--mode", choices=("whole", "slide"), default=None, help="whole image or sliding window"
    )
    p.add_argument(
        "--window", type=int, nargs=2, default=None, metavar=("H", "W"), help="sliding window size"
    )
    p.add_argument(
        "--stride",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="sliding window step (default 2/3 of the window)",
    )
    p.add_argument(
        "--data-root", type=Path, default=None, help="dataset root if it moved since training"
    )
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers")
    p.add_argument("--accelerator", default=None, help="cpu, gpu or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser(
        "predict",
        help="segment images: coloured label PNGs and overlays",
        description="Segment an image or every image in a folder with a checkpoint; writes "
        "<name>_label.png (class ids), <name>_color.png (palette) and <name>_overlay.png.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint or run directory")
    p.add_argument("inputs", type=Path, help="an image file or a folder of images")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--scales", type=float, nargs="+", default=(1.0,), help="inference scales")
    p.add_argument("--flip", action="store_true", help="also average flipped images")
    p.add_argument("--accelerator", default=None, help="cpu (default) or gpu")
    p.set_defaults(func=_cmd_predict)

    p = subparsers.add_parser(
        "demo",
        help="the embedded demo: CE baseline, then CE+AR vs CE-only fine-tunes (CPU, minutes)",
        description="Train a small LW-RefineNet-18 on synthetic scenes with CE, fine-tune it with "
        "CE + 0.1 AR and with CE alone for the same steps, print a table (mIoU, pixel accuracy, "
        "val AR loss) and write checkpoints, logs and prediction PNGs under --out. No downloads.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per stage (default: built-in)"
    )
    p.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default: built-in)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace run directories under --out that an earlier demo did not write",
    )
    p.set_defaults(func=_cmd_demo)

    p = subparsers.add_parser(
        "config",
        help="list the config keys and their defaults, or a config's resolved values",
        description="Inspect experiment configs.",
    )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    sub = p.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND")
    show = _add_parser(
        sub,
        "show",
        help="print every config key with its default, or CONFIG resolved (_base_ + overrides)",
        description="Without CONFIG: every valid config key and its default. With CONFIG (and "
        "KEY=VALUE overrides): the config as a run would use it, after _base_ inheritance.",
    )
    show.add_argument("config", type=Path, nargs="?", default=None, help="experiment YAML")
    show.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    show.set_defaults(func=_cmd_config_show)
