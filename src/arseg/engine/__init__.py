"""arseg.engine: Lightning training, evaluation and inference driven by YAML configs.

Public API (used by :mod:`arseg.analysis` and by users):

* :func:`load_model` ``(ckpt_or_run_dir, map_location="cpu") -> (model in eval mode, config)``
* :func:`build_eval_dataset` ``(config, split="val") -> Dataset``
* :func:`predict_logits` ``(model, images, *, scales, flip, mode, window, stride) -> logits``
* :func:`load_config`, :func:`fit`, :func:`evaluate`, :class:`SegmentationModule`
"""

from .checkpoint import CheckpointMismatchError, load_model
from .config import ConfigError, load_config
from .datamodule import build_eval_dataset
from .inference import predict_logits
from .module import SegmentationModule
from .train import RunDirError, evaluate, fit

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
