"""arseg.analysis: the paper's figures and tables from any run, statistics and reports.

* :mod:`~arseg.analysis.runs` — reading run directories (config, metrics.csv, eval/).
* :mod:`~arseg.analysis.stats` — OLS trend, IoU from confusion matrices, paired bootstrap,
  across-seed summaries and paired test.
* :mod:`~arseg.analysis.compare` — ``arseg compare``.
* :mod:`~arseg.analysis.figures` — matplotlib figures (affinity heat maps, curves, overlays).
* :mod:`~arseg.analysis.affinity` — ``arseg affinity`` (Figure 4 data from models).
* :mod:`~arseg.analysis.report` — ``arseg report`` (HTML + Markdown).
* :mod:`~arseg.analysis.arena_report` — the page of ``arseg arena`` (its answer on top of the
  report).

Sub-modules are imported on first use (``arseg --help`` stays fast), e.g.
``from arseg.analysis import paired_bootstrap``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "runs",
    "RunError": "runs",
    "load_run": "runs",
    "distinct_labels": "runs",
    "expand_run_group": "runs",
    "ols_trend": "stats",
    "paired_bootstrap": "stats",
    "paired_seed_test": "stats",
    "seed_summary": "stats",
    "iou_from_confusion": "stats",
    "miou_from_confusion": "stats",
    "relative_change": "stats",
    "compare_runs": "compare",
    "format_comparison": "compare",
    "compute_affinity_panels": "affinity",
    "affinity_figure": "affinity",
    "build_report": "report",
    "build_arena_report": "arena_report",
    "trend_of_run": "trend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"arseg.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'arseg.analysis' has no attribute {name!r}")
