"""benchmarks/device_check.py: the dry run writes the summary of every part, records a failing
and a timed-out part without stopping the rest; --prepare fills a carry folder within limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "device_check.py"
PARTS = [
    "environment",
    "cuda_tests",
    "loss_speed",
    "train_step_fp32",
    "train_step_bf16",
    "model_speed",
    "camvid_finetune",
    "camvid_step",
    "loss_speed_peers",
]


def _status(summary: str) -> dict[str, str]:
    """The status table at the end of the summary: part -> status."""
    table = summary.rsplit("## status", 1)[1]
    rows = [r.split("|") for r in table.splitlines() if r.startswith("| ") and "---" not in r]
    return {r[1].strip(): r[2].strip() for r in rows if r[1].strip() != "part"}


def test_dry_run_records_every_part_and_survives_failures(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dry-run",
            "--out",
            str(out),
            "--carry",
            str(tmp_path / "no_carry"),
            "--fail-part",
            "train_step_fp32",
            "--part-budget",
            "loss_speed=0.5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "device_check.md").read_text()
    assert summary in proc.stdout  # printed too
    assert (out / "device_check.log").is_file() and (out / "cuda_tests.xml").is_file()
    assert "mode: dry run" in summary and "nothing carried" in summary
    for part in PARTS:
        assert f"\n## {part}: " in summary, part
    status = _status(summary)
    assert list(status) == PARTS
    assert status["train_step_fp32"] == "failed (exit 3)"
    assert status["loss_speed"].startswith("timed out")
    # the parts after the failure and the timeout still ran
    for part in ("environment", "cuda_tests", "train_step_bf16", "model_speed"):
        assert status[part] == "ok", (part, status)
    for part in ("camvid_finetune", "camvid_step", "loss_speed_peers"):
        assert status[part] == "ok", (part, status)
    # what each part found: the tests' counts, the benchmarks' tables, the fine-tune's mIoU
    assert "2 passed" in summary
    assert "injected failure" in summary
    assert "| CE + 0.1 AR full |" in summary  # train_step bf16 table
    assert "mIoU " in summary and "`miou_after` = " in summary
    assert "| NCHW, 1 thread |" in summary
    assert "torch: " in summary and "cuda_available: " in summary


def test_prepare_fills_a_carry_folder(tmp_path):
    from PIL import Image

    camvid = tmp_path / "camvid"
    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("val", 2)):
        (camvid / split).mkdir(parents=True)
        (camvid / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            image = torch.randint(0, 256, (36, 48, 3), generator=rng, dtype=torch.uint8).numpy()
            label = torch.randint(0, 12, (36, 48), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(image).save(camvid / split / f"f{i}.png")
            Image.fromarray(label, mode="L").save(camvid / f"{split}annot" / f"f{i}.png")
            lines.append(f"/SegNet/CamVid/{split}/f{i}.png /SegNet/CamVid/{split}annot/f{i}.png")
        (camvid / f"{split}.txt").write_text("\n".join(lines) + "\n")
    peak = tmp_path / "peak"
    (peak / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "state_dict": {"model.w": torch.ones(3)},
            "arseg_config": {"model": {"name": "x"}},
            "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(3)}}}],
        },
        peak / "checkpoints" / "best.ckpt",
    )
    (peak / "config.yaml").write_text("name: peak\n")
    carry = tmp_path / "carry"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--prepare",
            "--camvid",
            str(camvid),
            "--peak",
            str(peak),
            "--carry",
            str(carry),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = json.loads((carry / "MANIFEST.json").read_text())
    assert manifest["items"]["camvid"]["val"] == 2
    assert sorted(p.name for p in (carry / "camvid" / "val").iterdir()) == ["f0.jpg", "f1.jpg"]
    assert (carry / "camvid" / "valannot" / "f0.png").read_bytes() == (
        camvid / "valannot" / "f0.png"
    ).read_bytes()  # labels copied losslessly
    first = (carry / "camvid" / "train.txt").read_text().splitlines()[0]
    assert first == "/carry/train/f0.jpg /carry/trainannot/f0.png"
    ckpt = torch.load(carry / "peak" / "checkpoints" / "best.ckpt", weights_only=True)
    assert "optimizer_states" not in ckpt and torch.equal(
        ckpt["state_dict"]["model.w"], torch.ones(3)
    )
    assert manifest["tree_mib"] + manifest["carry_mib"] <= 64
    # the CamVid reader takes the copy as it is
    pytest.importorskip("torchvision")
    from arseg.data import build_dataset

    ds = build_dataset("camvid", root=str(carry / "camvid"), split="val")
    image, target = ds[0]
    assert image.shape == (3, 36, 48) and target.shape == (36, 48)
    # a folder that is not a carry folder is never replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--prepare",
            "--camvid",
            str(camvid),
            "--peak",
            str(peak),
            "--carry",
            str(other),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and (other / "keep.txt").is_file()
