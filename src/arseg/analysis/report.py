"""``arseg report``: one self-contained HTML page and a Markdown summary for some runs.

The page holds: each run's config, a results table, per-class IoU (table and chart), the
training curves (Figure 3), the AR-loss trend (Table 2), the paired comparison of every run
against the first (bootstrap over images, when the runs were evaluated with ``arseg eval``),
the affinity heat maps (Figure 4) and prediction overlays (Figure 2) when checkpoints exist.

Figures are embedded in the HTML as base64 PNGs (the page needs no other file) and written as
PNGs beside the Markdown summary, which links them.

Example:
    >>> from arseg.analysis.report import build_report  # doctest: +SKIP
    >>> build_report(["runs/demo/finetune_ce", "runs/demo/finetune_ar"], "runs/demo/report")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from arseg.analysis.compare import compare_runs, format_comparison
from arseg.analysis.figures import (
    plot_class_deltas,
    plot_curves,
    plot_overlays,
    plot_per_class_iou,
)
from arseg.analysis.runs import Run, RunError
from arseg.analysis.trend import curve_data, init_warnings_once, trend_of_run, warn

__all__ = ["ReportPage", "ReportPaths", "build_report"]


# --------------------------------------------------------------------- page builder
class ReportPage:
    """Appends the same content to an HTML body and a Markdown document."""

    def __init__(self, fig_dir: Path, md_dir: Path) -> None:
        self.html: list[str] = []
        self.md: list[str] = []
        self.fig_dir = fig_dir
        self.md_dir = md_dir
        self.figures: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        anchor = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
        self.html.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
        self.md += ["#" * level + " " + text, ""]

    def paragraph(self, text: str) -> None:
        self.html.append(f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def note(self, text: str) -> None:
        """A paragraph set apart as a caveat (HTML class ``note``, bold in Markdown)."""
        self.html.append(f'<p class="note">{html.escape(text)}</p>')
        self.md += [f"**{text}**", ""]

    def pre(self, text: str) -> None:
        self.html.append(f"<pre>{html.escape(text)}</pre>")
        self.md += ["```", text, "```", ""]

    def details(self, summary: str, text: str) -> None:
        self.html.append(
            f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"
        )
        self.md += [
            f"<details><summary>{summary}</summary>",
            "",
            "```yaml",
            text,
            "```",
            "",
            "</details>",
            "",
        ]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
        )
        self.html.append(f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>")
        self.md.append("| " + " | ".join(map(_md_cell, header)) + " |")
        self.md.append("|" + "|".join(" --- " for _ in header) + "|")
        self.md += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
        self.md.append("")

    def figure(self, fig, name: str, caption: str) -> None:
        import base64

        import matplotlib.pyplot as plt

        self.fig_dir.mkdir(parents=True, exist_ok=True)
        png = self.fig_dir / f"{name}.png"
        buf = io.BytesIO()  # rendered once: written beside the Markdown and embedded in the HTML
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        png.write_bytes(buf.getvalue())
        self.figures.append(png)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self.html.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        rel = png.relative_to(self.md_dir) if png.is_relative_to(self.md_dir) else png
        self.md += [f"![{caption}]({rel.as_posix()})", "", f"*{caption}*", ""]


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1a1a1a; background: #ffffff; line-height: 1.45; }
h1 { border-bottom: 3px solid #0072B2; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
th { background: #e8f0f8; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f6f6f6; }
pre { background: #f4f4f4; padding: .7em; overflow-x: auto; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
.note { color: #8a4b00; }
"""


def _fmt(value: float, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if "miou" in key or "pixel_acc" in key or "boundary" in key:
        return f"{100 * value:.2f}"
    if key == "steps":
        return f"{int(value)}"
    if "time" in key:
        return f"{value:.1f}"
    return f"{value:.4f}"


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: list[Path]


def _md_cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped (it would start a new column), no line breaks."""
    return text.replace("|", "\\|").replace("\n", " ")


def _slug(text: str) -> str:
    """A file-name-safe form of a run label: ``CE + AR`` -> ``ce-plus-ar``, ``ar/seed1`` ->
    ``ar-seed1`` (letters, digits and single hyphens)."""
    text = text.lower().replace("+", " plus ").replace("−", "-")
    out, dash = [], False
    for ch in text:
        if ch.isascii() and ch.isalnum():
            out.append(ch)
            dash = False
        elif not dash and out:
            out.append("-")
            dash = True
    return "".join(out).strip("-") or "run"


def build_report(
    runs: Sequence[Run | str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str = "arseg report",
    num_images: int = 3,
    split: str | None = None,
    images: bool = True,
    n_boot: int = 10_000,
    seed: int = 0,
    scales=(12, 6),
    checkpoint: str = "best",
    data_root: str | Path | None = None,
    sections: Callable[[ReportPage], None] | None = None,
) -> ReportPaths:
    """Write ``out_dir/report.html`` (self-contained), ``out_dir/report.md`` and its figures.

    Args:
        runs: run directories; the first is the reference (baseline) of the comparisons and the
            first prediction column.
        labels: display names, all different (default: the directory names, with parent
            folders added where two are the same).
        num_images: validation images in the heat maps and overlays (0 = none).
        split: the evaluation split read (``RUN/eval/<split>``) and the images shown (default:
            each run's ``data.val_split``).
        images: load checkpoints to draw heat maps and overlays (needs the engine and the data).
        n_boot, seed: bootstrap settings of the comparisons.
        checkpoint: ``best`` or ``last``: whose evaluation is read (``RUN/eval/<split>-last``
            for last) and which checkpoint draws the heat maps and overlays.
        data_root: the dataset root for the heat maps and overlays, if it moved since training.
        sections: adds sections of the caller's (e.g. an arena's answer) to the page, right
            after its title.
    """
    from arseg import __version__
    from arseg.analysis.runs import distinct_labels, load_run

    runs = [
        r if isinstance(r, Run) else load_run(r, split=split, checkpoint=checkpoint) for r in runs
    ]
    if not runs:
        raise ValueError("build_report needs at least one run")
    current = [r.label for r in runs]
    if labels is None and len(set(current)) < len(current):
        labels = distinct_labels([r.path for r in runs])
    elif labels is not None:
        labels = distinct_labels([r.path for r in runs], labels)
    for run, label in zip(runs, labels or current):
        run.label = label
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page = ReportPage(out_dir / "figures", out_dir)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    page.heading(title, 1)
    page.paragraph(f"Generated by arseg {__version__} on {now} from {len(runs)} run(s).")
    page.paragraph(
        f"Evaluation results (`arseg eval`): split {runs[0].eval_split!r}, "
        f"{runs[0].eval_checkpoint} checkpoint."
    )
    if sections is not None:
        sections(page)

    # runs and configs
    page.heading("Runs")
    page.table(
        ["label", "directory", "seed"],
        [[r.label, str(r.path), str(r.seed) if r.seed is not None else "–"] for r in runs],
    )
    for r in runs:
        if r.config:
            page.details(f"config of {r.label}", yaml.safe_dump(r.config, sort_keys=False).rstrip())

    # results
    page.heading("Results")
    results = {r.label: r.results() for r in runs}
    keys: list[str] = []
    for res in results.values():
        keys += [k for k in res if k not in keys]
    if keys:
        page.table(
            ["run", *keys],
            [
                [label, *(_fmt(res.get(k, math.nan), k) for k in keys)]
                for label, res in results.items()
            ],
        )
        page.paragraph(
            "mIoU, Boundary IoU (Cheng et al. 2021, band width 2% of the image diagonal) and "
            "pixel accuracy in %; AR loss as logged; 'eval' columns from `arseg eval`."
        )
    else:
        page.paragraph("No summary.json or eval/metrics.json found.")

    # per-class IoU
    per_class = {r.label: r.per_class_iou() for r in runs}
    per_class = {k: v for k, v in per_class.items() if v}
    if per_class:
        page.heading("Per-class IoU")
        classes: list[str] = []
        for v in per_class.values():
            classes += [c for c in v if c not in classes]
        page.table(
            ["class", *per_class],
            [[c, *(_fmt(v.get(c, math.nan), "miou") for v in per_class.values())] for c in classes],
        )
        page.figure(plot_per_class_iou(per_class), "per_class_iou", "Per-class IoU (%) of each run")
    per_class_b = {r.label: r.per_class_boundary_iou() for r in runs}
    per_class_b = {k: v for k, v in per_class_b.items() if v}
    if per_class_b:
        page.heading("Per-class Boundary IoU")
        classes_b: list[str] = []
        for v in per_class_b.values():
            classes_b += [c for c in v if c not in classes_b]
        page.table(
            ["class", *per_class_b],
            [
                [c, *(_fmt(v.get(c, math.nan), "boundary") for v in per_class_b.values())]
                for c in classes_b
            ],
        )

    # comparisons against the first run
    evaluated = [r for r in runs if r.has_eval]
    if len(runs) > 1 and runs[0] not in evaluated:
        page.heading("Paired comparison")
        page.paragraph(
            f"No paired comparison: the reference run {runs[0].label} has no per-image confusion "
            f"matrices for split {runs[0].eval_split!r} (run `{runs[0].eval_command}` first)."
        )
    used_names: set[str] = set()
    if len(runs) > 1 and runs[0] in evaluated:
        page.heading("Paired comparison")
        for other in runs[1:]:
            if other not in evaluated:
                page.paragraph(f"{other.label}: not evaluated (run `{other.eval_command}`).")
                continue
            try:
                cmp = compare_runs(
                    [runs[0]],
                    [other],
                    n_boot=n_boot,
                    seed=seed,
                    label_a=runs[0].label,
                    label_b=other.label,
                )
            except (RunError, ValueError) as err:
                page.paragraph(f"{other.label}: comparison impossible: {err}")
                continue
            page.heading(f"{other.label} vs {runs[0].label}", 3)
            for warning in cmp.warnings:
                page.note(f"Warning: {warning}")
            page.pre(format_comparison(cmp))
            bs = cmp.bootstrap
            fig = plot_class_deltas(
                [c.name for c in bs.per_class],
                [c.delta for c in bs.per_class],
                [c.ci_low for c in bs.per_class],
                [c.ci_high for c in bs.per_class],
                overall=(bs.delta, bs.ci_low, bs.ci_high),
                label=f"{other.label} − {runs[0].label}",
                level=bs.level,
            )
            name = f"delta-{_slug(other.label)}-vs-{_slug(runs[0].label)}"
            stem, k = name, 2
            while name in used_names:  # two labels with the same slug
                name, k = f"{stem}-{k}", k + 1
            used_names.add(name)
            page.figure(
                fig,
                name,
                f"IoU difference {other.label} − {runs[0].label}: dots = difference of the pooled "
                f"IoU, bars = {round(100 * bs.level)}% paired bootstrap interval",
            )

    # curves and trend
    curves = {r.label: curve_data(r) for r in runs if r.has_metrics}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        page.heading("Training curves")
        page.figure(
            plot_curves(curves),
            "curves",
            "Validation mIoU per epoch and AR loss per iteration (Figure 3)",
        )
        trend_rows = []
        trends = []
        with init_warnings_once():  # fine-tunes of one missing baseline: one line
            for r in runs:
                if not r.has_series("train/ar"):
                    continue
                try:
                    trends.append((r, trend_of_run(r)))
                except (RunError, ValueError) as err:
                    warn(f"no trend for {r.label}: {err}")
        for r, t in trends:
            trend_rows.append(
                [
                    r.label,
                    f"{t.ols.intercept:.4e}",
                    f"{t.ols.slope:.4e}",
                    f"{t.ols.std_error[1]:.3e}",
                    f"{t.ols.t_value[1]:.2f}",
                    f"{t.ols.p_value[1]:.3g}",
                    "–" if t.val_change_pct is None else f"{t.val_change_pct:+.1f}",
                ]
            )
        if trend_rows:
            page.heading("AR loss trend (OLS on the iteration)", 3)
            page.table(
                [
                    "run",
                    "intercept",
                    "slope",
                    "slope std. error",
                    "t value",
                    "Pr(>|t|)",
                    "val AR change %",
                ],
                trend_rows,
            )

    # heat maps and overlays
    if images and num_images > 0:
        _image_sections(
            page,
            runs,
            num_images=num_images,
            split=split,
            scales=scales,
            checkpoint=checkpoint,
            data_root=data_root,
        )

    html_path = out_dir / "report.html"
    html_path.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(page.html)
        + "\n</body></html>\n",
        encoding="utf-8",
    )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(page.md).rstrip() + "\n", encoding="utf-8")
    return ReportPaths(html_path, md_path, page.figures)


def _image_sections(
    page: ReportPage,
    runs: Sequence[Run],
    *,
    num_images: int,
    split: str | None,
    scales,
    checkpoint: str = "best",
    data_root: str | Path | None = None,
) -> None:
    import torch

    from arseg.analysis.affinity import (
        affinity_figure,
        compute_affinity_panels,
        dataset_samples,
        load_models_and_dataset,
        to_display_image,
    )

    with_ckpt = []
    for r in runs:
        try:
            with_ckpt.append((r, r.checkpoint(checkpoint)))
        except RunError as err:
            warn(f"{r.label}: {err}; left out of the heat maps and overlays")
    if not with_ckpt:
        return
    try:
        models, _, dataset = load_models_and_dataset(
            [c for _, c in with_ckpt], split=split, data_root=data_root
        )
    except (ImportError, OSError, RunError) as err:
        warn(f"heat maps and overlays skipped: {err}")
        page.paragraph(f"Heat maps and overlays skipped: {err}")
        return
    n = min(num_images, len(dataset))
    # spread the images over the split so they are not all near-duplicates of one scene
    indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, n).round()})
    samples = dataset_samples(dataset, indices)
    named = {r.label: m for (r, _), m in zip(with_ckpt, models)}
    ignore_index = int(getattr(dataset, "ignore_index", 255))

    page.heading("Affinity heat maps")
    panels = compute_affinity_panels(named, samples, scales=scales, ignore_index=ignore_index)
    page.figure(
        affinity_figure(panels, scales=scales),
        "affinity",
        "Label affinity M and square-root affinity A of each model (Figure 4); grey = ignored",
    )

    from arseg.engine import predict_logits

    page.heading("Predictions")
    preds: dict[str, list[np.ndarray]] = {label: [] for label in named}
    with torch.inference_mode():
        for image, _, _ in samples:
            for label, model in named.items():
                preds[label].append(predict_logits(model, image[None])[0].argmax(0).cpu().numpy())
    classes = list(getattr(dataset, "classes", [])) or [
        f"class {k}" for k in range(int(max(p.max() for v in preds.values() for p in v)) + 1)
    ]
    fig = plot_overlays(
        [to_display_image(s[0]) for s in samples],
        [s[1].numpy() for s in samples],
        preds,
        classes=classes,
        palette=getattr(dataset, "palette", None) or None,
        ignore_index=ignore_index,
        titles=[s[2] for s in samples],
    )
    page.figure(fig, "overlays", "Input, ground truth and the prediction of each model (Figure 2)")
