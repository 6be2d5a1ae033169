"""End to end through the CLI entry point: fit -> finetune -> eval -> predict, and bad input."""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image

from arseg.cli import main
from arseg.engine import build_eval_dataset, load_model, predict_logits


def _csv_columns(path):
    with open(path) as f:
        return next(csv.reader(f))


def test_fit_finetune_eval_predict(tmp_path, tiny_config, capsys):
    cfg = tiny_config()
    base, ft = tmp_path / "base", tmp_path / "ft"
    assert main(["fit", str(cfg), "--run-dir", str(base), "trainer.max_epochs=2"]) == 0

    # the run directory the analysis code reads
    for rel in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (base / rel).is_file(), rel
    cols = _csv_columns(base / "metrics.csv")
    for col in (
        "step",
        "epoch",
        "train/loss",
        "train/ce",
        "train/ar",
        "lr",
        "val/miou",
        "val/pixel_acc",
        "val/ar",
        "val/iou/background",
    ):
        assert col in cols, col
    with open(base / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_rows = [r for r in rows if r["train/ar"]]
    assert len(step_rows) == 8  # 16 samples / batch 4 = 4 steps per epoch, 2 epochs
    assert all(float(r["train/ar"]) > 0 for r in step_rows)  # AR logged in a CE-only run
    assert all(float(r["train/loss"]) == float(r["train/ce"]) for r in step_rows)  # lambda_ar = 0
    lrs = [float(r["lr"]) for r in step_rows]
    assert lrs[0] == pytest.approx(0.01) and all(
        a > b for a, b in itertools.pairwise(lrs)
    )  # poly decay
    summary = json.loads((base / "summary.json").read_text())
    assert summary["steps"] == 8 and 0 <= summary["best_miou"] <= 1

    # fine-tune with AR from the baseline weights: fresh optimiser, same architecture
    assert (
        main(
            [
                "finetune",
                str(cfg),
                "--init-from",
                str(base),
                "--run-dir",
                str(ft),
                "loss.lambda_ar=0.1",
            ]
        )
        == 0
    )
    with open(ft / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/ar"]]
    assert float(rows[0]["lr"]) == pytest.approx(0.01)  # fresh schedule
    first = rows[0]
    assert float(first["train/loss"]) == pytest.approx(
        float(first["train/ce"]) + 0.1 * float(first["train/ar"]), rel=1e-5
    )
    ckpt = torch.load(ft / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["arseg_config"]["init_from"] == str(base)
    assert ckpt["global_step"] == 4  # not continued from the baseline's 8 steps

    # evaluation writes metrics.json + per-image confusions equal to the validation numbers
    capsys.readouterr()
    assert main(["eval", str(ft), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((ft / "eval" / "val" / "metrics.json").read_text())  # RUN/eval/<split>
    assert f"val (best checkpoint): mIoU {metrics['miou']:.4f}" in printed
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    for name in metrics["classes"]:  # one line a class: IoU and Boundary IoU (or n/a)
        iou, biou = metrics["iou_per_class"][name], metrics["boundary_iou_per_class"][name]
        assert lines[name] == ["n/a" if v != v else f"{v:.4f}" for v in (iou, biou)], name
    conf = np.load(ft / "eval" / "val" / "per_image_confusion.npy")
    assert conf.shape == (7, 6, 6) and conf.dtype == np.int64
    assert conf.sum() == 7 * 32 * 32  # synthetic scenes have no ignored pixels
    ft_summary = json.loads((ft / "summary.json").read_text())  # one epoch: best = last
    assert metrics["miou"] == pytest.approx(ft_summary["best_miou"], abs=1e-6)
    assert metrics["val_ar"] == pytest.approx(ft_summary["final"]["val/ar"], rel=1e-5)
    total = conf.sum(0)
    iou = np.diag(total) / (total.sum(0) + total.sum(1) - np.diag(total))
    assert metrics["miou"] == pytest.approx(np.nanmean(iou), abs=1e-6)
    assert metrics["classes"] == list(metrics["iou_per_class"])
    assert metrics["val_ar"] > 0

    # multi-scale + flip + sliding window evaluation into another folder
    out = tmp_path / "ms"
    assert (
        main(
            [
                "eval",
                str(ft / "checkpoints" / "best.ckpt"),
                "--out",
                str(out),
                "--scales",
                "0.75",
                "1.0",
                "--flip",
                "--mode",
                "slide",
                "--window",
                "24",
                "24",
                "--no-progress",
            ]
        )
        == 0
    )
    ms = json.loads((out / "metrics.json").read_text())
    assert (
        ms["eval"]["scales"] == [0.75, 1.0] and ms["eval"]["flip"] is True and 0 <= ms["miou"] <= 1
    )

    # the engine API used by the analysis code
    model, config = load_model(ft)
    assert not model.training and config["model"]["num_classes"] == 6
    ds = build_eval_dataset(config)
    image, target = ds[0]
    assert predict_logits(model, image[None]).shape == (1, 6, *target.shape)

    # predict: a folder of images -> label / colour / overlay PNGs
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(
            np.random.default_rng(i).integers(0, 255, (30, 41, 3), dtype=np.uint8)
        ).save(images / f"im{i}.png")
    assert main(["predict", str(ft), str(images), "--out", str(tmp_path / "pred")]) == 0
    label = np.array(Image.open(tmp_path / "pred" / "im0_label.png"))
    assert label.shape == (30, 41) and label.max() < 6
    assert Image.open(tmp_path / "pred" / "im1_overlay.png").size == (41, 30)
    assert Image.open(tmp_path / "pred" / "im1_color.png").mode == "RGB"
    # two inputs with one name keep both outputs; 16-bit grey input is scaled, not clipped
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.zeros((30, 41, 3), dtype=np.uint8)).save(odd / "a.png")
    Image.fromarray(np.zeros((30, 41, 3), dtype=np.uint8)).save(odd / "a.jpg")
    grey16 = np.linspace(0, 65535, 30 * 41).reshape(30, 41).astype(np.uint16)
    Image.fromarray(grey16).save(odd / "deep.png")
    assert main(["predict", str(ft), str(odd), "--out", str(tmp_path / "pred2")]) == 0
    names = sorted(p.name for p in (tmp_path / "pred2").glob("*_overlay.png"))
    assert names == ["a_jpg_overlay.png", "a_png_overlay.png", "deep_overlay.png"]


@pytest.fixture
def trained_run(tmp_path_factory, tiny_config):
    run = tmp_path_factory.mktemp("runs") / "base"
    assert (
        main(
            [
                "fit",
                str(tiny_config()),
                "--run-dir",
                str(run),
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
            ]
        )
        == 0
    )
    return run


def _finetune(cfg, init_from, run_dir, *extra: str) -> int:
    return main(
        ["finetune", str(cfg), "--init-from", str(init_from), "--run-dir", str(run_dir), *extra]
    )


def test_checkpoint_config_mismatch_is_a_clear_error(tmp_path, tiny_config, trained_run, capsys):
    cfg = tiny_config()
    capsys.readouterr()
    assert _finetune(cfg, trained_run, tmp_path / "a", "model.name=lwrefinenet18") == 2
    assert (
        "holds a 'lwrefinenet_mbv2' model but the config asks for 'lwrefinenet18'"
        in capsys.readouterr().err
    )
    assert _finetune(cfg, trained_run, tmp_path / "b", "model.num_classes=4") == 2
    assert "model.num_classes=4" in capsys.readouterr().err
    assert _finetune(cfg, trained_run, tmp_path / "c", "model.options.decoder_channels=16") == 2
    assert "model.options" in capsys.readouterr().err
    # not a checkpoint at all
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    assert _finetune(cfg, bogus, tmp_path / "d") == 2
    assert "bogus.ckpt is not an arseg checkpoint" in capsys.readouterr().err
    # nothing was written into the failed run directories: a retry starts cleanly
    for name in "abcd":
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir())


def test_failed_starts_leave_run_directories_untouched(tmp_path, tiny_config, trained_run, capsys):
    cfg = tiny_config()
    before = sorted(p.relative_to(trained_run) for p in trained_run.rglob("*"))
    config_text = (trained_run / "config.yaml").read_text()
    capsys.readouterr()
    # --overwrite of the very run --init-from reads: refused before anything is deleted
    assert _finetune(cfg, trained_run, trained_run, "--overwrite") == 2
    assert "which --overwrite would clear" in capsys.readouterr().err
    # --overwrite with a missing --init-from: the error comes first, nothing is cleared
    assert _finetune(cfg, tmp_path / "nope", trained_run, "--overwrite") == 2
    assert "not found" in capsys.readouterr().err
    # --resume with a config that does not match the checkpoint: refused, config.yaml kept
    args = ["fit", str(cfg), "--run-dir", str(trained_run), "--resume"]
    assert main([*args, "model.options.decoder_channels=16"]) == 2
    assert "model.options" in capsys.readouterr().err
    assert sorted(p.relative_to(trained_run) for p in trained_run.rglob("*")) == before
    assert (trained_run / "config.yaml").read_text() == config_text


def test_run_dir_errors_before_training(tmp_path, tiny_config, trained_run, capsys, monkeypatch):
    cfg = tiny_config()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["fit", str(cfg), "--run-dir", str(blocker / "run")]) == 2
    assert "not writable" in capsys.readouterr().err

    # an existing run is never overwritten silently
    assert main(["fit", str(cfg), "--run-dir", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["fit", str(cfg), "--run-dir", str(tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err

    # a full disk: detected before training starts
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    assert main(["fit", str(cfg), "--run-dir", str(tmp_path / "full")]) == 2
    assert "not enough free space" in capsys.readouterr().err
    assert not (tmp_path / "full" / "metrics.csv").exists()


def test_config_errors_from_the_cli(tiny_config, capsys):
    assert main(["fit", str(tiny_config()), "optim.lrr=1"]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["finetune", str(tiny_config())])  # --init-from is required


def test_bf16_mixed_precision_trains_with_float32_losses(tmp_path, tiny_config):
    run = tmp_path / "bf16"
    assert (
        main(
            [
                "fit",
                str(tiny_config()),
                "--run-dir",
                str(run),
                "--precision",
                "bf16-mixed",
                "loss.lambda_ar=0.1",
                "trainer.limit_train_batches=2",
                "trainer.deterministic=false",
            ]
        )
        == 0
    )
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/ar"]]
    assert len(rows) == 2
    for r in rows:
        ce, ar, total = float(r["train/ce"]), float(r["train/ar"]), float(r["train/loss"])
        assert np.isfinite([ce, ar, total]).all() and 0 < ar < 1
        assert total == pytest.approx(ce + 0.1 * ar, rel=1e-6)  # float32 arithmetic, not bf16


def test_eval_options_are_validated_with_the_run_config(trained_run, capsys):
    capsys.readouterr()
    # the run's config has no eval.window: --mode slide alone cannot run
    assert main(["eval", str(trained_run), "--mode", "slide"]) == 2
    assert "eval.window" in capsys.readouterr().err
    args = ["eval", str(trained_run), "--mode", "slide", "--window", "16", "16"]
    assert main([*args, "--stride", "20", "20"]) == 2
    assert "must not exceed eval.window" in capsys.readouterr().err
    assert main(["eval", str(trained_run), "--scales", "0"]) == 2
    assert "eval.scales" in capsys.readouterr().err


def test_demo_never_deletes_a_run_it_did_not_write(tmp_path, trained_run, capsys):
    import shutil as sh

    out = tmp_path / "runs"
    sh.copytree(trained_run, out / "baseline")  # somebody's own run where the demo would write
    capsys.readouterr()
    assert main(["demo", "--out", str(out)]) == 2
    assert "was not written by arseg demo" in capsys.readouterr().err
    assert (out / "baseline" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_batchnorm_statistics_through_training_and_validation(
    tmp_path, tiny_config, freeze
):
    run = tmp_path / "run"
    args = ["fit", str(tiny_config()), "--run-dir", str(run), "trainer.max_epochs=2"]
    assert (
        main([*args, "trainer.limit_train_batches=2", f"model.freeze_bn={str(freeze).lower()}"])
        == 0
    )
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # last.ckpt is the last epoch's, whichever epoch was best
    state = last["state_dict"]
    tracked = [v.item() for k, v in state.items() if k.endswith("num_batches_tracked")]
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert tracked and means
    if freeze:  # from scratch: the initial statistics (0, 1) stay, epoch 2 included
        assert set(tracked) == {0} and all(torch.all(m == 0) for m in means)
    else:  # 2 epochs x 2 batches updated every BatchNorm
        assert set(tracked) == {4}


def test_eval_reads_a_checkpoint_written_before_newer_config_keys(tmp_path, trained_run, capsys):
    """A run trained by an older arseg lacks the config keys added since: eval fills defaults."""
    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    for key in ("min_short_side", "rotate_degrees", "blur_prob"):
        del ckpt["arseg_config"]["data"][key]
    ckpt["arseg_config"]["trainer"]["num_threads"] = 0
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert main(["eval", str(old), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out


def test_a_failed_start_does_not_block_the_retry(tmp_path, tiny_config, capsys):
    cfg = str(tiny_config())
    run = tmp_path / "run"
    capsys.readouterr()
    # trainer settings are checked before the run directory is touched
    assert main(["fit", cfg, "--run-dir", str(run), "--precision", "17"]) == 2
    err = capsys.readouterr().err
    assert "precision='17'" in err and "Allowed precision values" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["fit", cfg, "--run-dir", str(run), "--devices", "two"]) == 2
    assert "--devices expects" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["fit", cfg, "--run-dir", str(run), "--accelerator", "gpu"]) == 2
        assert "no CUDA GPU is available" in capsys.readouterr().err
    assert not run.exists()

    # --resume of a run that never saved a checkpoint says what to do
    assert main(["fit", cfg, "--run-dir", str(run), "--resume"]) == 2
    assert "does not exist: start the run without --resume" in capsys.readouterr().err
    # what a start that died before its first checkpoint leaves (e.g. a full disk)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("stale: true\n")
    (run / "metrics.csv").write_text("epoch,step\n")
    assert main(["fit", cfg, "--run-dir", str(run), "--resume"]) == 2
    assert "start it again without --resume" in capsys.readouterr().err
    # ... is reused without --overwrite
    args = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    assert main(["fit", cfg, "--run-dir", str(run), *args]) == 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert "stale" not in (run / "config.yaml").read_text()
    # a directory with other people's files is still refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["fit", cfg, "--run-dir", str(other)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


def test_resume_with_changed_settings_is_refused_unless_allowed(
    tmp_path, tiny_config, trained_run, capsys
):
    cfg = str(tiny_config())
    same = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    args = ["fit", cfg, "--run-dir", str(trained_run), "--resume", *same]
    config_text = (trained_run / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "optim.lr=0.5", "--max-epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "the settings differ" in err and "--allow-changes" in err
    assert "optim.lr: 0.01 -> 0.5" in err and "trainer.max_epochs: 1 -> 2" in err
    assert (trained_run / "config.yaml").read_text() == config_text
    # settings that do not change the computation need no flag (a finished run: nothing to do)
    assert main([*args, "data.num_workers=1", "--no-progress"]) == 0
    # with the flag: continues with the new settings, recorded in config.yaml
    assert main([*args, "--max-epochs", "2", "--allow-changes"]) == 0
    assert (
        torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    )
    assert "max_epochs: 2" in (trained_run / "config.yaml").read_text()
    assert main(["fit", cfg, "--run-dir", str(tmp_path / "x"), "--allow-changes"]) == 2
    assert "--allow-changes goes with --resume" in capsys.readouterr().err


def test_files_that_are_not_checkpoints_are_one_line_errors(tmp_path, trained_run, capsys):
    import pathlib

    good = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    files = {
        "empty": b"",
        "text": b"hello",
        "truncated": good[: len(good) // 2],
    }
    torch.save({"state_dict": {}, "path": pathlib.Path("/")}, tmp_path / "foreign.ckpt")
    for name, data in files.items():
        (tmp_path / f"{name}.ckpt").write_bytes(data)
    capsys.readouterr()
    for name in (*files, "foreign"):
        path = tmp_path / f"{name}.ckpt"
        assert main(["eval", str(path), "--out", str(tmp_path / "e"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"{path} is not" in err and "arseg checkpoint" in err, err
        assert "weights_only" not in err, err  # never torch's advice to load it unsafely


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_fit_prints_a_line_per_epoch_and_no_lightning_noise(tmp_path, tiny_config, capfd, flag):
    """Outside a terminal (and with --no-progress): no progress bar, one line per epoch."""
    args = ["trainer.max_epochs=2", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    capfd.readouterr()
    assert main(["fit", str(tiny_config()), "--run-dir", str(tmp_path / "r"), *args, *flag]) == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines if line.startswith("epoch")] == [
        "epoch 1/2",
        "epoch 2/2",
    ]
    assert any("val mIoU" in line for line in lines)
    assert "\r" not in out + err
    for noise in ("GPU available", "TPU available", "litlogger", "LOCAL_RANK"):
        assert noise not in out + err, noise
