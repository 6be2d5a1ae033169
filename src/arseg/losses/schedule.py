"""Schedules of the AR weight ``lambda_ar`` over a run (an ablation knob; the paper keeps it 0.1).

Each is a pure function of the step, so a resumed run gets the same value at the same step.
With ``t = step / total_steps`` in [0, 1] and ``r`` the final ratio:

* ``"constant"``: ``lambda``;
* ``"linear"``:   ``lambda * (1 - (1 - r) t)``;
* ``"exp"``:      ``lambda * r ** t`` (exponential decay, as AAF uses for its affinity loss;
  ``r > 0``);
* ``"poly"``:     ``lambda * (r + (1 - r) (1 - t) ** power)``.

All start at ``lambda`` (t = 0) and end at ``r * lambda`` (t = 1).
"""

from __future__ import annotations

import math

__all__ = ["LAMBDA_SCHEDULES", "check_lambda_schedule", "lambda_at"]

LAMBDA_SCHEDULES = ("constant", "linear", "exp", "poly")


def check_lambda_schedule(schedule: object, final_ratio: object, power: object = 0.9) -> None:
    """Raise ``ValueError`` for an unknown schedule, a ratio outside [0, 1] (exp: (0, 1]) or a
    power <= 0."""
    if schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"lambda schedule must be one of {LAMBDA_SCHEDULES}, got {schedule!r}")
    if isinstance(final_ratio, bool) or not isinstance(final_ratio, (int, float)):
        raise ValueError(f"lambda final ratio must be a number in [0, 1], got {final_ratio!r}")
    low_ok = final_ratio > 0 if schedule == "exp" else final_ratio >= 0
    if not (low_ok and final_ratio <= 1):
        bounds = "(0, 1] for the exp schedule" if schedule == "exp" else "[0, 1]"
        raise ValueError(f"lambda final ratio must be in {bounds}, got {final_ratio!r}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ValueError(f"lambda schedule power must be a number > 0, got {power!r}")


def lambda_at(
    step: int,
    total_steps: int,
    lambda_ar: float,
    schedule: str = "constant",
    final_ratio: float = 0.1,
    power: float = 0.9,
) -> float:
    """The AR weight at ``step`` (0-based) of a run of ``total_steps`` optimiser steps.

    Args:
        step: the global step (steps already taken); clipped to [0, total_steps].
        total_steps: steps of the whole run (values < 1 are treated as 1).
        lambda_ar: the weight at step 0 (>= 0).
        schedule: ``"constant"`` | ``"linear"`` | ``"exp"`` | ``"poly"`` (see the module).
        final_ratio: ``r``, the weight at the end divided by ``lambda_ar``.
        power: exponent of the ``"poly"`` schedule.

    Returns:
        A Python float.

    Example:
        >>> lambda_at(0, 100, 0.1, "exp", 0.01), round(lambda_at(50, 100, 0.1, "exp", 0.01), 12)
        (0.1, 0.01)
        >>> lambda_at(50, 100, 0.1, "linear", 0.0)
        0.05
    """
    check_lambda_schedule(schedule, final_ratio, power)
    if schedule == "constant" or lambda_ar == 0:
        return float(lambda_ar)
    t = min(max(step, 0), max(total_steps, 1)) / max(total_steps, 1)
    r = float(final_ratio)
    if schedule == "linear":
        factor = 1.0 - (1.0 - r) * t
    elif schedule == "exp":
        factor = math.exp(t * math.log(r))
    else:
        factor = r + (1.0 - r) * (1.0 - t) ** power
    return float(lambda_ar) * factor
