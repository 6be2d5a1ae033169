"""The report page of an arena (``arseg arena``): the answer first, then the usual report.

:func:`build_arena_report` writes the page of :func:`arseg.analysis.report.build_report` for
CE only and the recommended term (their first seed: configs, results, per-class IoU, curves),
with the arena's sections on top: the ranked table and the recommendation, the forest plot of
every term and weight, each term's weight curve, the per-class gains of the recommended term
(of the top-ranked one when none helps) and the images where it changes the prediction most
(the largest change in correctly labelled pixels, averaged over the seed pairs, from the
evaluations' per-image confusion matrices), drawn as the report's overlays.

The answer is plain data (``arseg.study.arena_answer.build_answer``); this module knows nothing
of studies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arseg.analysis.figures import plot_arm_deltas, plot_class_deltas, plot_overlays
from arseg.analysis.report import ReportPage, ReportPaths, build_report
from arseg.analysis.runs import Run, RunError, load_run
from arseg.analysis.trend import warn

__all__ = ["build_arena_report", "most_changed_images"]


def most_changed_images(
    control: Sequence[Run], other: Sequence[Run], k: int
) -> list[tuple[int, float]]:
    """The ``k`` images whose share of correctly labelled pixels changes most from ``control``
    to ``other`` (runs paired by position, the change averaged over the pairs), largest change
    first: ``[(image index, change in the fraction of labelled pixels)]``."""
    changes = []
    for a, b in zip(control, other):
        ca, cb = a.confusion(), b.confusion()
        labelled = np.maximum(ca.sum(axis=(1, 2)), 1)
        correct_a = np.trace(ca, axis1=1, axis2=2)
        correct_b = np.trace(cb, axis1=1, axis2=2)
        changes.append((correct_b - correct_a) / labelled)
    if not changes:
        return []
    mean = np.mean(changes, axis=0)
    order = np.argsort(-np.abs(mean), kind="stable")[:k]
    return [(int(i), float(mean[i])) for i in order]


def _pt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.2f}"


def _answer_sections(
    answer: Mapping[str, Any],
    table: str,
    recommendation: str,
    top: Mapping[str, Any] | None,
    top_cmp: Any,
    control: Sequence[Run],
    other: Sequence[Run],
    num_images: int,
    data_root: str | Path | None,
) -> Callable[[ReportPage], None]:
    def sections(page: ReportPage) -> None:
        split, confirm = answer["split"], answer["confirm_split"]
        page.heading("The answer")
        page.note(recommendation)
        header, rows = _table_rows(table)
        if header:
            page.table(header, rows)
        for line in _notes(table):
            page.paragraph(line)

        ranked = [r for r in answer["rows"] if r["curve"]]
        panels = {
            f"{split}: every weight": [
                (f"{r['label']} {w:g}", d, lo, hi) for r in ranked for w, d, lo, hi in r["curve"]
            ]
        }
        picked = [r for r in answer["rows"] if r["confirm"]]
        if confirm and picked:
            panels[f"{confirm}: the picked weights"] = [
                (f"{r['label']} {r['weight']:g}", r["confirm"]["gain"], r["confirm"]["low"],
                 r["confirm"]["high"])
                for r in picked
            ]  # fmt: skip
        if ranked:
            page.heading("Every term and weight against CE only")
            page.figure(
                plot_arm_deltas(panels, control="CE only"),
                "arena-forest",
                "mIoU gain over CE only of every term at every weight (dot: gain; bar: 95% "
                "two-level bootstrap interval; orange: excludes 0)",
            )
            page.heading("Weight curves")
            for r in ranked:
                x = [c[0] for c in r["curve"]]
                page.figure(
                    plot_arm_deltas(
                        {r["label"]: [(f"{c[0]:g}", *c[1:]) for c in r["curve"]]},
                        control="CE only",
                        x=x,
                        xlabel="weight",
                        log_x=len(x) > 1 and max(x) / min(x) >= 10,
                    ),
                    f"arena-curve-{r['term']}",
                    f"{r['label']}: mIoU gain over CE only against the weight ({split})",
                )
        if top is None or top_cmp is None:
            return
        which = (
            "recommended"
            if answer["recommended"] == top["term"]
            else "top-ranked (not recommended)"
        )
        title = f"{top['arm_label']}, the {which} term"
        bs = top_cmp.bootstrap
        page.heading(f"Per class: {title} ({top_cmp.split})")
        page.table(
            ["class", "IoU CE only %", f"IoU {top['arm_label']} %", "gain", "95% interval"],
            [
                [c.name, f"{100 * c.iou_a:.2f}", f"{100 * c.iou_b:.2f}", _pt(c.delta),
                 f"[{_pt(c.ci_low)}, {_pt(c.ci_high)}]"]
                for c in bs.per_class
            ],
        )  # fmt: skip
        page.figure(
            plot_class_deltas(
                [c.name for c in bs.per_class],
                [c.delta for c in bs.per_class],
                [c.ci_low for c in bs.per_class],
                [c.ci_high for c in bs.per_class],
                overall=(bs.delta, bs.ci_low, bs.ci_high),
                label=f"{top['arm_label']} − CE only",
                level=bs.level,
            ),
            "arena-per-class",
            f"Per-class IoU gain of {top['arm_label']} over CE only ({top_cmp.split}, seeds "
            "paired)",
        )
        if num_images > 0:
            _changed_images(page, title, control, other, num_images, data_root)

    return sections


def _table_rows(markdown: str) -> tuple[list[str], list[list[str]]]:
    """The ranked table of the answer's Markdown as header and rows."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")]
    if len(lines) < 2:
        return [], []
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def _notes(markdown: str) -> list[str]:
    """The answer's paragraphs below its table (the recommendation excluded)."""
    return [
        line.strip()
        for line in markdown.splitlines()
        if line.strip() and not line.startswith(("|", "#", "answer:"))
    ]


def _changed_images(
    page: ReportPage,
    title: str,
    control: Sequence[Run],
    other: Sequence[Run],
    k: int,
    data_root: str | Path | None,
) -> None:
    import torch

    from arseg.analysis.affinity import dataset_samples, load_models_and_dataset, to_display_image

    try:
        picked = most_changed_images(control, other, k)
        models, _, dataset = load_models_and_dataset(
            [control[0].checkpoint("best"), other[0].checkpoint("best")],
            split=control[0].eval_split,
            data_root=data_root,
        )
    except (ImportError, OSError, RunError, ValueError) as err:
        warn(f"images where the term changes the prediction skipped: {err}")
        page.paragraph(f"Images skipped: {err}")
        return
    if not picked:
        return
    from arseg.engine import predict_logits

    samples = dataset_samples(dataset, [i for i, _ in picked])
    labels = [f"CE only (seed {control[0].seed})", f"{title.split(',')[0]} (seed {other[0].seed})"]
    preds: dict[str, list[np.ndarray]] = {label: [] for label in labels}
    with torch.inference_mode():
        for image, _, _ in samples:
            for label, model in zip(labels, models):
                preds[label].append(predict_logits(model, image[None])[0].argmax(0).cpu().numpy())
    classes = list(getattr(dataset, "classes", [])) or [
        f"class {c}" for c in range(int(max(p.max() for v in preds.values() for p in v)) + 1)
    ]
    page.heading(f"Where {title.split(',')[0]} changes the prediction most")
    page.figure(
        plot_overlays(
            [to_display_image(s[0]) for s in samples],
            [s[1].numpy() for s in samples],
            preds,
            classes=classes,
            palette=getattr(dataset, "palette", None) or None,
            ignore_index=int(getattr(dataset, "ignore_index", 255)),
            titles=[f"{s[2]}: {100 * d:+.1f} % pixels right" for s, (_, d) in zip(samples, picked)],
        ),
        "arena-changed",
        "The images whose correctly labelled pixels change most (mean over the seed pairs): "
        "input, ground truth, CE only and the term (first seed)",
    )


def build_arena_report(
    answer: Mapping[str, Any],
    table: str,
    recommendation: str,
    out_dir: str | Path,
    *,
    control_runs: Sequence[str | Path],
    top_runs: Sequence[str | Path],
    top_cmp: Any = None,
    split: str,
    num_images: int = 3,
    data_root: str | Path | None = None,
    n_boot: int = 10_000,
) -> ReportPaths:
    """Write the arena's page (``out_dir/report.html`` and ``report.md``).

    Args:
        answer: the arena's answer (``rows``, ``recommended``, ``split``, ``confirm_split``).
        table, recommendation: its Markdown table with notes, and its last line.
        control_runs, top_runs: the seed runs of CE only and of the recommended (or top-ranked)
            arm, paired by position; the first of each heads the report below the answer.
        top_cmp: that arm's :class:`~arseg.analysis.compare.Comparison` with CE only on
            ``split`` (its per-class gains).
        split: the split whose evaluations are shown (the confirm split when there is one).
    """
    control = [load_run(p, split=split) for p in control_runs]
    other = [load_run(p, split=split) for p in top_runs]
    top = next((r for r in answer["rows"] if r["term"] == answer["recommended"]), None)
    if top is None and answer["rows"] and answer["rows"][0]["arm"]:
        top = answer["rows"][0]
    sections = _answer_sections(
        answer, table, recommendation, top, top_cmp, control, other, num_images, data_root
    )
    runs = [control[0], other[0]] if other else control[:1]
    labels = ["CE only"] + ([top["arm_label"]] if top is not None and other else [])
    return build_report(
        runs,
        out_dir,
        labels=[f"{label} (seed {r.seed})" for label, r in zip(labels, runs)],
        title=f"arseg arena {answer['arena']}",
        images=False,
        split=split,
        n_boot=n_boot,
        sections=sections,
    )
