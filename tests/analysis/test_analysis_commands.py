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
    (run.path / "eval" / "per_image_confusion.npy").unlink()
    with pytest.raises(RunError, match="arseg eval"):
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
