"""``evaluate``: a checkpoint (or a run's best or last) on a split, the engine of ``arseg eval``.

Writes ``metrics.json``, ``per_image_confusion.npy`` and ``per_image_boundary.npy`` into
``RUN/eval/<split>`` (best) or ``RUN/eval/<split>-<checkpoint>`` (:mod:`arseg.rundir`; the
layout in :mod:`arseg.engine.train`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from arseg import rundir
from arseg.rundir import RunDir

from .checkpoint import find_checkpoint, load_checkpoint, load_weights, model_state_dict
from .config import DEFAULTS, complete_config, merge_config, run_data_root, validate_config
from .datamodule import build_eval_dataset, build_eval_loader
from .dirlock import output_lock
from .metrics import BOUNDARY_RATIO, boundary_iou_from_counts
from .module import SegmentationModule
from .preflight import RunDirError

__all__ = ["evaluate", "format_evaluation"]


def format_evaluation(m: dict[str, Any]) -> str:
    """The lines ``arseg eval`` prints for the metrics :func:`evaluate` returns: the summary
    line, then IoU and Boundary IoU per class (``n/a`` where a class is absent)."""
    lines = [
        f"{m['split']} ({m['checkpoint_name']} checkpoint): mIoU {m['miou']:.4f}  Boundary IoU "
        f"{m['boundary_iou']:.4f}  pixel acc {m['pixel_acc']:.4f}  AR loss {m['val_ar']:.4f}"
        f"  ({m['num_images']} images)"
    ]
    width = max(len(c) for c in m["classes"])
    lines.append(f"  {'class':<{width}}  {'IoU':>6}  {'BIoU':>6}")
    for name in m["classes"]:
        iou, biou = m["iou_per_class"][name], m["boundary_iou_per_class"][name]
        cells = ("   n/a" if v != v else f"{v:.4f}" for v in (iou, biou))
        lines.append(f"  {name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def evaluate(
    ckpt_or_run_dir: str | Path,
    *,
    split: str | None = None,
    checkpoint: str | None = None,
    out_dir: str | Path | None = None,
    eval_overrides: dict[str, Any] | None = None,
    data_overrides: dict[str, Any] | None = None,
    accelerator: str = "auto",
    progress: bool = True,
    boundary_ratio: float | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a run's best or last) on a split; writes metrics.json and the
    per-image confusions and Boundary IoU counts (layout: the module docstring).

    Args:
        ckpt_or_run_dir: a run directory or a ``.ckpt`` file.
        split: dataset split (default: the config's ``data.val_split``).
        checkpoint: for a run directory, ``"best"`` (default; last.ckpt when the run has no
            best.ckpt) or ``"last"``.
        out_dir: where to write; default ``RUN/eval/<split>`` for the best checkpoint and
            ``RUN/eval/<split>-<name>`` for another one (RUN = the run directory, or the run
            that holds the checkpoint).
        eval_overrides: replaces keys of the config's ``eval`` section (scales, flip, mode, ...).
        data_overrides: replaces keys of the config's ``data`` section (root, eval_resize, ...).
        boundary_ratio: Boundary IoU band width as a fraction of the image diagonal (0.02).

    Returns:
        The metrics dict written to ``metrics.json``, and ``eval_dir``: the folder written.
    """
    if checkpoint not in (None, "best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if checkpoint is not None and not Path(ckpt_or_run_dir).is_dir():
        raise ValueError(
            f"--checkpoint {checkpoint} chooses a checkpoint of a run directory, but "
            f"{ckpt_or_run_dir} is not a directory"
        )
    if checkpoint == "last":
        path = RunDir(ckpt_or_run_dir).last_ckpt
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoints/last.ckpt in run directory {ckpt_or_run_dir}")
    else:
        path = find_checkpoint(ckpt_or_run_dir)
    ckpt = load_checkpoint(path)
    cfg = ckpt.get("arseg_config")
    if cfg is None:
        raise ValueError(f"{path} has no arseg config: it was not written by arseg")
    threads = torch.get_num_threads()
    # writing into the run's own eval/ holds the run directory (not an evaluation elsewhere)
    run_dir = Path(ckpt_or_run_dir)
    if not run_dir.is_dir():
        run_dir = RunDir.of_checkpoint(path).path
    lock = output_lock(run_dir, out_dir, hint=", or evaluate into another folder with --out")
    try:
        if cfg["trainer"].get("num_threads"):
            torch.set_num_threads(int(cfg["trainer"]["num_threads"]))
        with lock:
            return _evaluate(
                ckpt,
                path,
                cfg,
                ckpt_or_run_dir,
                split=split,
                out_dir=out_dir,
                eval_overrides=eval_overrides,
                data_overrides=data_overrides,
                accelerator=accelerator,
                progress=progress,
                boundary_ratio=BOUNDARY_RATIO if boundary_ratio is None else float(boundary_ratio),
            )
    finally:
        torch.set_num_threads(threads)


def _validate_eval_options(cfg: dict[str, Any]) -> None:
    """Check the evaluation settings of a stored config merged with the command line's.

    Only the ``eval`` section (what a command line changes at evaluation time) is checked: the
    rest was valid when the run was trained, and an older run is not refused because a check
    has been added since.
    """
    probe = copy.deepcopy(DEFAULTS)
    probe["eval"] = cfg["eval"]
    validate_config(probe)


def _evaluate(
    ckpt: dict[str, Any],
    path: Path,
    cfg: dict[str, Any],
    ckpt_or_run_dir: str | Path,
    *,
    split: str | None,
    out_dir: str | Path | None,
    eval_overrides: dict[str, Any] | None,
    data_overrides: dict[str, Any] | None,
    accelerator: str,
    progress: bool,
    boundary_ratio: float,
) -> dict[str, Any]:
    overrides = {"eval": eval_overrides or {}, "data": data_overrides or {}}
    cfg = merge_config(complete_config(cfg), overrides, source="the evaluation options")
    if "root" not in overrides["data"]:
        cfg["data"]["root"] = run_data_root(cfg["data"]["root"], path)
    _validate_eval_options(cfg)
    if not (math.isfinite(boundary_ratio) and boundary_ratio > 0):
        raise ValueError(f"the boundary ratio must be a positive number, got {boundary_ratio}")
    split = split or cfg["data"]["val_split"]
    if out_dir is None:
        base = Path(ckpt_or_run_dir)
        run = RunDir(base) if base.is_dir() else RunDir.of_checkpoint(path)
        out_dir = run.eval_dir(split, path.stem)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"cannot create the evaluation directory {out_dir}: {err.strerror or err}"
        ) from err

    dataset = build_eval_dataset(cfg, split=split)
    if int(dataset.num_classes) != int(cfg["model"]["num_classes"]):
        raise ValueError(
            f"{path} predicts {cfg['model']['num_classes']} classes but the {split} split of "
            f"'{cfg['data']['name']}' has {dataset.num_classes}"
        )
    module = SegmentationModule(cfg, class_names=tuple(dataset.classes))
    load_weights(module.model, model_state_dict(ckpt), path)
    module.boundary_ratio = boundary_ratio
    # images of different sizes are batched by size: `order` says where each row belongs
    loader, order = build_eval_loader(cfg, dataset)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        precision=cfg["trainer"]["precision"],
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    res = module.test_results
    confusions = (
        np.concatenate(module.test_confusions).astype(np.int64)
        if module.test_confusions
        else np.zeros((0, module.num_classes, module.num_classes), dtype=np.int64)
    )
    boundary = (
        np.concatenate(module.test_boundary).astype(np.int64)
        if module.test_boundary
        else np.zeros((0, 2, module.num_classes), dtype=np.int64)
    )
    if len(order) == confusions.shape[0] and order != sorted(order):  # back to dataset order
        position = np.argsort(np.asarray(order))
        confusions, boundary = confusions[position], boundary[position]
    b_scores = boundary_iou_from_counts(torch.from_numpy(boundary))
    metrics = {
        "miou": res["test/miou"],
        "pixel_acc": res["test/pixel_acc"],
        "val_ar": res["test/ar"],
        # the other loss terms of the run, on this split (e.g. val_lovasz)
        **{f"val_{name}": res[f"test/{name}"] for name in module.val_terms},
        "boundary_iou": float(b_scores["boundary_iou"]),
        "iou_per_class": {name: res[f"test/iou/{name}"] for name in module.class_names},
        "boundary_iou_per_class": dict(zip(module.class_names, b_scores["iou"].tolist())),
        "boundary_ratio": boundary_ratio,
        "classes": list(module.class_names),
        "num_images": int(confusions.shape[0]),
        "split": split,
        "checkpoint": str(path),
        "checkpoint_name": path.stem,
        "eval": cfg["eval"],
        "sample_names": [dataset.sample_name(i) for i in range(len(dataset))]
        if hasattr(dataset, "sample_name")
        else None,
    }
    np.save(out_dir / "per_image_confusion.npy", confusions)
    np.save(out_dir / "per_image_boundary.npy", boundary)
    rundir.write_json(out_dir / rundir.EVAL_METRICS, metrics)
    return {**metrics, "eval_dir": str(out_dir)}
