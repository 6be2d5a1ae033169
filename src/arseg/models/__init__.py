"""arseg.models: the paper's segmentation networks behind a timm-like registry.

>>> from arseg.models import build_model, list_models
>>> "lwrefinenet50" in list_models()
True
"""

from . import efficientnet, icnet, lwrefinenet, pspnet  # noqa: F401  (registers the models)
from .base import SegmentationModel, SegmentationOutput, convert_sync_batchnorm
from .convert import (
    convert_lwrefinenet,
    convert_lwrefinenet_mbv2,
    convert_pspnet,
    load_reference_state_dict,
)
from .registry import build_model, is_model, list_models, register_model

__all__ = [
    "SegmentationModel",
    "SegmentationOutput",
    "build_model",
    "convert_lwrefinenet",
    "convert_lwrefinenet_mbv2",
    "convert_pspnet",
    "convert_sync_batchnorm",
    "is_model",
    "list_models",
    "load_reference_state_dict",
    "register_model",
]
