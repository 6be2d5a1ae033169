"""Cross-entropy plus any weighted set of structural terms: the training objective of the engine.

``total = CE + sum_t w_t * term_t`` with the terms of :data:`arseg.losses.terms.LOSS_TERMS` (AR,
Lovasz-softmax, RMI, AAF, soft Dice). The caller hands the weights of the step to every call (a
schedule is the caller's business, e.g. :func:`arseg.losses.lambda_at` of the step), so one
module serves constant and decaying weights alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modules import CEARLoss

__all__ = ["CompositeLoss", "CompositeLossOutput"]


class CompositeLossOutput(NamedTuple):
    """What :class:`CompositeLoss` returns: scalar float32 tensors.

    ``total = ce + sum_t weights[t] * terms[t]``; every term's value is there, also those whose
    weight is 0 (computed without gradient, for the logs).
    """

    total: Tensor
    ce: Tensor
    terms: dict[str, Tensor]


class CompositeLoss(nn.Module):
    """Cross-entropy plus weighted structural terms, each with its own options.

    CE is :meth:`arseg.losses.CEARLoss.cross_entropy` (logits bilinearly resized to the labels,
    float32, class weights, ignore index). A term whose entry in
    :data:`~arseg.losses.terms.LOSS_TERMS` has ``native_logits`` (AR) takes the logits as they
    come (it samples them at the label's scene points); the others take the logits resized to
    the label size, as CE does. Terms are evaluated in the order given; a term whose weight is 0
    in a call is evaluated on detached logits without gradient, so its value is still logged.

    Args:
        terms: term name -> its options (see :func:`~arseg.losses.terms.check_term_options`),
            e.g. ``{"ar": {"scales": (12, 6)}, "lovasz": {}}``.
        class_weight: optional per-class CE weights, a sequence or a (C,) tensor.
        ignore_index: label of unlabelled pixels, for CE and every term.
        align_corners: convention of the resize to the label size (the model's).

    Shape:
        - logits: (B, C, h, w) float; target: (B, H, W) or (B, 1, H, W) integer.
        - weights: term name -> float weight of this call (every term of ``terms``).
        - output: :class:`CompositeLossOutput`.

    Example:
        >>> criterion = CompositeLoss({"ar": {}, "dice": {}})
        >>> logits = torch.randn(2, 11, 45, 60, requires_grad=True)   # 1/8 of the labels
        >>> target = torch.randint(0, 11, (2, 360, 480))
        >>> out = criterion(logits, target, {"ar": 1.0, "dice": 0.0})
        >>> out.total.backward()
        >>> bool(torch.isclose(out.total, out.ce + out.terms["ar"]))
        True
    """

    def __init__(
        self,
        terms: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        class_weight: Sequence[float] | Tensor | None = None,
        ignore_index: int = 255,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        from .terms import check_term_options, loss_term

        # CEARLoss's CE is the one cross-entropy of the project (weights, resize, float32).
        self._ce = CEARLoss(
            lambda_ar=0.0,
            class_weight=class_weight,
            ignore_index=ignore_index,
            align_corners=align_corners,
        )
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.terms = {
            name: (loss_term(name), check_term_options(name, options or {}))
            for name, options in (terms or {}).items()
        }

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """The CE term alone (as :meth:`arseg.losses.CEARLoss.cross_entropy`)."""
        return self._ce.cross_entropy(logits, target)

    def term(
        self,
        name: str,
        logits: Tensor,
        target: Tensor,
        reduction: str = "mean",
        *,
        label_size_logits: Tensor | None = None,
    ) -> Tensor:
        """One term's value on ``logits`` (resized to the labels unless the term samples them).

        ``label_size_logits``: the same logits already resized to the label size (validation
        has them), used instead of resizing again by the terms that take them.
        """
        spec, options = self.terms[name]
        if not spec.native_logits:
            if label_size_logits is not None:
                logits = label_size_logits
            else:
                logits = self._label_size(logits, target)
        return spec.fn(
            logits, target, ignore_index=self.ignore_index, reduction=reduction, **options
        )

    def _label_size(self, logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[-2:] == target.shape[-2:]:
            return logits
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.float() if logits.dtype != torch.float64 else logits
            return F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=self.align_corners
            )

    def forward(
        self, logits: Tensor, target: Tensor, weights: Mapping[str, float]
    ) -> CompositeLossOutput:
        missing = set(self.terms) - set(weights)
        if missing:
            raise ValueError(f"no weight given for the term(s) {sorted(missing)}")
        values: dict[str, Tensor] = {}
        for name in self.terms:  # before CE: the order CEARLoss has always used
            if float(weights[name]) > 0:
                values[name] = self.term(name, logits, target)
            else:
                with torch.no_grad():
                    values[name] = self.term(name, logits.detach(), target)
        ce = self.cross_entropy(logits, target)
        total = ce
        for name, value in values.items():
            if float(weights[name]) > 0:
                total = total + float(weights[name]) * value
        return CompositeLossOutput(total, ce, values)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={options}" for name, (_, options) in self.terms.items())
