"""arseg.models: the paper's segmentation networks behind a timm-like registry.

>>> from arseg.models import build_model, list_models
>>> "lwrefinenet50" in list_models()
True
"""

from . import icnet, lwrefinenet, pspnet  # noqa: F401  (registers the models)
from .base import SegmentationModel, SegmentationOutput
from .registry import build_model, is_model, list_models, register_model

__all__ = [
    "SegmentationModel",
    "SegmentationOutput",
    "build_model",
    "is_model",
    "list_models",
    "register_model",
]
