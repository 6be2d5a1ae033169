"""Affinity field loss of AAF (Ke, Hwang, Liu & Yu, ECCV 2018) with fixed class weights.

Written from the paper and the authors' TensorFlow code (``network/aaf/losses.py``,
``adaptive_affinity_loss``), without its adversarially learned weights: the class weights are
fixed (default all ones). What is kept from the reference:

* pairs: each pixel and its 8 neighbours at distance ``size`` (the corners and edge midpoints of
  a (2 size + 1)^2 patch), for every size in ``sizes`` (1, 2, 3: 3x3, 5x5, 7x7);
* per class c a *binary* KL divergence between the neighbour's and the centre's probability of c,
  ``KL(q || p) = q log(q / p) + (1 - q) log((1 - q) / (1 - p))``, with ``p``, ``q``, ``1 - p``,
  ``1 - q`` each clipped to [1e-4, 1] before the log;
* an element (pair, class) is an *edge* when exactly one of the two pixels has label c; non-edge
  elements add ``KL``, edge elements ``max(0, margin - KL)``;
* per size, the mean over the edge elements plus the mean over the non-edge elements (the
  reference's ``reduce_mean`` of each, with weights 1 for both), summed over the sizes;
* a class weight chosen by the label of the centre pixel, multiplying both kinds of element,
  the means still over element counts;
* pairs with an unlabelled pixel, or with a neighbour outside the image, are dropped.

**Resolution.** The reference computes the loss at the network's output resolution: it shrinks
the labels to the output size (stride 8; ``tf.image.resize_nearest_neighbor``, 336 x 336 crops
-> 42 x 42, ``pyscripts/train/train_aaf.py``) and compares the output probabilities there, so
its neighbours at distance 1-3 are 1-3 *output* pixels (8-24 image pixels) apart. arseg does the
same: the engine hands AAF the model's native logits (``native_logits`` in
:data:`arseg.losses.LOSS_TERMS`), and a target larger than the logits is sampled at the centres
of the logit cells (nearest-exact, as ``ar_loss(..., scales=None)``; labels are picked, never
interpolated). At stride 4 (LW-RefineNet) the neighbours are 1-3 logit pixels = 4-12 image
pixels apart. Computed on logits upsampled to the label size instead, the distances would be
1-3 *label* pixels, where neighbouring upsampled predictions are interpolations of the same few
logits (nearly equal by construction), the field would look at another scale than the
reference's, and the cost would grow with the square of the stride (16x at stride 4). One
convention differs: TF1's ``resize_nearest_neighbor`` (no half-pixel centres) picks
``floor(i H / h)``, the top-left label of each cell; arseg picks the label at the cell centre,
``floor((i + 0.5) H / h)``, the one the logit is centred on (as AR does). A target of the
logits' size is used as it is.

Differences, all deliberate: the reference's mask of ignored pairs also drops the pair (i, i + d)
when the pixel i - d on the other side is unlabelled or outside the image (a side effect of
building the mask "bi-directionally"); here only pairs that *touch* such a pixel are dropped. A
mean over an empty set of elements is 0 here (the reference gives NaN, AAF#14). The reference
pools the means over its batch; here each image has its own means and ``reduction`` combines
the images (the authors' VOC run used batch 1 with 10 accumulated iterations, i.e. the mean of
per-image values). The learned weights of AAF start at 1/3 per size (a softmax over the three
sizes); ``class_weights`` of 1/3 give that starting point.

**Decay.** The authors multiply the loss by ``10 ** (-step / num_steps)`` and say the decay is
necessary (AAF#6). That is the engine's ``lambda_schedule: exp`` with ``lambda_final_ratio: 0.1``
(weight ``w * 0.1 ** (step / total_steps)``, see :mod:`arseg.losses.schedule`), e.g.
``loss.terms: {aaf: {weight: 1.0, schedule: exp, final_ratio: 0.1}}``; this function has no
step and applies no decay itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._checks import (
    check_batch,
    check_ignore_index,
    check_label_values,
    check_logits,
    check_target,
    label_map,
)
from ._dense import check_number, check_reduction, dense_inputs, reduce_images
from .sampling import sample_positions

__all__ = ["AAFLoss", "aaf_loss"]

#: Probabilities (and their complements) are clipped to [PROB_CLIP, 1] before the log (reference).
PROB_CLIP = 1e-4


def check_aaf_options(sizes: object, margin: object, class_weights: object) -> tuple[int, ...]:
    """Validate AAF's options; returns the sizes as a tuple of ints.

    ``sizes``: an int >= 1 or a non-empty sequence of distinct ints >= 1; ``margin``: a finite
    number >= 0; ``class_weights``: ``None`` or a 1-D sequence / tensor of finite numbers >= 0
    (its length is checked against the logits' classes at call time).
    """
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        sizes = (sizes,)
    if (
        not isinstance(sizes, Sequence)
        or isinstance(sizes, str)
        or len(sizes) == 0
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)
        or len(set(sizes)) != len(sizes)
    ):
        raise ValueError(f"sizes must be distinct ints >= 1, e.g. (1, 2, 3), got {sizes!r}")
    check_number(margin, "margin", low=0.0)
    if class_weights is not None:
        _class_weight_tensor(class_weights)
    return tuple(sizes)


def _class_weight_tensor(class_weights: object) -> Tensor:
    try:
        weights = torch.as_tensor(class_weights, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"class_weights must be None or a sequence of numbers, got {class_weights!r}"
        ) from None
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(f"class_weights must be 1-D (C,), got shape {tuple(weights.shape)}")
    if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise ValueError(f"class_weights must be finite and >= 0, got {weights.tolist()}")
    return weights


Slices = tuple[slice, slice]


def _offsets(height: int, width: int, size: int) -> list[tuple[Slices, Slices]]:
    """(centre, neighbour) slices of the in-image pairs (i, i + d) for 4 of the 8 offsets d at
    distance ``size``; the other 4 are the same pairs with the roles swapped."""
    out = []
    for dy, dx in ((0, size), (size, 0), (size, size), (size, -size)):
        if dy >= height or abs(dx) >= width:
            continue  # no pair at this offset inside the image
        rows_c, rows_n = slice(0, height - dy), slice(dy, height)
        if dx >= 0:
            cols_c, cols_n = slice(0, width - dx), slice(dx, width)
        else:
            cols_c, cols_n = slice(-dx, width), slice(0, width + dx)
        out.append(((rows_c, cols_c), (rows_n, cols_n)))
    return out


def _clipped(p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q = clip(p), r = clip(1 - p) to [PROB_CLIP, 1], and their logs."""
    q = p.clamp(PROB_CLIP, 1.0)
    r = (1 - p).clamp(PROB_CLIP, 1.0)
    return q, r, q.log(), r.log()


def _at(x: Tensor, s: Slices) -> Tensor:
    return x[..., s[0], s[1]]


def _binary_kl(p_n: Tensor, p_c: Tensor) -> Tensor:
    """Binary KL(n || c) of probabilities of one class, clipped as the reference clips them."""
    q_n, r_n, lq_n, lr_n = _clipped(p_n)
    _, _, lq_c, lr_c = _clipped(p_c)
    return q_n * (lq_n - lq_c) + r_n * (lr_n - lr_c)


def _pairs(p: Tensor, labels: Tensor, valid: Tensor, own: Tensor, sizes: tuple[int, ...]):
    """The ordered pairs of every size, 4 offsets (a, b) at a time.

    Yields ``(k, a, b, pair, differ, kls)``: the size's index, the slices, the (B, h, w) masks
    of pairs of labelled pixels and of pairs whose labels differ, and
    ``kls = ((KL_La(b || a), KL_Lb(b || a)), (KL_La(a || b), KL_Lb(a || b)))``, the KL of the
    two label classes for both directions, from gathered probabilities.
    """
    height, width = p.shape[-2:]
    for k, size in enumerate(sizes):
        for a, b in _offsets(height, width, size):
            pair = _at(valid, a) & _at(valid, b)
            la, lb = _at(labels, a), _at(labels, b)
            differ = (pair & (la != lb)).to(p.dtype)
            own_a, own_b = _at(own, a), _at(own, b)
            b_at_la = torch.gather(_at(p, b), 1, la.unsqueeze(1)).squeeze(1)  # p_b[L_a]
            a_at_lb = torch.gather(_at(p, a), 1, lb.unsqueeze(1)).squeeze(1)  # p_a[L_b]
            kls = (
                (_binary_kl(b_at_la, own_a), _binary_kl(own_b, a_at_lb)),
                (_binary_kl(own_a, b_at_la), _binary_kl(a_at_lb, own_b)),
            )
            yield k, a, b, pair, differ, kls


def _labels_at_logit_cells(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """The target sampled at the centres of the logit cells when its size is not the logits'.

    Nearest-exact, exactly as ``ar_loss(..., scales=None)`` reads its labels (one position per
    logit cell, row ``floor((i + 0.5) H / h)``, column ``floor((j + 0.5) W / w)``, see
    :mod:`arseg.losses.sampling`): labels are picked, never interpolated. Any sizes work, as in
    ``ar_loss``: a target smaller than the logits repeats its labels. Every label of the full
    target is checked first (a bad one is an error even where no cell centre falls); the
    other checks are those of :func:`~arseg.losses._dense.dense_inputs`, with its one-line
    errors.
    """
    check_logits(logits)
    check_target(target)
    check_batch(logits, target)
    check_ignore_index(ignore_index)
    labels = label_map(target)
    size = tuple(logits.shape[-2:])
    if tuple(labels.shape[-2:]) == size:
        return target
    check_label_values(labels, max(logits.shape[1], 2), ignore_index)
    return sample_positions(labels, [size]).view(labels.shape[0], *size)


class _AAFSums(torch.autograd.Function):
    """Per image and size: the weighted sums of the edge and of the non-edge elements.

    With ``KL_k`` the binary KL of class k for an ordered pair (centre c, neighbour n), the
    non-edge sum over the classes is ``sum_k KL_k`` minus the two label classes when the labels
    differ (the edge elements), and ``sum_k KL_k = sum_k (q_n log q_n + r_n log r_n)_k -
    <q_n, log q_c> - <r_n, log r_c>``: two products over the classes per ordered pair, plus the
    KL of the two label classes from gathered probabilities, instead of masked per-class maps.
    The backward is written by hand: the gradient with respect to ``KL_k`` is a per-pair scalar
    plus corrections at the two label classes, pushed through ``KL`` into (B, C, H, W) buffers
    for q and r by in-place updates of slices (autograd would allocate and zero-fill a
    full-size tensor for every slice).
    """

    @staticmethod
    def forward(ctx, p, labels, valid, pixel_weight, sizes, margin):
        # p (B, C, H, W) softmax; labels (B, H, W) int64 (0 where ignored); valid (B, H, W)
        # bool; pixel_weight (B, H, W) (class weight of the pixel's label, 0 where ignored).
        q, r, lq, lr = _clipped(p)
        ent = (q * lq + r * lr).sum(dim=1)  # (B, H, W)
        own = torch.gather(p, 1, labels.unsqueeze(1)).squeeze(1)  # p of the pixel's label
        edge_sum = p.new_zeros(p.shape[0], len(sizes))
        flat_sum = p.new_zeros(p.shape[0], len(sizes))
        for k, a, b, pair, differ, kls in _pairs(p, labels, valid, own, sizes):
            for (c, n), (kl_a, kl_b) in zip(((a, b), (b, a)), kls):  # KL(n || c)
                w = _at(pixel_weight, c) * pair
                kl_all = _at(ent, n) - (_at(q, n) * _at(lq, c)).sum(dim=1)
                kl_all = kl_all - (_at(r, n) * _at(lr, c)).sum(dim=1)
                flat = w * (kl_all - differ * (kl_a + kl_b))
                edge = (margin - kl_a).clamp(min=0) + (margin - kl_b).clamp(min=0)
                flat_sum[:, k] += flat.sum(dim=(1, 2))
                edge_sum[:, k] += (w * differ * edge).sum(dim=(1, 2))
        ctx.save_for_backward(p, labels, valid, pixel_weight)
        ctx.sizes, ctx.margin = sizes, margin
        return edge_sum, flat_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_edge, grad_flat):
        p, labels, valid, pixel_weight = ctx.saved_tensors
        q, r, lq, lr = _clipped(p)
        own = torch.gather(p, 1, labels.unsqueeze(1)).squeeze(1)
        grad_q = torch.zeros_like(p)
        grad_r = torch.zeros_like(p)
        for k, a, b, pair, differ, kls in _pairs(p, labels, valid, own, ctx.sizes):
            g_edge = grad_edge[:, k].view(-1, 1, 1)
            g_flat = grad_flat[:, k].view(-1, 1, 1)
            index = (_at(labels, a).unsqueeze(1), _at(labels, b).unsqueeze(1))
            for (c, n), kl_pair in zip(((a, b), (b, a)), kls):
                w = _at(pixel_weight, c) * pair
                # dL/dKL_k = alpha for every class, plus beta at the two label classes.
                alpha = g_flat * w
                g = alpha.unsqueeze(1).expand(-1, p.shape[1], -1, -1).clone()
                for idx, kl in zip(index, kl_pair):
                    beta = differ * (-alpha - g_edge * w * (kl < ctx.margin).to(p.dtype))
                    g.scatter_add_(1, idx, beta.unsqueeze(1))
                # KL = q_n (lq_n - lq_c) + r_n (lr_n - lr_c)
                _at(grad_q, n).addcmul_(g, _at(lq, n) - _at(lq, c) + 1)
                _at(grad_r, n).addcmul_(g, _at(lr, n) - _at(lr, c) + 1)
                _at(grad_q, c).addcmul_(g, _at(q, n) / _at(q, c), value=-1)
                _at(grad_r, c).addcmul_(g, _at(r, n) / _at(r, c), value=-1)
        # q = clamp(p), r = clamp(1 - p): gradients pass where the value is inside [clip, 1].
        one_minus = 1 - p
        grad_q.mul_((p >= PROB_CLIP) & (p <= 1))
        inside = ((one_minus >= PROB_CLIP) & (one_minus <= 1)).to(p.dtype)
        grad_q.addcmul_(grad_r, inside, value=-1)
        return grad_q, None, None, None, None, None


def aaf_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = 255,
    reduction: str = "mean",
    sizes: int | Sequence[int] = (1, 2, 3),
    margin: float = 3.0,
    class_weights: Sequence[float] | Tensor | None = None,
) -> Tensor:
    r"""Affinity field loss of AAF with fixed class weights (see the module for the details).

    Per image and per size s, over the ordered pairs (i, j) of logit pixels with j one of the 8
    neighbours of i at distance s (both labelled, j inside the image) and the classes c, with
    ``p`` the clipped softmax and ``w`` the class weight of i's label,

    .. math::
        \mathrm{KL}_{ijc} = p_{jc} \log\frac{p_{jc}}{p_{ic}}
            + \bar p_{jc} \log\frac{\bar p_{jc}}{\bar p_{ic}}, \qquad
        \ell_s = \frac{\sum_{E} w \max(0, m - \mathrm{KL})}{|E|}
            + \frac{\sum_{\bar E} w\, \mathrm{KL}}{|\bar E|}

    with E the edge elements ([L_i = c] != [L_j = c]), Ē the others, ``m = margin`` and
    ``p̄ = clip(1 - p)``; the image's loss is ``sum_s l_s``. Each unordered pair enters in both
    directions (the KL is not symmetric).

    Args:
        logits: (B, C, h, w) float16 / bfloat16 / float32 / float64 class scores at the
            network's output resolution, as the reference computes the loss (the engine passes
            them so), or at any other size: the pairs and the distances ``sizes`` are those of
            the logit grid. C = 1 (a sigmoid map ``z``) is the two-class distribution
            ``(1 - sigmoid(z), sigmoid(z))``.
        target: (B, H, W) or (B, 1, H, W) integer labels in [0, C) or ``ignore_index``. At
            the logits' size it is used as it is; otherwise its labels are sampled at the
            centres of the logit cells (row ``floor((i + 0.5) H / h)``, column
            ``floor((j + 0.5) W / w)``: nearest-exact, exactly as ``ar_loss(..., scales=None)``,
            never interpolated; a smaller target repeats labels, as there).
        ignore_index: label of unlabelled pixels; pairs touching one are dropped.
        reduction: ``"mean"`` (over the images with at least one pair), ``"sum"`` or ``"none"``
            ((B,), 0 for an image without pairs).
        sizes: neighbour distances (default ``(1, 2, 3)``, the paper's).
        margin: the edge hinge ``m`` (default 3.0, the authors').
        class_weights: optional (C,) weights >= 0 by the centre pixel's class (default all 1).

    Returns:
        Scalar (or (B,) for ``"none"``) float32 tensor; float64 for float64 logits. Computed in
        that precision with autocast disabled. Without any pair of labelled pixels the result is
        0, attached to the graph (zero gradients, no NaN). Decay its weight with the engine's
        ``exp`` schedule, ``final_ratio: 0.1`` (the authors' ``10 ** (-step / num_steps)``).

    Raises:
        TypeError: non-tensor inputs, non-float logits, a float target, non-numeric options.
        ValueError: wrong ranks, a batch mismatch, labels outside [0, C) other than
            ``ignore_index`` (anywhere in the target), bad ``sizes`` / ``margin`` /
            ``class_weights`` (or a length other than C), an unknown ``reduction``. No sizes
            are refused (a distance beyond the logit grid has no pair and adds 0).

    Example:
        >>> logits = torch.randn(2, 5, 32, 32, requires_grad=True)   # stride 4 of the labels
        >>> target = torch.randint(0, 5, (2, 128, 128))
        >>> target[:, :16] = 255                       # ignored rows: their pairs are dropped
        >>> loss = aaf_loss(logits, target)            # labels at the 32 x 32 cell centres
        >>> loss.backward()
        >>> aaf_loss(logits, target, sizes=(1,), reduction="none").shape
        torch.Size([2])
    """
    sizes = check_aaf_options(sizes, margin, class_weights)
    target = _labels_at_logit_cells(logits, target, ignore_index)
    z, labels, valid = dense_inputs(logits, target, ignore_index, reduction, loss="aaf_loss")
    batch, num_classes, height, width = z.shape
    dtype = z.dtype
    if class_weights is not None:
        weights = _class_weight_tensor(class_weights)
        if weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {weights.numel()} entries but the logits have "
                f"{num_classes} classes"
            )
        weights = weights.to(device=z.device, dtype=dtype)
    margin = float(margin)
    with torch.autocast(z.device.type, enabled=False):
        p = F.softmax(z, dim=1)
        pixel_weight = valid.to(dtype) if class_weights is None else weights[labels] * valid
        edge_count = torch.zeros(batch, len(sizes), dtype=torch.int64, device=z.device)
        pair_count = torch.zeros_like(edge_count)
        for k, size in enumerate(sizes):
            for a, b in _offsets(height, width, size):
                pair = valid[:, a[0], a[1]] & valid[:, b[0], b[1]]
                differ = pair & (labels[:, a[0], a[1]] != labels[:, b[0], b[1]])
                pair_count[:, k] += pair.sum(dim=(1, 2))
                edge_count[:, k] += differ.sum(dim=(1, 2))
        # Per ordered pair: 2 edge elements (the two labels) if the labels differ, else none;
        # every other class is a non-edge element. Both directions of each pair count.
        flat_count = 2 * (num_classes * pair_count - 2 * edge_count)
        edge_count = 4 * edge_count
        edge_sum, flat_sum = _AAFSums.apply(p, labels, valid, pixel_weight, sizes, margin)
        total = (edge_sum / edge_count.clamp(min=1).to(dtype)).sum(dim=1)
        total = total + (flat_sum / flat_count.clamp(min=1).to(dtype)).sum(dim=1)
        return reduce_images(total, (pair_count > 0).any(dim=1), reduction)


class AAFLoss(nn.Module):
    """AAF's affinity field loss as a module; see :func:`arseg.losses.aaf_loss`.

    Decay its weight outside (the engine: ``schedule: exp, final_ratio: 0.1``).

    Args:
        ignore_index: label of unlabelled pixels (default 255).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        sizes: neighbour distances (default ``(1, 2, 3)``).
        margin: edge hinge (default 3.0).
        class_weights: optional (C,) weights by the centre pixel's class.

    Shape:
        - logits: (B, C, h, w) float, at the network's output resolution (or any size);
          target: (B, H, W) or (B, 1, H, W), sampled at the logit cells' centres if H, W
          differ from h, w.
        - output: scalar float32 ((B,) for ``reduction="none"``).

    Example:
        >>> criterion = AAFLoss(sizes=(1, 2))
        >>> loss = criterion(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8)))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        ignore_index: int = 255,
        reduction: str = "mean",
        sizes: int | Sequence[int] = (1, 2, 3),
        margin: float = 3.0,
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        check_ignore_index(ignore_index)
        check_reduction(reduction)
        self.sizes = check_aaf_options(sizes, margin, class_weights)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.margin = float(margin)
        weights = None if class_weights is None else _class_weight_tensor(class_weights).float()
        self.register_buffer("class_weights", weights)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return aaf_loss(
            logits,
            target,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            sizes=self.sizes,
            margin=self.margin,
            class_weights=self.class_weights,
        )

    def extra_repr(self) -> str:
        weights = "None" if self.class_weights is None else tuple(self.class_weights.shape)
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"sizes={self.sizes}, margin={self.margin}, class_weights={weights}"
        )
