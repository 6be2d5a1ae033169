"""Statistics: OLS against scipy, IoU against torchmetrics, bootstrap reproducibility and sense."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torchmetrics.classification import MulticlassJaccardIndex

from arseg.analysis.stats import (
    iou_from_confusion,
    miou_from_confusion,
    ols_trend,
    paired_bootstrap,
    paired_seed_test,
    pixel_accuracy_from_confusion,
    relative_change,
    seed_summary,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ols_matches_scipy_linregress(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 5000, size=200))
    y = 0.19 - 3e-6 * x + rng.normal(0, 0.01, size=x.size)
    res = ols_trend(x, y)
    ref = sps.linregress(x, y)
    assert res.slope == pytest.approx(ref.slope, rel=1e-9)
    assert res.intercept == pytest.approx(ref.intercept, rel=1e-9)
    assert res.std_error[1] == pytest.approx(ref.stderr, rel=1e-9)
    assert res.std_error[0] == pytest.approx(ref.intercept_stderr, rel=1e-9)
    assert res.t_value[1] == pytest.approx(ref.slope / ref.stderr, rel=1e-9)
    assert res.p_value[1] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    assert res.r_squared == pytest.approx(ref.rvalue**2, rel=1e-9)
    # intercept t and p from its own standard error, t distribution with n - 2 dof
    t0 = ref.intercept / ref.intercept_stderr
    assert res.t_value[0] == pytest.approx(t0, rel=1e-9)
    assert res.p_value[0] == pytest.approx(2 * sps.t.sf(abs(t0), x.size - 2), rel=1e-6, abs=1e-300)
    assert res.n == 200


def test_ols_table_and_dict():
    res = ols_trend([0, 1, 2, 3, 4], [1.0, 0.8, 0.7, 0.4, 0.35])
    table = res.table()
    for word in ("Estimate", "Std. Error", "t value", "Pr(>|t|)", "(Intercept)", "iteration"):
        assert word in table
    d = res.as_dict()
    assert d["slope"]["estimate"] == pytest.approx(res.slope)
    assert res.slope < 0


def test_ols_drops_nan_and_validates():
    res = ols_trend([0, 1, 2, 3, np.nan], [1.0, 2.0, 2.9, 4.2, 5.0])
    assert res.n == 4
    with pytest.raises(ValueError, match="same length"):
        ols_trend([0, 1, 2], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        ols_trend([0, 1], [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        ols_trend([1, 1, 1], [1, 2, 3])


def test_relative_change():
    assert relative_change(0.187, 0.165) == pytest.approx(-11.764705, rel=1e-5)
    with pytest.raises(ValueError):
        relative_change(0.0, 1.0)


def test_iou_matches_torchmetrics_with_absent_classes():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (500,), generator=gen)  # classes 4, 5 never occur
    preds = torch.where(
        torch.rand(500, generator=gen) < 0.6, target, torch.randint(0, 5, (500,), generator=gen)
    )
    conf = np.zeros((6, 6), dtype=np.int64)
    np.add.at(conf, (target.numpy(), preds.numpy()), 1)
    per_class = MulticlassJaccardIndex(num_classes=6, average="none")(preds, target).numpy()
    macro = float(MulticlassJaccardIndex(num_classes=6, average="macro")(preds, target))
    iou = iou_from_confusion(conf)
    assert np.isnan(iou[5])  # neither in target nor prediction
    assert np.allclose(iou[:5], per_class[:5], atol=1e-6)
    assert miou_from_confusion(conf) == pytest.approx(macro, abs=1e-6)
    assert pixel_accuracy_from_confusion(conf) == pytest.approx(
        float((preds == target).float().mean())
    )


def test_iou_batched_and_validation(make_confusions):
    conf = make_confusions(np.random.default_rng(0), 5, 0.7)
    batched = miou_from_confusion(conf)
    assert batched.shape == (5,)
    assert batched[2] == pytest.approx(miou_from_confusion(conf[2]))
    with pytest.raises(ValueError, match="C, C"):
        iou_from_confusion(np.zeros((3, 4)))


def test_bootstrap_reproducible_by_seed(make_confusions):
    rng = np.random.default_rng(1)
    a, b = make_confusions(rng, 40, 0.6), make_confusions(rng, 40, 0.65)
    r1 = paired_bootstrap(a, b, n_boot=500, seed=7)
    r2 = paired_bootstrap(a, b, n_boot=500, seed=7)
    r3 = paired_bootstrap(a, b, n_boot=500, seed=8)
    assert (r1.ci_low, r1.ci_high, r1.p_value) == (r2.ci_low, r2.ci_high, r2.p_value)
    assert r1.per_class == r2.per_class
    assert (r1.ci_low, r1.ci_high) != (r3.ci_low, r3.ci_high)
    assert r1.delta == r3.delta  # the point estimate does not depend on the seed


def test_bootstrap_point_estimate_and_interval(make_confusions):
    rng = np.random.default_rng(2)
    a, b = make_confusions(rng, 60, 0.55), make_confusions(rng, 60, 0.8)
    res = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert res.miou_a == pytest.approx(miou_from_confusion(a.sum(0)))
    assert res.miou_b == pytest.approx(miou_from_confusion(b.sum(0)))
    assert res.delta == pytest.approx(res.miou_b - res.miou_a)
    assert res.ci_low < res.delta < res.ci_high
    assert res.ci_low > 0 and res.excludes_zero and res.p_value < 0.01
    # every resample favours B: p is the resolution of the bootstrap, not 0
    assert res.p_value == pytest.approx(2 / (res.n_boot + 1))
    # per-class differences are the pooled per-class IoU differences
    direct = iou_from_confusion(b.sum(0)) - iou_from_confusion(a.sum(0))
    assert np.allclose([c.delta for c in res.per_class], direct)
    assert all(c.ci_low <= c.delta <= c.ci_high for c in res.per_class)


def test_bootstrap_no_difference_includes_zero(make_confusions):
    rng = np.random.default_rng(3)
    a = make_confusions(rng, 50, 0.7)
    res_same = paired_bootstrap(a, a, n_boot=300)
    assert res_same.delta == 0 and res_same.ci_low == 0 and res_same.ci_high == 0
    b = make_confusions(rng, 50, 0.7)  # same quality, independent noise
    res = paired_bootstrap(a, b, n_boot=1000, seed=0)
    assert res.ci_low < 0 < res.ci_high and not res.excludes_zero


def test_bootstrap_interval_matches_naive_resampling(make_confusions):
    """The vectorised bootstrap's spread equals a plain index-resampling loop's (same statistic)."""
    rng = np.random.default_rng(4)
    a, b = make_confusions(rng, 25, 0.6), make_confusions(rng, 25, 0.68)
    res = paired_bootstrap(a, b, n_boot=10_000, seed=0)
    gen = np.random.default_rng(123)
    idx = gen.integers(0, 25, (10_000, 25))  # 10 000 independent index draws
    naive = miou_from_confusion(b[idx].sum(1)) - miou_from_confusion(a[idx].sum(1))
    lo, hi = np.quantile(naive, [0.025, 0.975])
    # Monte-Carlo error of each endpoint ~0.0006 (measured differences <= 0.001); the 90%
    # interval's endpoints lie ~0.004 inside, so a wrong level fails
    assert res.ci_low == pytest.approx(lo, abs=0.002)
    assert res.ci_high == pytest.approx(hi, abs=0.002)
    at90 = paired_bootstrap(a, b, n_boot=10_000, seed=0, level=0.9)
    assert at90.ci_low - lo > 0.003 and hi - at90.ci_high > 0.003


def test_two_level_bootstrap_matches_naive_resampling_of_seeds_and_images(make_confusions):
    """resample_runs: each resample draws the seed pairs and the images, both with replacement."""
    rng = np.random.default_rng(9)
    a = np.stack([make_confusions(rng, 20, q) for q in (0.6, 0.62, 0.58)])
    b = np.stack([make_confusions(rng, 20, q) for q in (0.7, 0.6, 0.66)])
    res = paired_bootstrap(a, b, n_boot=10_000, seed=0, resample_runs=True)
    gen = np.random.default_rng(321)
    images = gen.integers(0, 20, (10_000, 20))
    pairs = gen.integers(0, 3, (10_000, 3))
    miou_a = miou_from_confusion(a[:, images].sum(2))  # (3 runs, 10 000)
    miou_b = miou_from_confusion(b[:, images].sum(2))
    draws = np.arange(10_000)[:, None]
    naive = (miou_b.T[draws, pairs] - miou_a.T[draws, pairs]).mean(1)
    lo, hi = np.quantile(naive, [0.025, 0.975])
    assert res.ci_low == pytest.approx(lo, abs=0.003)
    assert res.ci_high == pytest.approx(hi, abs=0.003)
    images_only = paired_bootstrap(a, b, n_boot=10_000, seed=0)
    assert images_only.ci_high - images_only.ci_low < 0.8 * (hi - lo)  # the seeds add spread


def test_compare_resamples_seeds_when_both_arms_hold_paired_runs(tmp_path, make_run):
    from arseg.analysis.compare import compare_runs
    from arseg.analysis.runs import load_run

    def arm(name, accuracies):
        return [
            load_run(make_run(tmp_path / name / f"s{i}", seed=i, accuracy=q, confusion_seed=10 + i))
            for i, q in enumerate(accuracies)
        ]

    ce, ar = arm("ce", (0.6, 0.62, 0.58)), arm("ar", (0.7, 0.6, 0.66))
    cmp = compare_runs(ce, ar, n_boot=2000, seed=4)
    assert cmp.bootstrap.resample_runs
    conf_a = np.stack([r.confusion() for r in ce])
    conf_b = np.stack([r.confusion() for r in ar])
    direct = paired_bootstrap(conf_a, conf_b, n_boot=2000, seed=4, resample_runs=True)
    assert (cmp.bootstrap.ci_low, cmp.bootstrap.ci_high) == (direct.ci_low, direct.ci_high)
    assert not compare_runs(ce[:1], ar[:1], n_boot=2000, seed=4).bootstrap.resample_runs


def test_bootstrap_several_seeds_and_validation(make_confusions):
    rng = np.random.default_rng(5)
    a = np.stack([make_confusions(rng, 20, 0.6) for _ in range(3)])
    b = np.stack([make_confusions(rng, 20, 0.7) for _ in range(3)])
    res = paired_bootstrap(a, b, n_boot=200, class_names=["w", "x", "y", "z"])
    expected = np.mean([miou_from_confusion(c.sum(0)) for c in b]) - np.mean(
        [miou_from_confusion(c.sum(0)) for c in a]
    )
    assert res.delta == pytest.approx(expected)
    assert [c.name for c in res.per_class] == ["w", "x", "y", "z"]
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, b[:, :10], n_boot=200)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=10)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(a, b, n_boot=200, level=95)
    with pytest.raises(ValueError, match="names"):
        paired_bootstrap(a, b, n_boot=200, class_names=["only one"])


def test_bootstrap_resampling_runs_covers_seed_noise(make_confusions):
    """Seeds that disagree: image resampling alone calls the mean gain real (it treats the
    trained networks as fixed); resampling the seed pairs too does not."""
    rng = np.random.default_rng(6)
    base = [make_confusions(rng, 60, q) for q in (0.6, 0.6, 0.6, 0.6)]
    # B's gain over A flips sign from seed to seed: +8, -6, +8, -6 points of accuracy
    alt = [make_confusions(rng, 60, q) for q in (0.68, 0.54, 0.68, 0.54)]
    a, b = np.stack(base), np.stack(alt)
    images_only = paired_bootstrap(a, b, n_boot=2000, seed=0)
    two_level = paired_bootstrap(a, b, n_boot=2000, seed=0, resample_runs=True)
    assert two_level.resample_runs and not images_only.resample_runs
    assert images_only.excludes_zero  # over-confident: the seeds' disagreement is invisible
    assert two_level.delta == images_only.delta  # same point estimate
    width = two_level.ci_high - two_level.ci_low
    assert width > 1.5 * (images_only.ci_high - images_only.ci_low)
    assert two_level.ci_low < 0 < two_level.ci_high and not two_level.excludes_zero
    # identical arms stay exactly [0, 0]; reproducible by seed; paired runs required
    same = paired_bootstrap(a, a, n_boot=300, resample_runs=True)
    assert (same.ci_low, same.ci_high) == (0.0, 0.0)
    again = paired_bootstrap(a, b, n_boot=2000, seed=0, resample_runs=True)
    assert (again.ci_low, again.ci_high) == (two_level.ci_low, two_level.ci_high)
    with pytest.raises(ValueError, match="paired runs"):
        paired_bootstrap(a, b[:3], n_boot=200, resample_runs=True)


def test_seed_summary_and_paired_test():
    s = seed_summary([0.40, 0.42, 0.44])
    assert s.mean == pytest.approx(0.42) and s.std == pytest.approx(0.02) and s.n == 3
    assert s.format() == "42.00 ± 2.00"
    assert math.isnan(seed_summary([0.4]).std)
    a, b = [0.40, 0.42, 0.41, 0.43], [0.42, 0.43, 0.44, 0.44]
    t = paired_seed_test(a, b)
    d = np.subtract(b, a)
    expected_t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert t.t_value == pytest.approx(expected_t)
    assert t.p_value == pytest.approx(2 * sps.t.sf(abs(expected_t), d.size - 1))
    assert t.df == 3
    assert paired_seed_test([0.4], [0.5]) is None
    with pytest.raises(ValueError, match="same number"):
        paired_seed_test([0.4, 0.5], [0.5])


def _iu(conf: np.ndarray) -> np.ndarray:
    """Intersections and unions (..., 2, C) of confusion matrices, written out independently."""
    tp = np.einsum("...ii->...i", conf)
    return np.stack([tp, conf.sum(-1) + conf.sum(-2) - tp], axis=-2)


def test_bootstrap_of_counts_is_the_iou_bootstrap_of_the_same_counts(make_confusions):
    """IoU as intersection / union counts (what Boundary IoU stores) gives the mIoU bootstrap."""
    from arseg.analysis.stats import paired_bootstrap_counts

    rng = np.random.default_rng(7)
    a = np.stack([make_confusions(rng, 25, 0.6) for _ in range(3)])
    b = np.stack([make_confusions(rng, 25, 0.66) for _ in range(3)])
    for resample_runs in (False, True):
        ref = paired_bootstrap(a, b, n_boot=300, seed=2, resample_runs=resample_runs)
        got = paired_bootstrap_counts(
            _iu(a), _iu(b), n_boot=300, seed=2, resample_runs=resample_runs
        )
        assert (got.delta, got.ci_low, got.ci_high, got.p_value) == (
            ref.delta,
            ref.ci_low,
            ref.ci_high,
            ref.p_value,
        )
        assert [c.delta for c in got.per_class] == [c.delta for c in ref.per_class]


def test_bootstrap_of_boundary_counts(make_boundary_counts):
    from arseg.analysis.stats import paired_bootstrap_counts

    rng = np.random.default_rng(8)
    a, b = make_boundary_counts(rng, 40, 0.5), make_boundary_counts(rng, 40, 0.7)
    res = paired_bootstrap_counts(a, b, n_boot=500)
    pooled = lambda c: np.mean(c[:, 0].sum(0) / c[:, 1].sum(0))  # noqa: E731
    assert res.delta == pytest.approx(pooled(b) - pooled(a))
    assert res.ci_low > 0 and res.ci_low < res.delta < res.ci_high
    same = paired_bootstrap_counts(a, a, n_boot=200)
    assert (same.delta, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    bad = a.copy()
    bad[0, 0, 0] = bad[0, 1, 0] + 1
    with pytest.raises(ValueError, match="between 0 and the unions"):
        paired_bootstrap_counts(bad, b, n_boot=200)
    with pytest.raises(ValueError, match=r"\(n_images, 2, C\)"):
        paired_bootstrap_counts(a[:, :1], b, n_boot=200)


def test_paired_t_interval_matches_scipy():
    from arseg.analysis.stats import MIN_SEED_PAIRS, distinct_seed_resamples

    a, b = [0.40, 0.42, 0.41, 0.43], [0.42, 0.43, 0.44, 0.44]
    t = paired_seed_test(a, b, level=0.9)
    ci = sps.ttest_rel(b, a).confidence_interval(confidence_level=0.9)
    assert (t.ci_low, t.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert t.level == 0.9 and t.n_pairs == 4 and t.excludes_zero == (ci.low > 0)
    flat = paired_seed_test([0.25, 0.5], [0.375, 0.625])  # zero variance: a point interval
    assert (flat.ci_low, flat.ci_high) == (0.125, 0.125)
    # 3 pairs give 10 distinct bootstrap draws of the seed pairs (issue 13 item 9)
    assert distinct_seed_resamples(3) == 10 and MIN_SEED_PAIRS == 5
    with pytest.raises(ValueError, match="level"):
        paired_seed_test(a, b, level=1.5)
