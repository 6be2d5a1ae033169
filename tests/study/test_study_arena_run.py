"""``arseg arena`` end to end on tiny synthetic runs: the plan before the first run, the runs,
the ranked answer, a resume after a kill and an extension by a weight (one arena, two commands:
the second continues the killed first and extends it, so the default run trains 8 fine-tunes)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from .conftest import arseg_process, finish, write_config

# 8 training images in batches of 4, one epoch: a fine-tune is 2 steps and one evaluation
# (its best checkpoint is its last); 4 val and 4 test images
_DATA = {
    "train_options": {"num_samples": 8},
    "val_options": {"num_samples": 4},
}


def _configs(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    base = write_config(directory, "base.yaml", trainer={"max_epochs": 1}, data=_DATA)
    ft = directory / "ft.yaml"
    ft.write_text(
        yaml.safe_dump(
            {"_base_": "base.yaml", "optim": {"lr": 0.005}, "trainer": {"max_epochs": 1}}
        )
    )
    return base, ft


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> tuple[Path, str, str, dict[str, int]]:
    """An arena of AR and Dice at weight 1, killed after its first fine-tune; then `arseg arena
    DIR --terms dice --weights 3` continues it and extends it by Dice at 3, to its answer."""
    root = tmp_path_factory.mktemp("arena")
    base, ft = _configs(root / "cfg")
    out = root / "out"
    proc = arseg_process(
        "arena",
        *["--baseline", str(base), "--finetune", str(ft), "--out", str(out)],
        *["--terms", "ar,dice", "--weights", "1", "--seeds", "1,2"],
        *["--parallel", "2", "--threads", "2"],
    )
    first = out / "state" / "ce_seed1.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the arena and its running workers, without warning
    killed = proc.communicate()[0]
    assert first.is_file(), killed
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "state").glob("*_seed?.json")}
    proc = arseg_process("arena", str(out), "--terms", "dice", "--weights", "3")
    stdout = finish(proc)
    assert proc.returncode == 0, stdout
    return out, killed, stdout, kept


def test_the_plan_comes_before_the_first_run(arena) -> None:
    out, killed, _stdout, _kept = arena
    lines = killed.splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("arena: "))
    assert lines[plan].startswith(
        "arena: 1 baseline + 6 fine-tunes (CE only + 2 terms x 1 weight, seeds 1-2); about "
    ), lines[plan]
    assert lines[plan].endswith(" here at 2 side by side")
    assert not any(line.startswith("[") for line in lines[:plan])  # no run before it
    plan_record = json.loads((out / "arena_plan.json").read_text())
    assert set(plan_record["step_s"]) == {"ce", "ar", "dice"}


def test_a_killed_arena_continues_extended_by_a_weight_and_answers(arena) -> None:
    out, _killed, stdout, kept = arena
    plan = next(line for line in stdout.splitlines() if line.startswith("arena: "))
    # the runs finished before the kill (ce seed 1, and maybe the one beside it) are kept
    assert f"8 fine-tunes (CE only + 2 terms at 3 weights, seeds 1-2); {len(kept)} finished" in plan
    assert "extending the study" in stdout and "dice_3 (seeds [1, 2])" in stdout
    assert "ce_seed1: finished earlier, kept" in stdout and "dice_3_seed2: done" in stdout
    assert kept and all((out / "state" / n).stat().st_mtime_ns == t for n, t in kept.items())
    recorded = json.loads((out / "arena.json").read_text())
    assert recorded["terms"] == {"ar": [1.0], "dice": [1.0, 3.0]} and recorded["seeds"] == [1, 2]
    # the study floor's layout: every run at its best and last checkpoint
    for arm in ("ce", "ar_1", "dice_1", "dice_3"):
        for seed in (1, 2):
            cfg = yaml.safe_load((out / arm / f"seed{seed}" / "config.yaml").read_text())
            assert cfg["seed"] == seed and Path(cfg["init_from"]) == out / "baseline"
            assert (out / arm / f"seed{seed}" / "eval" / "val-last" / "metrics.json").is_file()
    ar = yaml.safe_load((out / "ar_1" / "seed1" / "config.yaml").read_text())["loss"]
    dice = yaml.safe_load((out / "dice_3" / "seed1" / "config.yaml").read_text())["loss"]
    assert ar["lambda_ar"] == 1.0 and dice["terms"]["dice"]["weight"] == 3.0
    lines = stdout.strip().splitlines()
    table = [line for line in lines if line.startswith(("| 1 |", "| 2 |"))]
    assert sorted(row.split("|")[2].strip() for row in table) == ["AR", "Dice"]
    assert all(" [" in row for row in table)  # each with its interval
    assert "(of 2)" in next(row for row in table if "Dice" in row)
    assert lines[-1].startswith("answer: ")
    answer = json.loads((out / "arena_answer.json").read_text())
    rows = {r["term"]: r for r in answer["rows"]}
    assert [c[0] for c in rows["dice"]["curve"]] == [1.0, 3.0]
    assert (out / "report" / "arena" / "report.html").is_file()


def test_seeds_other_than_the_recorded_ones_are_one_line(arena, capsys) -> None:
    from arseg.cli import main

    out = arena[0]
    state = sorted((out / "state").iterdir())
    assert main(["arena", str(out), "--seeds", "1-3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"arseg: error: {out} holds an arena with other settings (seeds: recorded [1, 2], "
        "given [1, 2, 3]): give the recorded ones (or none: they are read from it), or use "
        "another --out"
    ]
    assert sorted((out / "state").iterdir()) == state


@pytest.mark.slow
def test_the_issue_arena_of_ten_fine_tunes_confirmed_on_test(tmp_path) -> None:
    """The command of issue #29, with a confirm split: plan (10 fine-tunes) before the first run,
    an answer naming both terms with intervals, stated on the test split."""
    base, ft = _configs(tmp_path / "cfg")
    out = tmp_path / "out"
    proc = arseg_process(
        "arena",
        *["--baseline", str(base), "--finetune", str(ft), "--out", str(out)],
        *["--terms", "ar,dice", "--weights", "1,3", "--seeds", "1,2"],
        *["--confirm-split", "test", "--parallel", "2", "--threads", "2"],
    )
    stdout = finish(proc, timeout=1800)
    assert proc.returncode == 0, stdout
    lines = stdout.strip().splitlines()
    plan = next(i for i, line in enumerate(lines) if line.startswith("arena: "))
    assert "1 baseline + 10 fine-tunes (CE only + 2 terms x 2 weights, seeds 1-2)" in lines[plan]
    assert "confirmed on test" in lines[plan]
    assert not any(line.startswith("[") for line in lines[:plan])
    assert any(line.startswith("confirm: CE only and each term's best weight") for line in lines)
    answer = json.loads((out / "arena_answer.json").read_text())
    assert {r["term"] for r in answer["rows"]} == {"ar", "dice"}
    assert all(r["confirm"] is not None for r in answer["rows"])
    assert lines[-1].startswith("answer: ")
    assert "gain on test [95% CI]" in stdout
