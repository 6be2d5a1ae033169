"""``arseg compare``: is the gain of arm B over arm A real or noise?

Two arms (e.g. a CE-only fine-tune and a CE + AR fine-tune), each one run or several seeds,
evaluated by ``arseg eval`` on the same images (one split, one checkpoint: ``RUN/eval/<split>``
for the best checkpoint, ``RUN/eval/<split>-last`` for the last). Reported:

* per arm, mean ± std over runs of mIoU, Boundary IoU, pixel accuracy and the AR loss;
* the mIoU and Boundary IoU differences B - A with a paired bootstrap interval over images
  (all runs of both arms resampled with the same images) and, with several paired seeds, over
  the seed pairs too (two-level bootstrap); per-class differences with their intervals;
* across seeds: a paired t-test and the t interval of the mean difference (pairs = same seed),
  shown beside the bootstrap interval. Arms sharing only some of their seeds (at least two) are
  compared on the shared seeds; a warning names the runs left out.

How far to trust it: with one run per arm (or unpaired arms) the bootstrap resamples images
only and treats the trained networks as fixed, so it says nothing about seed-to-seed training
noise; the output says so. With fewer than :data:`~arseg.analysis.stats.MIN_SEED_PAIRS` seed
pairs the seed level is too coarse to headline a gain (3 pairs give 10 distinct seed
resamples): the output warns and the verdict is "preliminary".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from arseg.analysis.runs import Run, RunError
from arseg.analysis.stats import (
    MIN_SEED_PAIRS,
    BootstrapResult,
    ClassDelta,
    PairedTest,
    SeedSummary,
    distinct_seed_resamples,
    mean_boundary_iou,
    miou_from_confusion,
    paired_bootstrap,
    paired_bootstrap_counts,
    paired_seed_test,
    pixel_accuracy_from_confusion,
    seed_summary,
)

__all__ = ["METRICS", "Comparison", "compare_runs", "format_comparison", "leave_out_gains"]

#: Per-run metrics summarised for each arm: key -> display name.
METRICS = {
    "miou": "mIoU",
    "boundary_iou": "Boundary IoU",
    "pixel_acc": "pixel acc",
    "val_ar": "AR loss",
}


@dataclass(frozen=True)
class Comparison:
    """Everything ``arseg compare`` reports (IoU units 0..1; see the module docstring).

    ``metrics_a`` / ``metrics_b``: metric key (:data:`METRICS`) -> one value per run (NaN where a
    run lacks it); ``seed_tests``: metric key -> paired t-test over seeds (None with fewer than 2
    pairs or a missing value); ``boundary``: the Boundary IoU bootstrap, None when a run has no
    Boundary IoU counts (``boundary_note`` says why).
    """

    label_a: str
    label_b: str
    runs_a: list[str]
    runs_b: list[str]
    miou_a: list[float]
    miou_b: list[float]
    summary_a: SeedSummary
    summary_b: SeedSummary
    paired_by: str
    seed_test: PairedTest | None
    bootstrap: BootstrapResult
    split: str = "val"
    checkpoint: str = "best"
    seeds_a: list[int | None] = field(default_factory=list)
    seeds_b: list[int | None] = field(default_factory=list)
    metrics_a: dict[str, list[float]] = field(default_factory=dict)
    metrics_b: dict[str, list[float]] = field(default_factory=dict)
    seed_tests: dict[str, PairedTest | None] = field(default_factory=dict)
    boundary: BootstrapResult | None = None
    boundary_note: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_pairs(self) -> int:
        """Seed pairs of the comparison (0 when the arms are not paired)."""
        return len(self.runs_a) if self.bootstrap.resample_runs else 0

    @property
    def seed_noise_covered(self) -> bool:
        """Whether the bootstrap interval carries seed-to-seed noise (paired seeds resampled)."""
        return self.bootstrap.resample_runs

    @property
    def verdict(self) -> str:
        """One phrase for the mIoU difference that does not overstate it."""
        if not self.seed_noise_covered:
            why = "one run per arm" if len(self.runs_a) == len(self.runs_b) == 1 else "unpaired"
            return f"seed noise not covered ({why}): not evidence about the loss"
        if self.n_pairs < MIN_SEED_PAIRS:
            return f"preliminary: {self.n_pairs} seed pairs (fewer than {MIN_SEED_PAIRS})"
        t = self.seed_test
        if self.bootstrap.excludes_zero and t is not None and t.excludes_zero:
            return "difference: the bootstrap and the seed-level t interval both exclude 0"
        return "no evidence of a difference"

    def as_dict(self) -> dict[str, object]:
        """The comparison as plain JSON types (NaN stays NaN: the CLI writes it as null)."""
        bs = self.bootstrap

        def arm(label, runs, seeds, miou, summary, metrics):
            return {
                "label": label,
                "runs": runs,
                "seeds": seeds,
                "miou": miou,
                "mean": summary.mean,
                "std": summary.std,
                "metrics": {
                    key: {
                        "values": values,
                        "mean": _summary_or_nan(values).mean,
                        "std": _summary_or_nan(values).std,
                    }
                    for key, values in metrics.items()
                },
            }

        return {
            "split": self.split,
            "checkpoint": self.checkpoint,
            "arm_a": arm(
                self.label_a,
                self.runs_a,
                self.seeds_a,
                self.miou_a,
                self.summary_a,
                self.metrics_a,
            ),
            "arm_b": arm(
                self.label_b,
                self.runs_b,
                self.seeds_b,
                self.miou_b,
                self.summary_b,
                self.metrics_b,
            ),
            "delta_miou": bs.delta,
            "bootstrap": _bootstrap_dict(bs),
            "paired_by": self.paired_by,
            "seed_test": None if self.seed_test is None else self.seed_test.as_dict(),
            "per_class": _per_class(bs),
            "boundary_iou": None
            if self.boundary is None
            else {
                "delta": self.boundary.delta,
                "bootstrap": _bootstrap_dict(self.boundary),
                "seed_test": None
                if self.seed_tests.get("boundary_iou") is None
                else self.seed_tests["boundary_iou"].as_dict(),  # type: ignore[union-attr]
                "per_class": _per_class(self.boundary),
            },
            "boundary_iou_note": self.boundary_note,
            "deltas": {
                key: _mean_or_nan(self.metrics_b[key]) - _mean_or_nan(self.metrics_a[key])
                for key in self.metrics_a
            },
            "seed_tests": {
                key: None if t is None else t.as_dict() for key, t in self.seed_tests.items()
            },
            "leave_out": leave_out_gains(bs.per_class),
            "n_seed_pairs": self.n_pairs,
            "min_seed_pairs": MIN_SEED_PAIRS,
            "seed_noise_covered": self.seed_noise_covered,
            "verdict": self.verdict,
            "warnings": list(self.warnings),
        }


def leave_out_gains(per_class: Sequence[ClassDelta], top: int = 2) -> dict[str, object]:
    """How much of an mIoU difference one or two classes carry.

    The difference B - A of the mean IoU over the other classes, with each class left out in
    turn (``each``: class -> difference) and with the ``1..top`` classes of largest |B - A|
    left out together (``without_top``: ``[{"classes": [...], "delta": d}, ...]``). IoU units
    (0..1). Computed from the per-class differences of the comparison (means over seeds), so it
    equals the mIoU difference restricted to the other classes exactly where every class has an
    IoU in every run (a class without one is skipped, as mIoU skips it).

    Example:
        >>> from arseg.analysis.stats import ClassDelta
        >>> rows = [ClassDelta(n, 0.5, 0.5 + d, d, d, d) for n, d in [("a", 0.3), ("b", 0.0), ("c", 0.0)]]
        >>> out = leave_out_gains(rows)
        >>> round(out["each"]["a"], 6), out["without_top"][0]["classes"]
        (0.0, ['a'])
    """
    deltas = {c.name: c.delta for c in per_class if math.isfinite(c.delta)}

    def without(names: set[str]) -> float:
        rest = [d for name, d in deltas.items() if name not in names]
        return float(np.mean(rest)) if rest else math.nan

    ranked = sorted(deltas, key=lambda name: -abs(deltas[name]))
    return {
        "each": {name: without({name}) for name in deltas},
        "without_top": [
            {"classes": ranked[:k], "delta": without(set(ranked[:k]))}
            for k in range(1, min(top, len(ranked) - 1) + 1)
        ],
    }


def _bootstrap_dict(bs: BootstrapResult) -> dict[str, object]:
    return {
        "level": bs.level,
        "ci_low": bs.ci_low,
        "ci_high": bs.ci_high,
        "p_value": bs.p_value,
        "n_boot": bs.n_boot,
        "n_images": bs.n_images,
        "seed": bs.seed,
        "excludes_zero": bs.excludes_zero,
        "resample_runs": bs.resample_runs,
    }


def _per_class(bs: BootstrapResult) -> list[dict[str, object]]:
    return [
        {
            "class": c.name,
            "iou_a": c.iou_a,
            "iou_b": c.iou_b,
            "delta": c.delta,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
        }
        for c in bs.per_class
    ]


def _mean_or_nan(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _summary_or_nan(values: Sequence[float]) -> SeedSummary:
    return seed_summary(values) if len(values) else SeedSummary(math.nan, math.nan, 0)


def _pair(runs_a: list[Run], runs_b: list[Run]) -> tuple[list[Run], list[Run], str, list[str]]:
    """The runs to compare, paired where the seeds allow, how they pair, and what was left out.

    Arms with the same seeds pair by seed. Arms whose seeds overlap in at least two (e.g. three
    ablation seeds against a control of five) pair on the shared seeds, and the others are left
    out with a warning: a paired comparison on fewer runs beats an unpaired one on all, which
    cannot see seed noise.
    """
    seeds_a = [r.seed for r in runs_a]
    seeds_b = [r.seed for r in runs_b]
    known = (
        None not in seeds_a
        and None not in seeds_b
        and len(set(seeds_a)) == len(seeds_a)
        and len(set(seeds_b)) == len(seeds_b)
    )
    if known and sorted(seeds_a) == sorted(seeds_b):
        by_seed = {r.seed: r for r in runs_b}
        return runs_a, [by_seed[r.seed] for r in runs_a], "seed", []
    shared = [s for s in seeds_a if s in set(seeds_b)] if known else []
    if len(shared) >= 2:
        by_a = {r.seed: r for r in runs_a}
        by_b = {r.seed: r for r in runs_b}
        only_a = [s for s in seeds_a if s not in shared]
        only_b = [s for s in seeds_b if s not in shared]
        left = "; ".join(
            f"{arm}'s seeds {seeds} ({', '.join(str(by[s].path) for s in seeds)})"
            for arm, seeds, by in (("A", only_a, by_a), ("B", only_b, by_b))
            if seeds
        )
        note = (
            f"paired on the {len(shared)} seeds both arms share {sorted(shared)}; left out: {left}"
        )
        return (
            [by_a[s] for s in shared],
            [by_b[s] for s in shared],
            f"seed (the {len(shared)} shared seeds)",
            [note],
        )
    if None not in seeds_a and None not in seeds_b and len(runs_a) == len(runs_b) > 1:
        # Seeds are known but do not match one to one: say so rather than pair silently.
        return runs_a, runs_b, f"order (the seeds differ: A {seeds_a}, B {seeds_b})", []
    return runs_a, runs_b, "order", []


def _val_ar(run: Run) -> float:
    value = run.eval_metrics.get("val_ar")
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _run_warnings(runs_a: list[Run], runs_b: list[Run], resample_runs: bool) -> list[str]:
    n_a, n_b = len(runs_a), len(runs_b)
    if not resample_runs:
        what = (
            "one run per arm"
            if n_a == n_b == 1
            else f"the arms have {n_a} and {n_b} runs, which do not pair"
        )
        return [
            f"seed noise is NOT covered: {what}, so the bootstrap resamples images only and "
            "treats these trained networks as fixed; another training seed can move or reverse "
            f"the difference. Train at least {MIN_SEED_PAIRS} seeds per arm to judge the loss."
        ]
    if n_a < MIN_SEED_PAIRS:
        return [
            f"only {n_a} seed pairs (fewer than {MIN_SEED_PAIRS}): the seed level is coarse "
            f"(the bootstrap can draw only {distinct_seed_resamples(n_a)} distinct sets of seed "
            f"pairs, the t interval has {n_a - 1} degrees of freedom); treat the result as "
            "preliminary, not as a gain."
        ]
    return []


def compare_runs(
    runs_a: Sequence[Run],
    runs_b: Sequence[Run],
    *,
    n_boot: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    label_a: str = "A",
    label_b: str = "B",
) -> Comparison:
    """Compare two arms of evaluated runs (see the module docstring).

    Each run's evaluation is the one its :class:`~arseg.analysis.runs.Run` selects (split and
    checkpoint); all runs should select the same.

    Raises:
        RunError: if a run has no per-image confusion matrices for its split and checkpoint, or
            the arms were evaluated on different images / classes.
    """
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b:
        raise RunError("each arm needs at least one run")
    runs_a, runs_b, paired_by, pairing_notes = _pair(runs_a, runs_b)
    everyone = runs_a + runs_b
    confs_a = [r.confusion() for r in runs_a]
    confs_b = [r.confusion() for r in runs_b]
    shapes = {c.shape for c in confs_a + confs_b}
    if len(shapes) != 1:
        detail = ", ".join(f"{r.path}: {c.shape}" for r, c in zip(everyone, confs_a + confs_b))
        raise RunError(f"runs were evaluated on different images or classes ({detail})")
    classes = next((r.classes for r in everyone if r.classes), None)
    n_images, n_classes = confs_a[0].shape[0], confs_a[0].shape[-1]
    if classes is not None and len(classes) != n_classes:
        classes = None
    paired = len(confs_a) == len(confs_b)
    # with several paired seeds, resample them too: the interval then covers training noise
    resample_runs = paired and len(confs_a) >= 2
    settings = {
        "n_boot": n_boot,
        "level": level,
        "seed": seed,
        "class_names": classes,
        "resample_runs": resample_runs,
    }
    bootstrap = paired_bootstrap(np.stack(confs_a), np.stack(confs_b), **settings)

    bounds = [r.boundary() for r in everyone]
    boundary = note = None
    missing = [r for r, b in zip(everyone, bounds) if b is None]
    if missing:
        note = (
            f"Boundary IoU not compared: {missing[0].path} has no per_image_boundary.npy "
            f"(evaluated by an older arseg; run `{missing[0].eval_command}` again)"
        )
    elif any(b.shape != (n_images, 2, n_classes) for b in bounds):  # type: ignore[union-attr]
        note = "Boundary IoU not compared: its counts do not match the confusion matrices"
    else:
        n_a = len(runs_a)
        boundary = paired_bootstrap_counts(
            np.stack(bounds[:n_a]),  # type: ignore[arg-type]
            np.stack(bounds[n_a:]),  # type: ignore[arg-type]
            **settings,
        )

    def per_run(runs: list[Run], confs: list[np.ndarray], counts) -> dict[str, list[float]]:
        return {
            "miou": [float(miou_from_confusion(c.sum(0))) for c in confs],
            "boundary_iou": [mean_boundary_iou(b) for b in counts],
            "pixel_acc": [pixel_accuracy_from_confusion(c) for c in confs],
            "val_ar": [_val_ar(r) for r in runs],
        }

    metrics_a = per_run(runs_a, confs_a, bounds[: len(runs_a)])
    metrics_b = per_run(runs_b, confs_b, bounds[len(runs_a) :])
    seed_tests: dict[str, PairedTest | None] = {}
    for key in METRICS:
        va, vb = metrics_a[key], metrics_b[key]
        usable = paired and all(math.isfinite(v) for v in va + vb)
        seed_tests[key] = paired_seed_test(va, vb, level=level) if usable else None
    if not paired:
        paired_by = "unpaired (different numbers of runs)"
    miou_a, miou_b = metrics_a["miou"], metrics_b["miou"]
    return Comparison(
        label_a=label_a,
        label_b=label_b,
        runs_a=[str(r.path) for r in runs_a],
        runs_b=[str(r.path) for r in runs_b],
        miou_a=miou_a,
        miou_b=miou_b,
        summary_a=seed_summary(miou_a),
        summary_b=seed_summary(miou_b),
        paired_by=paired_by,
        seed_test=seed_tests["miou"],
        bootstrap=bootstrap,
        split=runs_a[0].eval_split,
        checkpoint=runs_a[0].eval_checkpoint,
        seeds_a=[r.seed for r in runs_a],
        seeds_b=[r.seed for r in runs_b],
        metrics_a=metrics_a,
        metrics_b=metrics_b,
        seed_tests=seed_tests,
        boundary=boundary,
        boundary_note=note,
        warnings=pairing_notes + _run_warnings(runs_a, runs_b, resample_runs),
    )


def _pt(x: float) -> str:
    """IoU (0..1) as signed percentage points."""
    return f"{100 * x:+.2f}"


def _cell(values: Sequence[float], key: str) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values) or not finite:
        return "–"
    scale, digits = (1.0, 4) if key == "val_ar" else (100.0, 2)
    return seed_summary(finite).format(scale=scale, digits=digits)


def _difference_line(name: str, bs: BootstrapResult, t: PairedTest | None) -> str:
    pct = round(100 * bs.level)
    verdict = "excludes 0" if bs.excludes_zero else "includes 0"
    sampled = "images and seed pairs" if bs.resample_runs else "images only"
    line = (
        f"{name} B - A: {_pt(bs.delta)} points; {pct}% paired bootstrap interval "
        f"[{_pt(bs.ci_low)}, {_pt(bs.ci_high)}] ({verdict}), p = {bs.p_value:.3g} "
        f"({bs.n_boot} resamples of the {sampled}, seed {bs.seed})"
    )
    if t is not None:
        line += (
            f"; seed-level paired t({t.df}) interval [{_pt(t.ci_low)}, {_pt(t.ci_high)}], "
            f"p = {t.p_value:.3g}"
        )
    return line


def format_comparison(cmp: Comparison, *, markdown: bool = False) -> str:
    """A human-readable report of a comparison (plain text or Markdown), IoU in %."""
    bs = cmp.bootstrap
    pct = round(100 * bs.level)
    lines: list[str] = []
    a, b = cmp.label_a, cmp.label_b
    lines.append(
        f"A = {a}: {len(cmp.runs_a)} run(s); B = {b}: {len(cmp.runs_b)} run(s); "
        f"{bs.n_images} images of split {cmp.split!r} ({cmp.checkpoint} checkpoint)"
    )
    lines.append("")
    header = ("arm", "runs", *(f"{name} (mean ± std)" for name in METRICS.values()))
    header = (*header[:2], header[2].replace("mIoU", "mIoU %"), *header[3:])
    rows = [header]
    for label, runs, metrics in ((a, cmp.runs_a, cmp.metrics_a), (b, cmp.runs_b, cmp.metrics_b)):
        rows.append((label, str(len(runs)), *(_cell(metrics.get(k, []), k) for k in METRICS)))
    lines += _table(rows, markdown)
    lines.append("(IoU and pixel accuracy in %; AR loss as evaluated)")
    lines.append("")
    lines.append(_difference_line("mIoU", bs, cmp.seed_test))
    if cmp.boundary is not None:
        lines.append(
            _difference_line("Boundary IoU", cmp.boundary, cmp.seed_tests.get("boundary_iou"))
        )
    elif cmp.boundary_note:
        lines.append(cmp.boundary_note)
    if cmp.seed_test is None:
        lines.append("Across runs: no paired test (it needs >= 2 paired runs per arm).")
    else:
        t = cmp.seed_test
        lines.append(
            f"Across runs (paired by {cmp.paired_by}): mIoU difference {_pt(t.mean_diff)} ± "
            f"{100 * t.std_diff:.2f} points, paired t({t.df}) = {t.t_value:.3f}, p = {t.p_value:.3g}"
        )
    carried = leave_out_gains(bs.per_class)["without_top"]
    if carried:
        lines.append(
            "Without the classes that move most: "
            + "; ".join(f"without {', '.join(c['classes'])} {_pt(c['delta'])}" for c in carried)
            + " points (mIoU difference over the other classes)"
        )
    lines.append(f"Verdict: {cmp.verdict}")
    for warning in cmp.warnings:
        lines.append(f"Warning: {warning}")
    lines.append("")
    header = ["class", f"IoU {a} %", f"IoU {b} %", "B - A", f"{pct}% interval"]
    if cmp.boundary is not None:
        header += ["Boundary IoU B - A", f"{pct}% interval"]
    rows = [tuple(header)]
    boundary_classes = (
        cmp.boundary.per_class if cmp.boundary is not None else [None] * len(bs.per_class)
    )
    for c, bc in zip(bs.per_class, boundary_classes):
        row = [
            c.name,
            f"{100 * c.iou_a:.2f}",
            f"{100 * c.iou_b:.2f}",
            _pt(c.delta) + _star(c.ci_low, c.ci_high),
            f"[{_pt(c.ci_low)}, {_pt(c.ci_high)}]",
        ]
        if bc is not None:
            row += [
                _pt(bc.delta) + _star(bc.ci_low, bc.ci_high),
                f"[{_pt(bc.ci_low)}, {_pt(bc.ci_high)}]",
            ]
        rows.append(tuple(row))
    lines += _table(rows, markdown)
    lines.append("(* = interval excludes 0)")
    return "\n".join(lines)


def _star(low: float, high: float) -> str:
    return " *" if (low > 0 or high < 0) else ""


def _table(rows: list[tuple[str, ...]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return out
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
