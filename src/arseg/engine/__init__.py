"""arseg.engine: Lightning training, evaluation and inference driven by YAML configs.

Public API (used by :mod:`arseg.analysis` and by users):

* :func:`load_model` ``(ckpt_or_run_dir, map_location="cpu") -> (model in eval mode, config)``
* :func:`build_eval_dataset` ``(config, split="val") -> Dataset``
* :func:`predict_logits` ``(model, images, *, scales, flip, mode, window, stride) -> logits``
* :func:`load_config`, :func:`fit`, :func:`evaluate`, :class:`SegmentationModule`
"""

import importlib

# Imported on first use: ``arseg --help`` (which imports arseg.engine.cli) must not load Lightning.
_EXPORTS = {
    "CheckpointMismatchError": "checkpoint",
    "load_model": "checkpoint",
    "ConfigError": "config",
    "load_config": "config",
    "build_eval_dataset": "datamodule",
    "predict_logits": "inference",
    "SegmentationModule": "module",
    "RunDirError": "preflight",
    "evaluate": "evaluation",
    "fit": "train",
}

__all__ = [
    "CheckpointMismatchError",
    "ConfigError",
    "RunDirError",
    "SegmentationModule",
    "build_eval_dataset",
    "evaluate",
    "fit",
    "load_config",
    "load_model",
    "predict_logits",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"arseg.engine.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arseg.engine' has no attribute {name!r}")
