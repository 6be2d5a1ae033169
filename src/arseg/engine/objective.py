"""The training loss a config names: CE plus weighted terms, each with its weight schedule.

Config (``loss`` section)::

    loss:
      lambda_ar: 0.1            # the AR term, as every earlier config wrote it (0: off)
      terms:                    # any further terms, each with its options and schedule
        lovasz: {weight: 1.0}
        aaf: {weight: 1.0, schedule: exp, final_ratio: 0.1}   # AAF's decay
        rmi: {weight: 1.0, radius: 3}

A term's ``weight`` is its weight at step 0; ``schedule`` (``constant`` | ``linear`` | ``exp`` |
``poly``), ``final_ratio`` and ``power`` decay it over the run as :func:`arseg.losses.lambda_at`
does for ``lambda_ar``; the rest are the term's options (:data:`arseg.losses.LOSS_TERMS`).
The AR term always exists (its value is logged even at weight 0): from ``loss.lambda_ar``,
``loss.lambda_schedule/lambda_final_ratio/lambda_power`` and ``loss.scales/method/kernel``, or,
when ``loss.terms.ar`` is given, from that entry alone (``loss.lambda_ar`` must then be 0). A
term whose entry is ``null`` (e.g. the override ``loss.terms.lovasz=null``) is removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["TermSchedule", "check_loss_terms", "resolve_terms", "term_weights"]

_SCHEDULE_KEYS = {"weight": 1.0, "schedule": "constant", "final_ratio": 0.1, "power": 0.9}


@dataclass(frozen=True)
class TermSchedule:
    """One term of the objective: its weight schedule and its loss options."""

    weight: float
    schedule: str = "constant"
    final_ratio: float = 0.1
    power: float = 0.9
    options: dict[str, Any] = field(default_factory=dict)

    def at(self, step: int, total_steps: int) -> float:
        """The weight of ``step`` (a function of the step only: exact after a resume)."""
        from arseg.losses import lambda_at

        return lambda_at(
            step, total_steps, self.weight, self.schedule, self.final_ratio, self.power
        )


def resolve_terms(loss_cfg: Mapping[str, Any]) -> dict[str, TermSchedule]:
    """The objective's terms of a validated ``loss`` section, AR first, options complete."""
    terms: dict[str, TermSchedule] = {}
    given = {k: v for k, v in (loss_cfg.get("terms") or {}).items() if v is not None}
    if "ar" not in given:
        terms["ar"] = TermSchedule(
            weight=float(loss_cfg["lambda_ar"]),
            schedule=loss_cfg["lambda_schedule"],
            final_ratio=float(loss_cfg["lambda_final_ratio"]),
            power=float(loss_cfg["lambda_power"]),
            options={
                "scales": tuple(loss_cfg["scales"]) if loss_cfg["scales"] is not None else None,
                "method": loss_cfg["method"],
                "kernel": loss_cfg["kernel"],
            },
        )
    for name, entry in given.items():
        entry = dict(entry)
        schedule = {k: entry.pop(k, default) for k, default in _SCHEDULE_KEYS.items()}
        if name == "ar" and entry.get("scales") is not None:
            entry["scales"] = tuple(entry["scales"])
        terms[name] = TermSchedule(
            weight=float(schedule["weight"]),
            schedule=schedule["schedule"],
            final_ratio=float(schedule["final_ratio"]),
            power=float(schedule["power"]),
            options=entry,
        )
    if "ar" in given:  # AR first, as always
        terms = {"ar": terms.pop("ar"), **terms}
    from arseg.losses import check_term_options

    # every option spelled out, defaults included: one term, one resolved form
    return {
        name: replace(term, options=check_term_options(name, term.options))
        for name, term in terms.items()
    }


def term_weights(
    terms: Mapping[str, TermSchedule], step: int, total_steps: int
) -> dict[str, float]:
    """Every term's weight at ``step``."""
    return {name: term.at(step, total_steps) for name, term in terms.items()}


def check_loss_terms(loss_cfg: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` (one line, naming the key) for a ``loss.terms`` entry that cannot run."""
    from arseg.losses import LOSS_TERMS, check_term_options
    from arseg.losses.schedule import check_lambda_schedule

    given = loss_cfg.get("terms") or {}
    if not isinstance(given, Mapping):
        raise ValueError(f"'loss.terms' expects a mapping of term name -> settings, got {given!r}")
    for name, entry in given.items():
        key = f"loss.terms.{name}"
        if name not in LOSS_TERMS:
            raise ValueError(f"unknown loss term {name!r}; known: {', '.join(LOSS_TERMS)}")
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"'{key}' expects a mapping (weight, schedule, options), got {entry!r}"
            )
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"'{key}.weight' must be a number >= 0, got {weight!r}")
        try:
            check_lambda_schedule(
                entry.get("schedule", "constant"),
                entry.get("final_ratio", 0.1),
                entry.get("power", 0.9),
            )
            options = {k: v for k, v in entry.items() if k not in _SCHEDULE_KEYS}
            if name == "ar" and isinstance(options.get("scales"), list):
                options["scales"] = tuple(options["scales"])
            check_term_options(name, options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"'{key}': {err}") from None
        if name == "ar" and loss_cfg["lambda_ar"] > 0:
            raise ValueError(
                "AR's weight is set twice: by 'loss.lambda_ar' and by 'loss.terms.ar' "
                "(keep one; loss.terms.ar needs loss.lambda_ar: 0)"
            )
