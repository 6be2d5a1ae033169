"""arseg: the Affinity Regression (AR) loss for semantic segmentation."""

from .losses import ARLoss, CEARLoss, CEARLossOutput, ar_loss, label_affinity, sqrt_affinity

__version__ = "0.1.0"

__all__ = [
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "__version__",
    "ar_loss",
    "label_affinity",
    "sqrt_affinity",
]
