"""arseg: the Affinity Regression (AR) loss for semantic segmentation."""

__version__ = "0.1.0"

_LOSS_EXPORTS = {
    "AAFLoss",
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "DiceLoss",
    "LovaszSoftmaxLoss",
    "RMILoss",
    "aaf_loss",
    "ar_loss",
    "dice_loss",
    "label_affinity",
    "lovasz_softmax_loss",
    "rmi_loss",
    "sqrt_affinity",
}


def __getattr__(name: str):
    # imported on first use: `arseg --help` and `import arseg.cli` must not load torch
    if name in _LOSS_EXPORTS:
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module 'arseg' has no attribute {name!r}")


__all__ = [
    "AAFLoss",
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "DiceLoss",
    "LovaszSoftmaxLoss",
    "RMILoss",
    "__version__",
    "aaf_loss",
    "ar_loss",
    "dice_loss",
    "label_affinity",
    "lovasz_softmax_loss",
    "rmi_loss",
    "sqrt_affinity",
]
