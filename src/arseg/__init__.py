"""arseg: the Affinity Regression (AR) loss for semantic segmentation."""

__version__ = "0.1.0"

_LOSS_EXPORTS = {
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "ar_loss",
    "label_affinity",
    "sqrt_affinity",
}


def __getattr__(name: str):
    # imported on first use: `arseg --help` and `import arseg.cli` must not load torch
    if name in _LOSS_EXPORTS:
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'arseg' has no attribute {name!r}")


__all__ = [
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "__version__",
    "ar_loss",
    "label_affinity",
    "sqrt_affinity",
]
