"""Every analysis command on tiny runs trained here through the engine (synthetic data)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arseg.analysis.runs import load_run
from arseg.cli import main
from arseg.engine import load_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic" / "baseline.yaml"
TINY = [
    "model.options.decoder_channels=8",
    "data.options.size=[32,40]",
    "data.crop_size=[32,40]",
    "data.train_options.num_samples=2",
    "data.val_options.num_samples=3",
    "data.batch_size=2",
    "data.val_batch_size=3",
]


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    """A CE baseline (1 step) and its CE + AR fine-tune (one epoch of 3 steps), both evaluated.

    Kept as small as the engine allows: the whole analysis suite has a 90 s budget on 2 cores.
    """
    root = tmp_path_factory.mktemp("engine_runs")
    base, fine = root / "baseline", root / "finetune_ar"
    one_epoch = ["--max-epochs", "1", "--no-progress"]
    assert main(["fit", str(CONFIG), *TINY, "--run-dir", str(base), *one_epoch]) == 0
    finetune = [*TINY, "data.train_options.num_samples=6", "loss.lambda_ar=0.1"]
    assert (
        main(
            [
                "finetune",
                str(CONFIG),
                *finetune,
                "--init-from",
                str(base),
                "--run-dir",
                str(fine),
                *one_epoch,
            ]
        )
        == 0
    )
    for run in (base, fine):
        assert main(["eval", str(run), "--no-progress"]) == 0
    # the study's spelling: the last checkpoint on the val split, into RUN/eval/val-last
    assert main(["eval", str(fine), "--checkpoint", "last", "--split", "val", "--no-progress"]) == 0
    return base, fine


def _not_blank(path) -> None:
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.std() > 10, f"{path} looks blank"


def test_engine_run_directory_is_readable(trained_runs):
    _base, fine = trained_runs
    run = load_run(fine)
    assert len(run.series("train/ar")) == 3  # AR logged every step
    assert list(run.series("val/miou", index="epoch").index) == [0]
    conf = run.confusion()
    assert conf.shape[0] == 3 and conf.shape[1] == conf.shape[2] == len(run.classes)
    assert run.per_class_iou().keys() == set(run.classes)


def test_trend_on_engine_run(trained_runs, tmp_path, capsys):
    base, fine = trained_runs
    assert main(["trend", str(fine), "--json", str(tmp_path / "t.json")]) == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["ols"]["n"] == 3
    # the start value is the baseline's val AR at the checkpoint the fine-tune started from
    base_val = load_run(base).series("val/ar", index="step")
    assert len(base_val) == 1 and data["val_ar_start"] == pytest.approx(float(base_val.iloc[0]))
    assert data["val_ar_end"] == pytest.approx(float(load_run(fine).series("val/ar").iloc[-1]))
    assert "checkpoint of baseline" in capsys.readouterr().out


def test_curves_on_engine_runs(trained_runs, tmp_path):
    base, fine = trained_runs
    assert main(["curves", str(base), str(fine), "-o", str(tmp_path / "c.png")]) == 0
    _not_blank(tmp_path / "c.png")
    assert (tmp_path / "c.svg").stat().st_size > 1000


def test_affinity_on_engine_checkpoints(trained_runs, tmp_path, capsys):
    base, fine = trained_runs
    out = tmp_path / "aff.png"
    assert (
        main(
            [
                "affinity",
                str(base),
                str(fine / "checkpoints" / "last.ckpt"),
                "--images",
                "0",
                "-1",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    _not_blank(out)
    text = capsys.readouterr().out
    # default names: the run directory, and run/last for a checkpoint file
    names = f"(?:{re.escape(base.name)}|{re.escape(fine.name)}/last)"
    losses = [float(v) for v in re.findall(names + r": ([0-9.]+)", text)]
    assert len(losses) == 4 and all(0 <= v <= 1 for v in losses)
    # the printed AR loss is the model's own AR loss on that image
    from arseg.analysis.affinity import dataset_samples, model_logits
    from arseg.engine import build_eval_dataset
    from arseg.losses import ar_loss

    model, config = load_model(base)
    image, target, _ = dataset_samples(build_eval_dataset(config, split="val"), [0])[0]
    expected = float(ar_loss(model_logits(model, image[None]), target[None]))
    assert losses[0] == pytest.approx(expected, abs=1e-4)
    assert main(["affinity", str(base), "--images", "99"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_compare_on_engine_runs(trained_runs, tmp_path):
    base, fine = trained_runs
    assert (
        main(
            ["compare", str(base), str(fine), "--n-boot", "200", "--json", str(tmp_path / "c.json")]
        )
        == 0
    )
    data = json.loads((tmp_path / "c.json").read_text())
    eval_a = json.loads((base / "eval" / "val" / "metrics.json").read_text())
    eval_b = json.loads((fine / "eval" / "val" / "metrics.json").read_text())
    # mIoU recomputed from the per-image confusion matrices agrees with the engine's own
    assert data["arm_a"]["miou"][0] == pytest.approx(eval_a["miou"], abs=1e-5)
    assert data["arm_b"]["miou"][0] == pytest.approx(eval_b["miou"], abs=1e-5)
    assert data["bootstrap"]["ci_low"] <= data["delta_miou"] <= data["bootstrap"]["ci_high"]
    # and so does the Boundary IoU from the per-image counts
    assert data["arm_a"]["metrics"]["boundary_iou"]["values"][0] == pytest.approx(
        eval_a["boundary_iou"], abs=1e-9
    )
    assert data["boundary_iou"]["delta"] == pytest.approx(
        eval_b["boundary_iou"] - eval_a["boundary_iou"], abs=1e-9
    )


def test_eval_writes_per_split_and_checkpoint_folders(trained_runs, tmp_path, capsys):
    _base, fine = trained_runs
    best, last = fine / "eval" / "val", fine / "eval" / "val-last"
    for folder, name in ((best, "best"), (last, "last")):
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["checkpoint_name"] == name and metrics["split"] == "val"
        assert metrics["checkpoint"].endswith(f"{name}.ckpt")
        counts = np.load(folder / "per_image_boundary.npy")
        conf = np.load(folder / "per_image_confusion.npy")
        assert counts.dtype == np.int64 and counts.shape == (3, 2, conf.shape[1])
        assert np.all(counts[:, 0] <= counts[:, 1])
        total = counts.sum(0).astype(float)
        present = total[1] > 0
        assert metrics["boundary_iou"] == pytest.approx(
            float(np.mean(total[0][present] / total[1][present]))
        )
        assert set(metrics["boundary_iou_per_class"]) == set(metrics["classes"])
        assert metrics["boundary_ratio"] == 0.02
    assert not (fine / "eval" / "metrics.json").exists()  # nothing in the old place
    # the exact command lines of `arseg study`
    base = trained_runs[0]
    assert main(["eval", str(base), "--checkpoint", "last", "--split", "val", "--no-progress"]) == 0
    out = tmp_path / "last.json"
    args = ["compare", str(base), str(fine), "--split", "val", "--n-boot", "100"]
    assert main([*args, "--checkpoint", "last", "--json", str(out), "--markdown"]) == 0
    data = json.loads(out.read_text())
    assert data["checkpoint"] == "last" and data["split"] == "val"
    last_miou = json.loads((last / "metrics.json").read_text())["miou"]
    assert data["arm_b"]["miou"][0] == pytest.approx(last_miou, abs=1e-5)


def test_compare_last_needs_an_evaluation_of_the_last_checkpoint(trained_runs, tmp_path, capsys):
    import shutil

    base, fine = trained_runs
    copy = tmp_path / "baseline"  # without its checkpoints and any last evaluation
    shutil.copytree(base, copy, ignore=shutil.ignore_patterns("checkpoints", "val-last"))
    args = ["compare", str(copy), str(fine), "--checkpoint", "last", "--n-boot", "100"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"run `arseg eval {copy} --split val --checkpoint last` first" in err


def test_report_on_engine_runs(trained_runs, tmp_path):
    base, fine = trained_runs
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                str(base),
                str(fine),
                "--labels",
                "baseline",
                "+AR",
                "-o",
                str(out),
                "--num-images",
                "2",
                "--n-boot",
                "200",
            ]
        )
        == 0
    )
    page = (out / "report.html").read_text()
    for section in ("Affinity heat maps", "Predictions", "Training curves", "Paired comparison"):
        assert section in page
    # per-class IoU, comparison, curves, heat maps, overlays
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    for name in ("affinity", "overlays", "curves"):
        _not_blank(out / "figures" / f"{name}.png")
