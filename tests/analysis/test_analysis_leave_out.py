"""How much of a gain one or two classes carry (analysis.compare.leave_out_gains)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arseg.analysis.compare import compare_runs, format_comparison, leave_out_gains
from arseg.analysis.runs import load_run
from arseg.analysis.scores import iou_from_confusion
from arseg.analysis.stats import ClassDelta


def test_leave_out_equals_miou_difference_over_the_other_classes(tmp_path, make_run):
    """Against a direct recomputation: per run, mIoU over the classes other than k from its
    summed confusion, mean over seeds, B - A."""

    def arm(name, accuracies):
        return [
            load_run(make_run(tmp_path / name / f"s{i}", seed=i, accuracy=q, confusion_seed=20 + i))
            for i, q in enumerate(accuracies)
        ]

    ce, ar = arm("ce", (0.6, 0.62, 0.58)), arm("ar", (0.7, 0.6, 0.66))
    cmp = compare_runs(ce, ar, n_boot=200, seed=1)
    out = cmp.as_dict()["leave_out"]
    names = [c.name for c in cmp.bootstrap.per_class]
    iou_a = np.stack([iou_from_confusion(r.confusion().sum(0)) for r in ce])  # (R, C)
    iou_b = np.stack([iou_from_confusion(r.confusion().sum(0)) for r in ar])
    assert np.isfinite(iou_a).all() and np.isfinite(iou_b).all()
    for k, name in enumerate(names):
        keep = [j for j in range(len(names)) if j != k]
        direct = iou_b[:, keep].mean(1).mean() - iou_a[:, keep].mean(1).mean()
        assert out["each"][name] == pytest.approx(direct, abs=1e-12)
    moved = np.abs((iou_b - iou_a).mean(0))
    top = [names[j] for j in np.argsort(-moved)[:2]]
    assert [c["classes"] for c in out["without_top"]] == [top[:1], top[:2]]
    keep = [j for j, n in enumerate(names) if n not in top]
    direct = iou_b[:, keep].mean(1).mean() - iou_a[:, keep].mean(1).mean()
    assert out["without_top"][1]["delta"] == pytest.approx(direct, abs=1e-12)
    assert f"without {top[0]}, {top[1]}" in format_comparison(cmp)


def test_a_gain_carried_by_one_class_vanishes_without_it():
    rows = [ClassDelta("bicyclist", 0.1, 0.4, 0.3, 0.2, 0.4)] + [
        ClassDelta(f"c{k}", 0.5, 0.5, 0.0, -0.01, 0.01) for k in range(4)
    ]
    out = leave_out_gains(rows)
    assert out["each"]["bicyclist"] == 0.0
    assert out["each"]["c0"] == pytest.approx(0.3 / 4)
    assert out["without_top"][0] == {"classes": ["bicyclist"], "delta": 0.0}


def test_classes_without_an_iou_are_skipped_as_miou_skips_them():
    rows = [
        ClassDelta("a", 0.5, 0.7, 0.2, 0.1, 0.3),
        ClassDelta("absent", math.nan, math.nan, math.nan, math.nan, math.nan),
        ClassDelta("b", 0.5, 0.5, 0.0, -0.1, 0.1),
    ]
    out = leave_out_gains(rows)
    assert set(out["each"]) == {"a", "b"}
    assert out["each"]["b"] == pytest.approx(0.2)
    assert len(out["without_top"]) == 1  # never every class left out
