"""arseg.losses: the Affinity Regression (AR) loss and the structural losses it is compared with.

* :func:`ar_loss` / :class:`ARLoss`: the AR loss (``objective="mse"``, the paper, or ``"bce"``).
* :class:`CEARLoss`: cross-entropy + ``lambda_ar`` * AR, returning :class:`CEARLossOutput`.
* The peers, each a function and a module, on logits at the label size:
  :func:`lovasz_softmax_loss` / :class:`LovaszSoftmaxLoss` (Berman et al. 2018),
  :func:`rmi_loss` / :class:`RMILoss` (Zhao et al. 2019), :func:`aaf_loss` / :class:`AAFLoss`
  (Ke et al. 2018, fixed class weights), :func:`dice_loss` / :class:`DiceLoss` (soft Dice).
* :data:`LOSS_TERMS`, :func:`loss_term`, :func:`check_term_options`: the terms the engine can add
  to CE, with their options.
* :class:`CompositeLoss`: CE + any weighted set of those terms, the weights handed per call
  (the engine's objective), returning :class:`CompositeLossOutput`.
* :func:`lambda_at`: a term weight decayed over a run (constant, linear, exp, poly).
* :func:`label_affinity`, :func:`sqrt_affinity`, :func:`prediction_affinity` (either kernel): the
  explicit N x N matrices (figures, tests).
"""

from .aaf import AAFLoss, aaf_loss
from .affinity import KERNELS, label_affinity, prediction_affinity, sqrt_affinity
from .composite import CompositeLoss, CompositeLossOutput
from .dice import DiceLoss, dice_loss
from .functional import AUTO_EXPLICIT_MAX_POSITIONS, OBJECTIVES, ar_loss
from .lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from .modules import ARLoss, CEARLoss, CEARLossOutput
from .rmi import RMILoss, rmi_loss
from .sampling import cell_centre_indices, normalize_scales
from .schedule import LAMBDA_SCHEDULES, lambda_at
from .terms import LOSS_TERMS, LossTerm, check_term_options, loss_term

__all__ = [
    "AUTO_EXPLICIT_MAX_POSITIONS",
    "KERNELS",
    "LAMBDA_SCHEDULES",
    "LOSS_TERMS",
    "OBJECTIVES",
    "AAFLoss",
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "CompositeLoss",
    "CompositeLossOutput",
    "DiceLoss",
    "LossTerm",
    "LovaszSoftmaxLoss",
    "RMILoss",
    "aaf_loss",
    "ar_loss",
    "cell_centre_indices",
    "check_term_options",
    "dice_loss",
    "label_affinity",
    "lambda_at",
    "loss_term",
    "lovasz_softmax_loss",
    "normalize_scales",
    "prediction_affinity",
    "rmi_loss",
    "sqrt_affinity",
]
