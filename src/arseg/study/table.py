"""The analysis of a finished study: every arm against the control, the trends, the report and
the final table, built from :mod:`arseg.analysis`'s objects.

Written into the study directory: ``compare/<split>/<arm>_vs_<control>_<best|last>.{md,json}``,
``trend/<arm>.{md,json}``, ``report/<split>/`` and ``summary_<split>.{md,json}``. A step that
fails (a damaged record, which is named in one line) does not stop the others: the table holds
what could be read, and :class:`~arseg.study.config.StudyError` then says what is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from arseg.rundir import RunDir, write_json

from .config import StudyConfig, StudyError

__all__ = ["AnalysisErrors", "analyse", "compare_arms", "provenance_line", "study_table"]


def provenance_line() -> str:
    """``arseg 0.1.0 at <commit>; torch ...; python ...; N CPUs``: what produced the numbers."""
    from arseg.engine.provenance import provenance

    p = provenance()
    commit = p.get("git_commit") or "not a git checkout"
    if p.get("git_dirty"):
        commit += " (with uncommitted changes)"
    return (
        f"arseg {p['arseg_version']} at {commit}; torch {p['torch_version']}; "
        f"python {p['python_version']}; {p['cpu_count']} CPUs"
    )


class AnalysisErrors:
    """Error lines of an analysis, each shown once (a damaged file is named once): ``damaged``
    files and ``failed`` steps."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.damaged: list[str] = []
        self.failed: list[str] = []

    def show(self, message: str) -> None:
        line = f"arseg: error: {message}"
        if line not in self.seen:
            self.seen.add(line)
            print(line, file=sys.stderr, flush=True)


def compare_arms(
    study: StudyConfig,
    out: Path,
    split: str,
    errors: AnalysisErrors,
    checkpoints: tuple[str, ...] = ("best", "last"),
) -> dict[str, Any]:
    """Every arm against the control at each checkpoint: ``{"<arm>/<checkpoint>": cmp}``
    (written to ``OUT/compare/<split>/``; a failed one is named in ``errors``)."""
    from arseg.analysis.compare import compare_runs, format_comparison
    from arseg.analysis.runs import expand_run_group

    control = study.control
    cmp_dir = out / "compare" / split
    cmp_dir.mkdir(parents=True, exist_ok=True)
    comparisons: dict[str, Any] = {}
    for arm in study.arms:
        if arm == control:
            continue
        for checkpoint in checkpoints:
            json_path = cmp_dir / f"{arm}_vs_{control}_{checkpoint}.json"
            try:
                cmp = compare_runs(
                    expand_run_group(out / control, split=split, checkpoint=checkpoint),
                    expand_run_group(out / arm, split=split, checkpoint=checkpoint),
                    n_boot=study.n_boot,
                    label_a=study.arms[control].label,
                    label_b=study.arms[arm].label,
                )
            except ValueError as err:  # RunError: a missing or damaged evaluation, named
                errors.show(str(err))
                errors.failed.append(f"the comparison {arm} vs {control} ({checkpoint})")
                continue
            json_path.with_suffix(".md").write_text(format_comparison(cmp, markdown=True) + "\n")
            write_json(json_path, cmp.as_dict())
            comparisons[f"{arm}/{checkpoint}"] = cmp
    return comparisons


def _trends(study: StudyConfig, out: Path) -> None:
    """The AR-loss trend of each arm's first seed (a run too short for it is a warning)."""
    from arseg.analysis.runs import load_run
    from arseg.analysis.trend import trend_of_run

    trend_dir = out / "trend"
    trend_dir.mkdir(exist_ok=True)
    for arm, spec in study.arms.items():
        try:
            report = trend_of_run(load_run(study.run_dir(out, arm, spec.seeds[0])))
        except ValueError as err:  # e.g. a run too short for a regression: the rest still counts
            print(f"arseg: warning: no trend for {arm}: {err}", file=sys.stderr)
            continue
        (trend_dir / f"{arm}.md").write_text(report.format() + "\n")
        write_json(trend_dir / f"{arm}.json", report.as_dict())


def _report(
    study: StudyConfig, out: Path, split: str, errors: AnalysisErrors, data_root: str | None = None
) -> None:
    """The report of the baseline and each arm's first seed; its heat maps and overlays show
    ``split``'s images from ``data_root`` (default: the baseline's ``data.root``)."""
    from arseg.analysis.report import build_report

    runs = [study.run_dir(out)]
    runs += [study.run_dir(out, arm, spec.seeds[0]) for arm, spec in study.arms.items()]
    labels = ["CE baseline"]
    labels += [f"{spec.label} (seed {spec.seeds[0]})" for spec in study.arms.values()]
    try:
        paths = build_report(
            runs,
            out / "report" / split,
            labels=labels,
            title=f"arseg study {study.name} ({split})",
            num_images=study.report_num_images,
            split=split,
            n_boot=study.n_boot,
            data_root=data_root,
        )
    except (ValueError, OSError) as err:
        errors.show(str(err))
        errors.failed.append("the report")
        return
    log = out / "logs" / f"report_{split}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"wrote {paths.html} and {paths.markdown} ({len(paths.figures)} figures)\n")


def analyse(
    study: StudyConfig, out: Path, split: str, data_root: str | None = None
) -> dict[str, Any]:
    """Compare every arm with the control, fit the trends, write the report and the table;
    returns the table's data (also ``OUT/summary_<split>.json``).

    ``data_root``: where the report reads ``split``'s images (``arseg study --data-root``, as
    the runs were evaluated); default the baseline's ``data.root``.

    Raises:
        StudyError: a record was damaged or a step could not be made (after the table of what
            could be read has been written and printed).
    """
    from arseg.engine.records import damaged_records

    errors = AnalysisErrors()
    runs = [study.run_dir(out)]
    runs += [study.run_dir(out, arm, s) for arm, spec in study.arms.items() for s in spec.seeds]
    for run in runs:  # every record of every run, also those no step below reads
        for problem in damaged_records(run):
            errors.show(problem)
            errors.damaged.append(problem)
    comparisons = compare_arms(study, out, split, errors)
    from arseg.analysis.trend import init_warnings_once

    with init_warnings_once():  # every fine-tune names the same baseline: one line, not 2 x arms
        _trends(study, out)
        _report(study, out, split, errors, data_root)
    table = study_table(study, out, split, comparisons)
    (out / f"summary_{split}.md").write_text(table["markdown"])
    write_json(out / f"summary_{split}.json", table["data"])
    print(table["markdown"], flush=True)
    if errors.damaged or errors.failed:
        what = [errors.damaged[0]] if errors.damaged else []
        if len(errors.damaged) > 1:
            what.append(f"{len(errors.damaged) - 1} more damaged file(s) above")
        if errors.failed:
            what.append(f"not made: {', '.join(errors.failed)}")
        raise StudyError(
            f"the analysis of {out} is incomplete: {'; '.join(what)}; the table above holds what "
            "could be read"
        )
    return table["data"]


# ----------------------------------------------------------------------------- the table
def _metrics_or_none(eval_dir: Path) -> dict[str, Any] | None:
    """An evaluation's metrics.json; None when absent or damaged (the analysis names it)."""
    from arseg.engine.records import read_eval_metrics

    try:
        return read_eval_metrics(eval_dir)
    except ValueError:
        return None


def _interval(delta: float, low: float, high: float, excludes_zero: bool) -> str:
    """``+0.12 [-0.30, +0.51]`` in points, `` *`` when the interval excludes 0."""
    if any(v != v for v in (delta, low, high)):
        return "n/a"
    text = f"{100 * delta:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    return text + (" *" if excludes_zero else "")


def _delta_cells(cmp: Any) -> str:
    """mIoU difference | paired t p | Boundary IoU difference, from a Comparison."""
    if cmp is None:
        return "n/a | n/a | n/a"
    bs = cmp.bootstrap
    miou = _interval(bs.delta, bs.ci_low, bs.ci_high, bs.excludes_zero)
    p = cmp.seed_test.p_value if cmp.seed_test is not None else float("nan")
    seed_p = "n/a" if p != p else f"{p:.2g}"
    bd = cmp.boundary
    boundary = "n/a" if bd is None else _interval(bd.delta, bd.ci_low, bd.ci_high, bd.excludes_zero)
    return f"{miou} | {seed_p} | {boundary}"


def study_table(
    study: StudyConfig, out: Path, split: str, comparisons: dict[str, Any]
) -> dict[str, Any]:
    """The final table of a study: ``{"markdown": text, "data": mapping}``.

    ``comparisons``: ``"<arm>/<checkpoint>"`` -> :class:`~arseg.analysis.compare.Comparison`
    of that arm against the control (missing ones read n/a).
    """
    from arseg.analysis.scores import mean_std
    from arseg.engine.provenance import provenance

    rows: dict[str, Any] = {}
    cells: dict[str, str] = {}
    base = _metrics_or_none(RunDir(study.run_dir(out)).eval_dir(split, "best"))
    for arm, spec in study.arms.items():
        for checkpoint in ("best", "last"):
            metrics = [
                _metrics_or_none(RunDir(study.run_dir(out, arm, s)).eval_dir(split, checkpoint))
                for s in spec.seeds
            ]
            metrics = [m for m in metrics if m]
            row: dict[str, Any] = {"arm": arm, "label": spec.label, "seeds": len(metrics)}
            for key in ("miou", "boundary_iou", "pixel_acc", "val_ar"):
                values = [m[key] for m in metrics if m.get(key) is not None]
                if values:
                    row[key] = mean_std(values, one_value_std=0.0)
            cmp = comparisons.get(f"{arm}/{checkpoint}")
            if cmp is not None:
                row["delta"] = cmp.as_dict()
            rows[f"{arm}/{checkpoint}"] = row
            cells[f"{arm}/{checkpoint}"] = (
                "control | | control" if arm == study.control else _delta_cells(cmp)
            )
    data = {
        "study": study.name,
        "split": split,
        "provenance": provenance(),
        "baseline": base,
        "rows": rows,
    }
    lines = [f"## Study {study.name}: {split} split", "", provenance_line(), ""]
    if base:
        bi = base.get("boundary_iou")
        lines.append(
            f"CE baseline: mIoU {100 * base['miou']:.2f} %, pixel acc {100 * base['pixel_acc']:.2f} %"
            + (f", Boundary IoU {100 * bi:.2f} %" if bi is not None else "")
            + f", val AR {base['val_ar']:.4f}"
        )
        lines.append("")
    lines += [
        "| arm | checkpoint | seeds | mIoU % | Boundary IoU % | pixel acc % | val AR | "
        "mIoU - control (95% CI) | paired t p | Boundary IoU - control (95% CI) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]

    def pct(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "n/a"
        m, s = row[key]
        return f"{100 * m:.2f} ± {100 * s:.2f}"

    for key, row in rows.items():
        checkpoint = key.split("/")[1]
        ar = f"{row['val_ar'][0]:.4f} ± {row['val_ar'][1]:.4f}" if "val_ar" in row else "n/a"
        lines.append(
            f"| {row['label']} | {checkpoint} | {row['seeds']} | {pct(row, 'miou')} | "
            f"{pct(row, 'boundary_iou')} | {pct(row, 'pixel_acc')} | {ar} | {cells[key]} |"
        )
    lines += [
        "",
        "Mean ± std over seeds; differences in points with the two-level bootstrap 95% interval "
        "(images and seed pairs resampled; * = excludes 0) and the paired t-test over seeds. "
        "best = each run's best-val checkpoint, last = its last step (no selection).",
        "",
    ]
    control_seeds = set(study.arms[study.control].seeds)
    if any(set(spec.seeds) != control_seeds for spec in study.arms.values()):
        lines[-1:-1] = [
            "An arm with other seeds than the control is compared with it on the seeds both "
            "share (its mean ± std is over all of its own seeds; the control's over all of its).",
        ]
    return {"markdown": "\n".join(lines) + "\n", "data": data}
