"""The analysis commands on fake run directories written in the engine's contract format."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

from arseg.analysis.runs import RunError, expand_run_group, load_run
from arseg.cli import main


def _png_is_not_blank(path) -> None:
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 10, f"{path} looks blank"


def test_run_reading(fake_run):
    run = load_run(fake_run)
    assert run.seed == 0
    ar = run.series("train/ar")
    assert len(ar) == 40 and ar.index[0] == 0 and ar.index.is_monotonic_increasing
    miou = run.series("val/miou", index="epoch")
    assert list(miou.index) == [0, 1, 2, 3]
    assert run.classes == ["sky", "road", "car", "person"]
    assert run.confusion().shape == (30, 4, 4)
    assert run.results()["eval miou"] == pytest.approx(0.5)
    with pytest.raises(RunError, match="no column"):
        run.series("train/nothing")
    with pytest.raises(RunError, match="checkpoints"):
        run.checkpoint()


def test_run_errors_and_groups(tmp_path, fake_arms):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a run directory"):
        load_run(tmp_path / "empty")
    ce, _ = fake_arms
    assert [r.path.name for r in expand_run_group(ce)] == ["seed0", "seed1", "seed2"]
    listed = expand_run_group(f"{ce / 'seed0'},{ce / 'seed2'}")
    assert [r.seed for r in listed] == [0, 2]
    assert len(expand_run_group(ce / "seed1")) == 1
    with pytest.raises(RunError, match="neither"):
        expand_run_group(tmp_path / "empty")
    run = load_run(ce / "seed0")
    (run.path / "eval" / "val" / "per_image_confusion.npy").unlink()
    with pytest.raises(
        RunError, match=r"split 'val' \(best checkpoint\): run `arseg eval .* --split val`"
    ):
        run.confusion()


def test_trend_command_matches_linregress(fake_run, tmp_path, capsys):
    out_json = tmp_path / "trend.json"
    assert main(["trend", str(fake_run), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    for word in ("Estimate", "Std. Error", "t value", "Pr(>|t|)", "(Intercept)", "val AR loss"):
        assert word in text
    series = load_run(fake_run).series("train/ar")
    ref = sps.linregress(series.index.to_numpy(float), series.to_numpy())
    data = json.loads(out_json.read_text())
    assert data["ols"]["slope"]["estimate"] == pytest.approx(ref.slope, rel=1e-9)
    assert data["ols"]["slope"]["std_error"] == pytest.approx(ref.stderr, rel=1e-9)
    assert data["ols"]["slope"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    assert data["ols"]["intercept"]["estimate"] == pytest.approx(ref.intercept, rel=1e-9)
    # val/ar in the fake run: 0.19 at epoch 0, 0.175 at epoch 3
    assert data["val_ar_change_pct"] == pytest.approx(100 * (0.175 - 0.19) / 0.19)
    assert f"{data['val_ar_change_pct']:+.1f}%" in text


def test_trend_start_from_baseline(tmp_path, make_run, capsys):
    base = make_run(tmp_path / "base", epochs=2)
    fine = make_run(tmp_path / "fine", seed=1)
    assert (
        main(["trend", str(fine), "--start-from", str(base), "--json", str(tmp_path / "t.json")])
        == 0
    )
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["val_ar_start"] == pytest.approx(0.185)  # the baseline's last val/ar
    assert "best checkpoint of base" in capsys.readouterr().out


def test_trend_finds_a_relative_init_from_beside_a_moved_run(
    tmp_path, make_run, capsys, monkeypatch
):
    """init_from is written relative to where the fine-tune ran; the runs may be copied since."""
    import yaml

    base = make_run(tmp_path / "copy" / "study" / "base", epochs=2)
    fine = make_run(tmp_path / "copy" / "study" / "fine", seed=1)
    config = yaml.safe_load((fine / "config.yaml").read_text())
    config["init_from"] = "runs/study/base/checkpoints/last.ckpt"  # as launched, elsewhere
    (fine / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["trend", str(fine), "--json", str(tmp_path / "t.json")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["val_ar_start"] == pytest.approx(0.185)  # the baseline's last val/ar
    assert data["val_ar_start_source"] == f"last checkpoint of {base.name}"
    # not found anywhere: the first epoch, with a warning
    config["init_from"] = "runs/gone/checkpoints/last.ckpt"
    (fine / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["trend", str(fine), "--json", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["val_ar_start_source"] == "first epoch"
    assert "init_from runs/gone/checkpoints/last.ckpt not found" in capsys.readouterr().err


def test_distinct_labels():
    from arseg.analysis.runs import distinct_labels

    assert distinct_labels(["r/ce/seed1", "r/ar/seed1", "r/base"]) == [
        "ce/seed1",
        "ar/seed1",
        "base",
    ]
    assert distinct_labels(["a/x/s", "b/x/s"]) == ["a/x/s", "b/x/s"]
    assert distinct_labels(["r/a", "r/a"])[1].endswith("r/a (2)")
    assert distinct_labels(["a", "b"], ["A", "B"]) == ["A", "B"]
    with pytest.raises(ValueError, match="more than once"):
        distinct_labels(["a", "b"], ["same", "same"])
    with pytest.raises(ValueError, match="2 labels for 3 runs"):
        distinct_labels(["a", "b", "c"], ["A", "B"])


def test_trend_command_errors(tmp_path, fake_run, capsys):
    assert main(["trend", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["trend", str(fake_run), "--key", "train/nothing"]) == 2
    assert "no column" in capsys.readouterr().err


def test_curves_command(fake_arms, tmp_path):
    ce, ar = fake_arms
    out = tmp_path / "fig" / "curves.png"
    code = main(
        ["curves", str(ce / "seed0"), str(ar / "seed0"), "--labels", "CE", "+AR", "-o", str(out)]
    )
    assert code == 0
    _png_is_not_blank(out)
    svg = out.with_suffix(".svg").read_text()
    assert "<svg" in svg and "val mIoU (%)" in svg and "iteration" in svg


def test_compare_says_when_seeds_do_not_match(tmp_path, make_run, capsys):
    for seed in (0, 1):
        make_run(tmp_path / "a" / f"s{seed}", seed=seed)
        make_run(tmp_path / "b" / f"s{seed}", seed=seed + 1, accuracy=0.75)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--n-boot", "100"]) == 0
    assert "paired by order (the seeds differ: A [0, 1], B [1, 2])" in capsys.readouterr().out


def test_compare_pairs_arms_on_the_seeds_they_share(tmp_path, make_run, capsys):
    """3 ablation seeds against a control of 5: a paired comparison on seeds 0-2, not unpaired."""
    for seed in range(5):
        make_run(tmp_path / "ctrl" / f"s{seed}", seed=seed, accuracy=0.6 + 0.02 * seed)
    for seed in (2, 0, 1):
        make_run(tmp_path / "abl" / f"s{seed}", seed=seed, accuracy=0.65 + 0.02 * seed)
    argv = ["compare", str(tmp_path / "ctrl"), str(tmp_path / "abl"), "--n-boot", "200"]
    assert main([*argv, "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["paired_by"] == "seed (the 3 shared seeds)"
    assert result["arm_a"]["seeds"] == [0, 1, 2] == result["arm_b"]["seeds"]
    assert result["bootstrap"]["resample_runs"] and result["seed_test"]["df"] == 2
    assert "paired on the 3 seeds both arms share [0, 1, 2]; left out: A's seeds [3, 4]" in text
    assert str(tmp_path / "ctrl" / "s4") in text
    # the same runs given as the shared seeds alone give the same comparison
    shared = ",".join(str(tmp_path / "ctrl" / f"s{s}") for s in (0, 1, 2))
    assert main(["compare", shared, str(tmp_path / "abl"), "--n-boot", "200", "--json",
                 str(tmp_path / "d.json")]) == 0  # fmt: skip
    direct = json.loads((tmp_path / "d.json").read_text())
    assert direct["paired_by"] == "seed"
    assert (
        direct["bootstrap"] == result["bootstrap"] and direct["delta_miou"] == result["delta_miou"]
    )


def test_compare_pairs_by_seed_whatever_order_the_runs_come_in(tmp_path, make_run) -> None:
    """Arm B's runs listed in another seed order than arm A's: still paired by seed, so the
    comparison is the one of the runs listed in the same order."""
    for seed in (1, 2, 3):  # the seed moves both arms alike: pairing by order would show it
        make_run(tmp_path / "a" / f"s{seed}", seed=seed, accuracy=0.5 + 0.1 * seed)
        make_run(tmp_path / "b" / f"s{seed}", seed=seed, accuracy=0.55 + 0.1 * seed)

    def compare(order_b, name):
        arm_b = ",".join(str(tmp_path / "b" / f"s{seed}") for seed in order_b)
        argv = ["compare", str(tmp_path / "a"), arm_b, "--n-boot", "200"]
        assert main([*argv, "--json", str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name).read_text())

    shuffled, ordered = compare((3, 1, 2), "shuffled.json"), compare((1, 2, 3), "ordered.json")
    assert shuffled["paired_by"] == "seed"
    assert shuffled["arm_a"]["seeds"] == [1, 2, 3] == shuffled["arm_b"]["seeds"]
    for key in ("seed_test", "bootstrap", "delta_miou", "boundary_iou", "per_class"):
        assert shuffled[key] == ordered[key], key


def test_compare_command_reproducible(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    args = ["compare", str(ce), str(ar), "--n-boot", "500", "--seed", "3"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    text = capsys.readouterr().out
    assert main([*args, "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a == b
    assert a["paired_by"] == "seed"
    assert len(a["arm_a"]["miou"]) == 3 and a["seed_test"]["df"] == 2
    # arm B was made more accurate: the difference is positive and the interval excludes 0
    assert a["delta_miou"] > 0 and a["bootstrap"]["excludes_zero"]
    assert a["delta_miou"] == pytest.approx(a["arm_b"]["mean"] - a["arm_a"]["mean"])
    assert [c["class"] for c in a["per_class"]] == ["sky", "road", "car", "person"]
    assert "paired bootstrap interval" in text and "paired t(2)" in text and "± " in text
    # a different bootstrap seed moves the interval, not the point estimate
    assert (
        main(
            [
                "compare",
                str(ce),
                str(ar),
                "--n-boot",
                "500",
                "--seed",
                "4",
                "--json",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    c = json.loads((tmp_path / "c.json").read_text())
    assert (
        c["delta_miou"] == a["delta_miou"] and c["bootstrap"]["ci_low"] != a["bootstrap"]["ci_low"]
    )


def test_compare_single_runs_and_errors(fake_arms, tmp_path, make_run, capsys):
    ce, ar = fake_arms
    assert (
        main(["compare", str(ce / "seed0"), str(ar / "seed0"), "--n-boot", "200", "--markdown"])
        == 0
    )
    text = capsys.readouterr().out
    assert "| class |" in text and "no paired test" in text
    other = make_run(tmp_path / "other", n_images=12)
    assert main(["compare", str(ce / "seed0"), str(other), "--n-boot", "200"]) == 2
    assert "different images" in capsys.readouterr().err


def test_report_without_checkpoints(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    out = tmp_path / "report"
    code = main(
        [
            "report",
            str(ce / "seed0"),
            str(ar / "seed0"),
            "--labels",
            "CE",
            "+AR",
            "-o",
            str(out),
            "--n-boot",
            "200",
        ]
    )
    assert code == 0
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    # self-contained: every image is embedded, nothing is fetched
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 3  # per-class IoU, comparison, curves
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for text in (
        "Results",
        "Per-class IoU",
        "Paired comparison",
        "Training curves",
        "AR loss trend",
    ):
        assert text in page and text in md
    assert "config of CE" in page
    # the Markdown links the PNGs written beside it
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        _png_is_not_blank(out / link)
    assert "checkpoints" in capsys.readouterr().err  # heat maps skipped, with the reason
    # Markdown tables stay tables: the '|' of Pr(>|t|) is escaped
    assert r"Pr(>\|t\|)" in md


def test_report_and_curves_keep_runs_with_the_same_directory_name(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    out = tmp_path / "report"
    args = ["report", str(ce / "seed0"), str(ar / "seed0"), "-o", str(out), "--n-boot", "100"]
    assert main(args) == 0
    page = (out / "report.html").read_text()
    assert "<td>ce/seed0</td>" in page and "<td>ar/seed0</td>" in page
    assert "ar/seed0 vs ce/seed0" in page
    assert main([*args, "--labels", "x", "x"]) == 2
    assert "more than once" in capsys.readouterr().err
    code = main(["curves", str(ce / "seed0"), str(ar / "seed0"), "-o", str(tmp_path / "c.png")])
    assert code == 0
    svg = (tmp_path / "c.svg").read_text()
    assert "ce/seed0" in svg and "ar/seed0" in svg


# --------------------------------------------------------- compare: Boundary IoU, seeds, splits
def _pooled_biou(run_dir, sub="eval/val") -> float:
    counts = np.load(run_dir / sub / "per_image_boundary.npy").sum(0)
    return float(np.mean(counts[0] / counts[1]))


def test_compare_json_holds_what_the_experiment_doc_needs(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    out = tmp_path / "c.json"
    assert main(["compare", str(ce), str(ar), "--n-boot", "300", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    raw = out.read_text()
    assert "NaN" not in raw and "Infinity" not in raw  # strict JSON
    data = json.loads(raw)
    assert (data["split"], data["checkpoint"]) == ("val", "best")
    # per-arm mean ± std of every headline metric, from the runs' own files
    for arm, root in (("arm_a", ce), ("arm_b", ar)):
        m = data[arm]["metrics"]
        assert set(m) == {"miou", "boundary_iou", "pixel_acc", "val_ar"}
        biou = [_pooled_biou(root / f"seed{s}") for s in range(3)]
        assert m["boundary_iou"]["values"] == pytest.approx(biou)
        assert m["boundary_iou"]["mean"] == pytest.approx(np.mean(biou))
        assert m["boundary_iou"]["std"] == pytest.approx(np.std(biou, ddof=1))
        conf = [
            np.load(root / f"seed{s}" / "eval" / "val" / "per_image_confusion.npy")
            for s in range(3)
        ]
        acc = [np.trace(c.sum(0)) / c.sum() for c in conf]
        assert m["pixel_acc"]["values"] == pytest.approx(acc)
        evals = [
            json.loads((root / f"seed{s}" / "eval" / "val" / "metrics.json").read_text())
            for s in range(3)
        ]
        assert m["val_ar"]["values"] == pytest.approx([e["val_ar"] for e in evals])
        assert data[arm]["seeds"] == [0, 1, 2]
    # Boundary IoU difference with the same two-level bootstrap, and its seed-level t interval
    b = data["boundary_iou"]
    expected = (
        data["arm_b"]["metrics"]["boundary_iou"]["mean"]
        - data["arm_a"]["metrics"]["boundary_iou"]["mean"]
    )
    assert b["delta"] == pytest.approx(expected)
    assert (
        b["bootstrap"]["resample_runs"]
        and b["bootstrap"]["ci_low"] <= b["delta"] <= b["bootstrap"]["ci_high"]
    )
    diffs = np.subtract(
        data["arm_b"]["metrics"]["boundary_iou"]["values"],
        data["arm_a"]["metrics"]["boundary_iou"]["values"],
    )
    ci = sps.ttest_1samp(diffs, 0).confidence_interval()
    assert (b["seed_test"]["ci_low"], b["seed_test"]["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert [c["class"] for c in b["per_class"]] == ["sky", "road", "car", "person"]
    assert data["seed_test"]["ci_low"] <= data["delta_miou"] <= data["seed_test"]["ci_high"]
    assert set(data["seed_tests"]) == {"miou", "boundary_iou", "pixel_acc", "val_ar"}
    assert data["deltas"]["miou"] == pytest.approx(data["delta_miou"])
    # three seed pairs: the seed level is coarse, said in the JSON and the text
    assert data["n_seed_pairs"] == 3 and data["min_seed_pairs"] == 5
    assert data["seed_noise_covered"] is True
    assert data["verdict"].startswith("preliminary")
    assert len(data["warnings"]) == 1 and "only 3 seed pairs" in data["warnings"][0]
    assert "10 distinct sets of seed pairs" in text and "Verdict: preliminary" in text
    assert "Boundary IoU B - A" in text and "seed-level paired t(2) interval" in text


def test_compare_with_one_run_per_arm_says_seed_noise_is_not_covered(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    out = tmp_path / "one.json"
    args = ["compare", str(ce / "seed0"), str(ar / "seed0"), "--n-boot", "200"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "seed noise is NOT covered" in text and "resamples of the images only" in text
    data = json.loads(out.read_text())
    assert data["seed_noise_covered"] is False and data["n_seed_pairs"] == 0
    assert "seed noise is NOT covered" in data["warnings"][0]
    assert data["verdict"].startswith("seed noise not covered")
    assert data["seed_test"] is None
    # the default arm names are made distinct (both folders are called seed0)
    assert data["arm_a"]["label"] == "ce/seed0" and data["arm_b"]["label"] == "ar/seed0"


def test_compare_with_five_seed_pairs_gives_a_verdict(tmp_path, make_run):
    from arseg.analysis.compare import compare_runs

    for s in range(5):
        make_run(tmp_path / "a" / f"s{s}", seed=s, accuracy=0.6, n_images=12)
        make_run(tmp_path / "b" / f"s{s}", seed=s, accuracy=0.75, n_images=12)
    cmp = compare_runs(
        expand_run_group(tmp_path / "a"), expand_run_group(tmp_path / "b"), n_boot=200
    )
    assert cmp.n_pairs == 5 and cmp.warnings == []
    assert cmp.verdict.startswith("difference")


def test_eval_results_per_split_and_checkpoint(tmp_path, make_run, capsys):
    """compare reads RUN/eval/<split> (best) or RUN/eval/<split>-last, as `arseg eval` writes."""
    for arm, acc in (("a", 0.5), ("b", 0.8)):
        run = make_run(tmp_path / arm, accuracy=acc)  # eval/val: B better
        # the last checkpoint evaluated on val, and the best one on a test split: A better
        make_run(tmp_path / arm, accuracy=1.3 - acc, eval_dir="eval/val-last", confusion_seed=5)
        make_run(tmp_path / arm, accuracy=1.3 - acc, eval_dir="eval/test", confusion_seed=6)
        assert (run / "eval" / "val" / "metrics.json").is_file()

    def delta(*extra: str) -> float:
        out = tmp_path / "d.json"
        args = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--n-boot", "100"]
        assert main([*args, *extra, "--json", str(out)]) == 0
        data = json.loads(out.read_text())
        return data["delta_miou"], data["split"], data["checkpoint"]

    d, split, ckpt = delta("--split", "val")
    assert d > 0.1 and (split, ckpt) == ("val", "best")
    d, split, ckpt = delta("--split", "val", "--checkpoint", "last")
    assert d < -0.1 and (split, ckpt) == ("val", "last")
    d, split, _ = delta("--split", "test")
    assert d < -0.1 and split == "test"
    assert delta()[1] == "val"  # the config's validation split by default
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert "no evaluation of split 'train'" in err and "--split train" in err
    assert (
        main(
            [
                "compare",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--split",
                "test",
                "--checkpoint",
                "last",
            ]
        )
        == 2
    )
    assert "--split test --checkpoint last" in capsys.readouterr().err


def test_runs_evaluated_before_results_were_kept_per_split(tmp_path, make_run, capsys):
    """RUN/eval/metrics.json (no per-split folder, no Boundary IoU counts) is still compared."""
    a = make_run(tmp_path / "a", accuracy=0.5, eval_dir="eval", boundary=False)
    b = make_run(tmp_path / "b", accuracy=0.8, eval_dir="eval", boundary=False)
    out = tmp_path / "old.json"
    assert main(["compare", str(a), str(b), "--n-boot", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["delta_miou"] > 0.1 and data["boundary_iou"] is None
    assert "no per_image_boundary.npy" in data["boundary_iou_note"]
    assert "Boundary IoU not compared" in capsys.readouterr().out
    assert load_run(a).results()["eval miou"] == pytest.approx(0.5)
    # the old folder holds the best checkpoint on the split its metrics.json names
    meta = json.loads((a / "eval" / "metrics.json").read_text())
    (a / "eval" / "metrics.json").write_text(json.dumps({**meta, "split": "test"}))
    assert load_run(a, split="test").has_eval and not load_run(a).has_eval
    assert not load_run(a, split="test", checkpoint="last").has_eval


# ------------------------------------------------------------------- one-line errors
def test_unwritable_outputs_are_one_line_errors(fake_arms, tmp_path, capsys):
    ce, ar = fake_arms
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad = blocker / "sub"
    cases = [
        ["compare", str(ce), str(ar), "--n-boot", "100", "--json", str(bad / "x.json")],
        ["curves", str(ce / "seed0"), "-o", str(bad / "c.png")],
        ["trend", str(ce / "seed0"), "--json", str(bad / "t.json")],
        ["report", str(ce / "seed0"), "-o", str(bad / "report"), "--no-images"],
        ["affinity", str(ce / "seed0"), "-o", str(bad / "a.png")],
    ]
    for args in cases:
        assert main(args) == 2, args
        captured = capsys.readouterr()
        assert captured.out == ""  # compare prints no table before failing
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("arseg: error: cannot write"), (args, lines)
        assert str(bad) in lines[0] and "Traceback" not in captured.err


def test_report_of_a_run_that_never_validated(tmp_path, make_run, capsys):
    """`fit --max-steps 2` writes summary.json with best_miou null and an empty final."""
    run = make_run(tmp_path / "short")
    (run / "summary.json").write_text(
        json.dumps({"best_miou": None, "final": {}, "steps": 2, "wall_time_s": 1.0})
    )
    assert main(["report", str(run), "-o", str(tmp_path / "r"), "--no-images"]) == 0
    assert np.isnan(load_run(run).results()["best val/miou"])
    md = (tmp_path / "r" / "report.md").read_text()
    assert "best val/miou" in md and "–" in md


def test_help_shows_each_default_once():
    import contextlib
    import io

    for command in ("affinity", "curves", "report", "compare", "trend"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(buf.getvalue().split())
        assert "(default: None)" not in text and "(default: False)" not in text, command
        # every option's help holds at most one "(default"
        for chunk in re.split(r" --?[a-z]", text):
            assert chunk.count("(default") <= 1, (command, chunk)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(buf.getvalue().split())
    assert "--data-root" in text and "--checkpoint {best,last}" in text
    assert "bootstrap seed (default: 0)" in text  # a default of 0 is still shown


def test_report_shows_boundary_iou_and_the_seed_caveat(fake_arms, tmp_path):
    ce, ar = fake_arms
    out = tmp_path / "report"
    args = ["report", str(ce / "seed0"), str(ar / "seed0"), "--labels", "CE", "CE + AR"]
    assert main([*args, "-o", str(out), "--n-boot", "100", "--no-images"]) == 0
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    # Results table: the eval Boundary IoU in %, and a per-class Boundary IoU table
    assert "eval boundary IoU" in md and "| CE | " in md
    lines = md.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| run | "))
    header, row = lines[at], lines[at + 2]  # the Results table's header and first row
    col = [c.strip() for c in header.split("|")].index("eval boundary IoU")
    assert [c.strip() for c in row.split("|")][col] == "30.00"
    assert "Per-class Boundary IoU" in md and "Boundary IoU B - A" in md
    # one run per arm: said above the comparison, in both documents
    assert '<p class="note">Warning: seed noise is NOT covered' in page
    assert "**Warning: seed noise is NOT covered" in md
    # the forest plot's file name is plain, and its caption explains the dots
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert "delta-ce-plus-ar-vs-ce.png" in names, names
    assert all(re.fullmatch(r"[a-z0-9_-]+\.png", n) and "__" not in n for n in names)
    assert "dots = difference of the pooled IoU" in md


def test_affinity_and_report_take_a_data_root(monkeypatch, tmp_path):
    """--data-root replaces the stored data.root (a dataset moved since training), as for eval."""
    import arseg.engine
    from arseg.analysis.affinity import load_models_and_dataset

    stored = {"data": {"root": "/gone/camvid", "val_split": "val"}}
    seen = {}

    def fake_build(cfg, split=None):
        seen["root"], seen["split"] = cfg["data"]["root"], split
        raise FileNotFoundError(f"no dataset at {cfg['data']['root']}")

    monkeypatch.setattr(arseg.engine, "load_model", lambda ckpt, map_location: (None, stored))
    monkeypatch.setattr(arseg.engine, "build_eval_dataset", fake_build)
    with pytest.raises(FileNotFoundError):
        load_models_and_dataset(["r"], data_root=tmp_path / "camvid")
    assert seen == {"root": str(tmp_path / "camvid"), "split": None}
    assert stored["data"]["root"] == "/gone/camvid"  # the loaded config is not changed
    assert main(["affinity", "r", "--data-root", "/new/camvid", "-o", str(tmp_path / "a.png")]) == 2
    assert seen["root"] == "/new/camvid"
