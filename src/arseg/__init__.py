"""arseg: the Affinity Regression (AR) loss for semantic segmentation."""

__version__ = "0.1.0"
