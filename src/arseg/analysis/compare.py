"""``arseg compare``: is the mIoU gain of arm B over arm A real or noise?

Two arms (e.g. a CE-only fine-tune and a CE + AR fine-tune), each one run or several seeds,
evaluated by ``arseg eval`` on the same validation images. Reported:

* the mIoU difference B - A with a paired bootstrap interval over validation images
  (all runs of both arms resampled with the same images);
* per-class IoU differences with their bootstrap intervals;
* across seeds: mean ± std of each arm and a paired t-test (pairs = same seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from arseg.analysis.runs import Run, RunError
from arseg.analysis.stats import (
    BootstrapResult,
    PairedTest,
    SeedSummary,
    miou_from_confusion,
    paired_bootstrap,
    paired_seed_test,
    seed_summary,
)

__all__ = ["Comparison", "compare_runs", "format_comparison"]


@dataclass(frozen=True)
class Comparison:
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

    def as_dict(self) -> dict[str, object]:
        bs = self.bootstrap
        return {
            "arm_a": {
                "label": self.label_a,
                "runs": self.runs_a,
                "miou": self.miou_a,
                "mean": self.summary_a.mean,
                "std": self.summary_a.std,
            },
            "arm_b": {
                "label": self.label_b,
                "runs": self.runs_b,
                "miou": self.miou_b,
                "mean": self.summary_b.mean,
                "std": self.summary_b.std,
            },
            "delta_miou": bs.delta,
            "bootstrap": {
                "level": bs.level,
                "ci_low": bs.ci_low,
                "ci_high": bs.ci_high,
                "p_value": bs.p_value,
                "n_boot": bs.n_boot,
                "n_images": bs.n_images,
                "seed": bs.seed,
                "excludes_zero": bs.excludes_zero,
                "resample_runs": bs.resample_runs,
            },
            "paired_by": self.paired_by,
            "seed_test": None
            if self.seed_test is None
            else {
                "mean_diff": self.seed_test.mean_diff,
                "std_diff": self.seed_test.std_diff,
                "t_value": self.seed_test.t_value,
                "p_value": self.seed_test.p_value,
                "df": self.seed_test.df,
            },
            "per_class": [
                {
                    "class": c.name,
                    "iou_a": c.iou_a,
                    "iou_b": c.iou_b,
                    "delta": c.delta,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                }
                for c in bs.per_class
            ],
        }


def _pair(runs_a: list[Run], runs_b: list[Run]) -> tuple[list[Run], list[Run], str]:
    seeds_a = [r.seed for r in runs_a]
    seeds_b = [r.seed for r in runs_b]
    if (
        None not in seeds_a
        and None not in seeds_b
        and len(set(seeds_a)) == len(seeds_a)
        and sorted(seeds_a) == sorted(seeds_b)
    ):
        by_seed = {r.seed: r for r in runs_b}
        return runs_a, [by_seed[r.seed] for r in runs_a], "seed"
    if None not in seeds_a and None not in seeds_b and len(runs_a) == len(runs_b) > 1:
        # Seeds are known but do not match one to one: say so rather than pair silently.
        return runs_a, runs_b, f"order (the seeds differ: A {seeds_a}, B {seeds_b})"
    return runs_a, runs_b, "order"


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

    Raises:
        RunError: if a run has no ``eval/per_image_confusion.npy`` or the arms were evaluated
            on different images / classes.
    """
    runs_a, runs_b = list(runs_a), list(runs_b)
    if not runs_a or not runs_b:
        raise RunError("each arm needs at least one run")
    runs_a, runs_b, paired_by = _pair(runs_a, runs_b)
    confs_a = [r.confusion() for r in runs_a]
    confs_b = [r.confusion() for r in runs_b]
    shapes = {c.shape for c in confs_a + confs_b}
    if len(shapes) != 1:
        detail = ", ".join(
            f"{r.path}: {c.shape}" for r, c in zip(runs_a + runs_b, confs_a + confs_b)
        )
        raise RunError(f"runs were evaluated on different images or classes ({detail})")
    classes = next((r.classes for r in runs_a + runs_b if r.classes), None)
    n_classes = confs_a[0].shape[-1]
    if classes is not None and len(classes) != n_classes:
        classes = None
    miou_a = [float(miou_from_confusion(c.sum(0))) for c in confs_a]
    miou_b = [float(miou_from_confusion(c.sum(0))) for c in confs_b]
    bootstrap = paired_bootstrap(
        np.stack(confs_a),
        np.stack(confs_b),
        n_boot=n_boot,
        level=level,
        seed=seed,
        class_names=classes,
        # with several paired seeds, resample them too: the interval then covers training noise
        resample_runs=len(confs_a) == len(confs_b) >= 2,
    )
    test = paired_seed_test(miou_a, miou_b) if len(miou_a) == len(miou_b) else None
    if len(miou_a) != len(miou_b):
        paired_by = "unpaired (different numbers of runs)"
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
        seed_test=test,
        bootstrap=bootstrap,
    )


def _pt(x: float) -> str:
    """IoU (0..1) as signed percentage points."""
    return f"{100 * x:+.2f}"


def format_comparison(cmp: Comparison, *, markdown: bool = False) -> str:
    """A human-readable report of a comparison (plain text or Markdown), mIoU in %."""
    bs = cmp.bootstrap
    pct = round(100 * bs.level)
    lines: list[str] = []
    a, b = cmp.label_a, cmp.label_b
    lines.append(
        f"A = {a}: {len(cmp.runs_a)} run(s); B = {b}: {len(cmp.runs_b)} run(s); "
        f"{bs.n_images} validation images"
    )
    lines.append("")
    rows = [
        ("arm", "runs", "mIoU % (mean ± std over runs)", "per run"),
        (
            a,
            str(len(cmp.runs_a)),
            cmp.summary_a.format(),
            ", ".join(f"{100 * m:.2f}" for m in cmp.miou_a),
        ),
        (
            b,
            str(len(cmp.runs_b)),
            cmp.summary_b.format(),
            ", ".join(f"{100 * m:.2f}" for m in cmp.miou_b),
        ),
    ]
    lines += _table(rows, markdown)
    lines.append("")
    verdict = "excludes 0" if bs.excludes_zero else "includes 0: no evidence of a difference"
    lines.append(
        f"mIoU B - A: {_pt(bs.delta)} points, {pct}% paired bootstrap interval "
        f"[{_pt(bs.ci_low)}, {_pt(bs.ci_high)}] ({verdict}); bootstrap p = {bs.p_value:.3g} "
        f"({bs.n_boot} resamples of the images"
        f"{' and of the seed pairs' if bs.resample_runs else ''}, seed {bs.seed})"
    )
    if cmp.seed_test is None:
        lines.append("Across runs: no paired test (it needs >= 2 runs per arm).")
    else:
        t = cmp.seed_test
        lines.append(
            f"Across runs (paired by {cmp.paired_by}): mean difference {_pt(t.mean_diff)} ± "
            f"{100 * t.std_diff:.2f} points, paired t({t.df}) = {t.t_value:.3f}, p = {t.p_value:.3g}"
        )
    lines.append("")
    rows = [("class", f"IoU {a} %", f"IoU {b} %", "B - A", f"{pct}% interval")]
    for c in bs.per_class:
        mark = " *" if (c.ci_low > 0 or c.ci_high < 0) else ""
        rows.append(
            (
                c.name,
                f"{100 * c.iou_a:.2f}",
                f"{100 * c.iou_b:.2f}",
                _pt(c.delta) + mark,
                f"[{_pt(c.ci_low)}, {_pt(c.ci_high)}]",
            )
        )
    lines += _table(rows, markdown)
    lines.append("(* = interval excludes 0)")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return out
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
