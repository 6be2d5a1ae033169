"""arseg.losses: the Affinity Regression (AR) loss, functional and ``nn.Module`` forms.

* :func:`ar_loss` / :class:`ARLoss`: the AR loss.
* :class:`CEARLoss`: cross-entropy + ``lambda_ar`` * AR, returning :class:`CEARLossOutput`.
* :func:`lambda_at`: ``lambda_ar`` decayed over a run (constant, linear, exp, poly).
* :func:`label_affinity`, :func:`sqrt_affinity`, :func:`prediction_affinity` (either kernel): the
  explicit N x N matrices (figures, tests).
"""

from .affinity import KERNELS, label_affinity, prediction_affinity, sqrt_affinity
from .functional import AUTO_EXPLICIT_MAX_POSITIONS, ar_loss
from .modules import ARLoss, CEARLoss, CEARLossOutput
from .sampling import cell_centre_indices, normalize_scales
from .schedule import LAMBDA_SCHEDULES, lambda_at

__all__ = [
    "AUTO_EXPLICIT_MAX_POSITIONS",
    "KERNELS",
    "LAMBDA_SCHEDULES",
    "ARLoss",
    "CEARLoss",
    "CEARLossOutput",
    "ar_loss",
    "cell_centre_indices",
    "label_affinity",
    "lambda_at",
    "normalize_scales",
    "prediction_affinity",
    "sqrt_affinity",
]
