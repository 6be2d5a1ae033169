"""``arseg arena`` without training: its inputs (each bad one a line before anything runs), how
a recorded arena is continued and extended, and its answer and report on fake finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from arseg.rundir import write_json
from arseg.study import StudyError
from arseg.study.arena import (
    DEFAULT_LADDERS,
    ArenaConfig,
    arena_terms,
    parse_seeds,
    parse_weights,
    resolve_arena,
)

from .conftest import write_config


def _configs(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    base = write_config(directory, "base.yaml", trainer={"max_epochs": 1})
    ft = directory / "ft.yaml"
    ft.write_text(yaml.safe_dump({"_base_": "base.yaml", "trainer": {"max_epochs": 1}}))
    return base, ft


def _resolve(tmp_path: Path, **options):
    base, ft = _configs(tmp_path / "cfg")
    options = {"baseline": base, "finetune": ft, "threads": 1, **options}
    return resolve_arena(None, out=tmp_path / "out", **options)


def test_every_loss_term_is_a_contender_and_ar_twice() -> None:
    from arseg.losses import LOSS_TERMS

    terms = arena_terms()
    assert set(terms) == {*LOSS_TERMS, "ar_bce"} and set(DEFAULT_LADDERS) == set(terms)
    assert terms["ar"].overrides(3.0) == {"loss.lambda_ar": 3.0}
    assert terms["ar_bce"].overrides(1.0) == {
        "loss.lambda_ar": 0.0,
        "loss.terms.ar": {"weight": 1.0, "objective": "bce"},
    }
    assert terms["aaf"].overrides(0.3)["loss.terms.aaf"] == {
        "weight": 0.3,
        "schedule": "exp",
        "final_ratio": 0.1,
    }


def test_the_default_arena_resolves_every_arm_of_every_term(tmp_path) -> None:
    from arseg.study.config import check_study, run_config

    arena, out, recorded = _resolve(tmp_path)
    assert recorded is None and out == (tmp_path / "out").resolve()
    assert arena.seeds == [1, 2, 3] and arena.terms == {
        t: list(w) for t, w in DEFAULT_LADDERS.items()
    }
    study = arena.study()
    assert len(study.arms) == 1 + 13 and study.control == "ce"
    check_study(study, "arena")  # every run config resolves
    cfg = run_config(study, out, "ar_bce_3", 2)
    assert cfg["loss"]["terms"]["ar"] == {"weight": 3.0, "objective": "bce"}
    assert cfg["loss"]["lambda_ar"] == 0.0 and cfg["seed"] == 2
    assert run_config(study, out, "rmi_0p3", 1)["loss"]["terms"]["rmi"]["weight"] == 0.3
    assert study.arms["lovasz_3"].label == "CE + 3 Lovasz"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"terms": "ar,focal"}, "--terms: unknown term 'focal'; valid: ar, ar_bce, lovasz"),
        ({"terms": "ar,dice,ar"}, "--terms: ar is given twice"),
        ({"weights": "1,three"}, "--weights: 'three' is not a positive number"),
        ({"weights": "1,0"}, "--weights: '0' is not a positive number"),
        ({"weights": "-1"}, "--weights: '-1' is not a positive number"),
        ({"weights": "1,nan"}, "--weights: 'nan' is not a positive number"),
        ({"weights": "3,1,3.0"}, "--weights: 3 is given twice"),
        ({"weights": "1,,3"}, "--weights: an empty item"),
        ({"seeds": "1,2,1"}, "--seeds: seed 1 is given twice"),
        ({"seeds": "one"}, "--seeds: 'one' is not an integer"),
        ({"parallel": 0}, "--parallel must be an int >= 1"),
        ({"confirm_split": "val"}, "--confirm-split val is the split that picks the weights"),
        ({"data_root": "elsewhere"}, "--data-root is the confirm split's: give --confirm-split"),
    ],
)
def test_bad_options_are_one_line(tmp_path, options, message) -> None:
    with pytest.raises(StudyError) as err:
        _resolve(tmp_path, **options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_seeds_weights_and_ranges_parse() -> None:
    assert parse_seeds("1-3") == [1, 2, 3] and parse_seeds("4, 7") == [4, 7]
    assert parse_seeds([5, 6]) == [5, 6]
    assert parse_weights("10,1,0.3") == [0.3, 1.0, 10.0]
    with pytest.raises(StudyError, match="is not a positive number"):
        parse_weights([True])


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from arseg.cli import main

    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def test_bad_inputs_at_the_command_line_are_one_line_before_anything_runs(tmp_path, capsys) -> None:
    base, ft = _configs(tmp_path / "cfg")
    out = tmp_path / "out"
    start = ["arena", "--baseline", str(base), "--finetune", str(ft), "--out", str(out)]
    for extra, message in (
        (["--terms", "ar,foo"], "unknown term 'foo'"),
        (["--weights", "1,2,x"], "'x' is not a positive number"),
        (["--weights", "2,2"], "2 is given twice"),
        # synthetic data has train, val and test only: checked before anything runs
        (["--confirm-split", "holdout"], "--confirm-split holdout: the data has no such split"),
    ):
        rc, err = _cli([*start, *extra, "--threads", "1"], capsys)
        assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit) as exit_:  # an unknown option: argparse's line
        _cli([*start, "--colour", "red"], capsys)
    assert exit_.value.code == 2
    assert "unrecognized arguments: --colour" in capsys.readouterr().err
    assert not out.exists()
    rc, err = _cli(["arena", "--baseline", str(base), "--finetune", str(ft)], capsys)
    assert rc == 2 and "--out DIR is required" in err


def test_help_offers_every_flag(capsys) -> None:
    from arseg.cli import main

    with pytest.raises(SystemExit):
        main(["arena", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--baseline",
        "--finetune",
        "--out",
        "--terms",
        "--weights",
        "--seeds",
        "--confirm-split",
        "--parallel",
        "--threads",
        "--data-root",
    ):
        assert flag in text, flag


def _record(out: Path, arena: ArenaConfig) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "arena.json", arena.as_dict())


def test_a_recorded_arena_is_continued_extended_or_refused(tmp_path) -> None:
    arena, out, _ = _resolve(tmp_path, terms="ar,dice", weights="1,3", seeds="1,2")
    _record(out, arena)
    same, _, recorded = resolve_arena(out)  # `arseg arena DIR`: as recorded
    assert recorded == arena and same == arena
    more, _, _ = resolve_arena(out, terms="ar", weights="10")  # extended: the union
    assert more.terms == {"ar": [1.0, 3.0, 10.0], "dice": [1.0, 3.0]}
    assert more.seeds == [1, 2]  # from the record
    wider, _, _ = resolve_arena(out, weights="10")  # weights alone: the recorded terms only
    assert wider.terms == {"ar": [1.0, 3.0, 10.0], "dice": [1.0, 3.0, 10.0]}
    lovasz, _, _ = resolve_arena(out, terms="lovasz")  # a new term at its own ladder
    assert lovasz.terms["lovasz"] == list(DEFAULT_LADDERS["lovasz"])
    with pytest.raises(StudyError, match=r"seeds: recorded \[1, 2\], given \[1, 2, 3\]"):
        resolve_arena(out, seeds="1-3")
    with pytest.raises(StudyError, match="threads: recorded 1, given 2"):
        resolve_arena(out, threads=2)
    other = tmp_path / "other.yaml"
    other.write_text((tmp_path / "cfg" / "ft.yaml").read_text())
    with pytest.raises(StudyError, match="finetune: recorded"):
        resolve_arena(None, out=out, finetune=other)
    # the confirm split is analysis only: a recorded arena takes one
    confirmed, _, _ = resolve_arena(out, confirm_split="test")
    assert confirmed.confirm_split == "test"


def test_a_relative_data_root_is_recorded_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    arena, out, _ = _resolve(
        tmp_path, terms="ar", weights="1", seeds="1", confirm_split="test", data_root="data"
    )
    assert arena.data_root == str(tmp_path / "data")
    _record(out, arena)
    monkeypatch.chdir(out)  # `arseg arena DIR` from elsewhere reads the same folder
    assert resolve_arena(out)[0].data_root == str(tmp_path / "data")


def test_the_study_of_an_extended_arena_extends_the_recorded_study(tmp_path, capsys) -> None:
    from arseg.study.config import record_study

    arena, out, _ = _resolve(tmp_path, terms="ar", weights="1", seeds="1,2")
    record_study(arena.study(), out / "arena.json", out, command="arseg arena")
    _record(out, arena)
    more, _, _ = resolve_arena(out, weights="3")  # the recorded term at a new weight
    record_study(more.study(), out / "arena.json", out)
    assert "extending the study" in capsys.readouterr().out
    assert set(yaml.safe_load((out / "study.yaml").read_text())["arms"]) == {"ce", "ar_1", "ar_3"}


def test_an_arena_yaml_gives_per_term_ladders_and_the_options_override_it(tmp_path) -> None:
    base, _ft = _configs(tmp_path / "cfg")
    config = tmp_path / "cfg" / "arena.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "baseline": "base.yaml",
                "finetune": "ft.yaml",
                "terms": {"ar": [1, 30], "dice": None},
                "seeds": [4, 5],
                "overrides": {"trainer.channels_last": True},
                "threads": 1,
            }
        )
    )
    arena, _, _ = resolve_arena(config, out=tmp_path / "out")
    assert arena.terms == {"ar": [1.0, 30.0], "dice": [1.0, 3.0]} and arena.seeds == [4, 5]
    assert arena.baseline == str(base.resolve()) and arena.name == "mine"
    assert arena.study().overrides == {"trainer.channels_last": True}
    arena, _, _ = resolve_arena(config, out=tmp_path / "out", seeds="1-3", terms="ar")
    assert arena.terms == {"ar": [1.0, 30.0]} and arena.seeds == [1, 2, 3]
    config.write_text(yaml.safe_dump({"baseline": "base.yaml", "finetune": "ft.yaml", "arm": 1}))
    with pytest.raises(StudyError, match="unknown arena key"):
        resolve_arena(config, out=tmp_path / "out")


def test_a_directory_that_holds_something_else_is_refused(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(StudyError, match=r"holds no study\.yaml"):
        _resolve(tmp_path)
    with pytest.raises(StudyError, match="holds no arena"):
        resolve_arena(tmp_path / "out")


# ----------------------------------------------------------------------------- the answer
def _fake_arena(tmp_path, make_run, accuracy, *, confirm: dict | None = None):
    """An arena whose runs are the analysis tests' fake finished runs (no training)."""
    arena, out, _ = _resolve(
        tmp_path,
        terms="ar,dice",
        weights="1,3",
        seeds="1,2,3",
        confirm_split="test" if confirm else None,
    )
    arena = ArenaConfig(**{**arena.__dict__, "n_boot": 200, "report_num_images": 2})
    study = arena.study()
    (out / "state").mkdir(parents=True)
    for arm in study.arms:
        for seed in arena.seeds:
            run = out / arm / f"seed{seed}"
            kwargs = {"seed": seed, "accuracy": accuracy[arm], "confusion_seed": 10 * seed}
            make_run(run, **kwargs)
            (out / "state" / f"{arm}_seed{seed}.json").write_text("{}")
            if confirm:
                acc = confirm.get(arm, accuracy[arm])
                make_run(run, **{**kwargs, "accuracy": acc}, eval_dir="eval/test")
                (out / "state" / f"{arm}_seed{seed}.test.json").write_text("{}")
    for name in ("baseline.json", "baseline.test.json"):
        (out / "state" / name).write_text("{}")
    write_json(
        out / "arena_plan.json",
        {"step_s": {"ce": 1.0, "ar": 1.02, "dice": 1.1}, "threads": 1, "device": "cpu"},
    )
    return arena, study, out


ACCURACY = {"ce": 0.7, "ar_1": 0.72, "ar_3": 0.75, "dice_1": 0.69, "dice_3": 0.66}


def test_the_answer_ranks_each_terms_best_weight_and_names_the_term_to_add(
    tmp_path, make_run, capsys
) -> None:
    from arseg.study.arena_run import analyse_arena

    arena, study, out = _fake_arena(tmp_path, make_run, ACCURACY)
    answer = analyse_arena(arena, study, out)
    text = capsys.readouterr().out
    first, second = answer["rows"]
    assert (first["term"], first["weight"], second["term"], second["weight"]) == (
        "ar",
        3,
        "dice",
        1,
    )
    assert first["val"]["gain"] > 0 and first["val"]["excludes_zero"]
    assert first["val"]["seeds_ahead"] == 3 and first["cost"] == pytest.approx(1.02)
    assert [c[0] for c in first["curve"]] == [1.0, 3.0]
    assert answer["recommended"] == "ar"
    lines = text.strip().splitlines()
    assert lines[-1].startswith("answer: add AR at weight 3: +") and "on val" in lines[-1]
    assert "| 1 | AR | 3 (of 2) |" in text and "| 2 | Dice | 1 (of 2) |" in text
    assert "the best of each term's ladder on val, the split that chose them" in text
    assert "weights compared: ar 2, dice 2" in text and "1.02x" in text
    # AR's gain was largest at its ladder's top (3 of 1, 3): the answer says to look above it
    assert first["at_top"] and not second["at_top"]
    assert "At the top of its ladder on val: AR 3 " in text
    assert "`arseg arena DIR --terms ar --weights 10`" in text and "--terms dice" not in text
    saved = json.loads((out / "arena_answer.json").read_text())
    assert saved["recommended"] == "ar" and (out / "arena_answer.md").read_text() in text
    page = (out / "report" / "arena" / "report.html").read_text()
    for part in ("The answer", "Weight curves", "Per class: CE + 3 AR", "answer: add AR"):
        assert part in page, part
    figures = {p.name for p in (out / "report" / "arena" / "figures").iterdir()}
    assert {"arena-forest.png", "arena-curve-ar.png", "arena-curve-dice.png"} <= figures
    assert "arena-per-class.png" in figures


def test_no_term_helps_when_no_gain_excludes_zero(tmp_path, make_run, capsys) -> None:
    from arseg.study.arena_run import analyse_arena

    worse = {"ce": 0.7, "ar_1": 0.6, "ar_3": 0.66, "dice_1": 0.65, "dice_3": 0.62}
    arena, study, out = _fake_arena(tmp_path, make_run, worse)
    answer = analyse_arena(arena, study, out)
    assert answer["recommended"] is None
    text = capsys.readouterr().out
    assert text.strip().splitlines()[-1].startswith("answer: none of them helps here")
    # AR 3, the top of its ladder, loses least: no larger weight is suggested for a loss
    assert answer["rows"][0]["weight"] == 3 and not answer["rows"][0]["at_top"]
    assert "At the top of its ladder" not in text


@pytest.mark.parametrize(
    "weight, following",
    [(0.03, 0.1), (0.1, 0.3), (0.3, 1.0), (1.0, 3.0), (2.0, 3.0), (3.0, 10.0), (10.0, 30.0)],
)
def test_the_next_weight_follows_a_one_three_ten_ladder(weight, following) -> None:
    from arseg.study.arena_answer import next_weight

    assert next_weight(weight) == following


def test_a_confirm_split_states_the_answer_on_the_picked_weights_only(
    tmp_path, make_run, capsys
) -> None:
    """Val picks AR 3 and Dice 1; on the confirm split AR's lead is gone and Dice gains: the
    answer follows the confirm split, and only the picked arms are read there."""
    from arseg.study.arena_run import analyse_arena

    confirm = {"ar_3": 0.69, "dice_1": 0.74}
    arena, study, out = _fake_arena(tmp_path, make_run, ACCURACY, confirm=confirm)
    answer = analyse_arena(arena, study, out)
    text = capsys.readouterr().out
    assert answer["recommended"] == "dice"
    assert [r["term"] for r in answer["rows"]] == ["dice", "ar"]
    assert all(r["confirm"] is not None for r in answer["rows"])
    assert "confirm: CE only and each term's best weight on val (CE + 3 AR, CE + 1 Dice)" in text
    assert text.strip().splitlines()[-1].endswith("over CE only on test")
    assert "gain on test [95% CI]" in text and "only the picked weights" in text
    compared = sorted(p.name for p in (out / "compare" / "test").glob("*.json"))
    assert compared == ["ar_3_vs_ce_best.json", "dice_1_vs_ce_best.json"]


def _shared_peak(root: Path) -> Path:
    import os

    peak = root.parents[3] / "shared" / "checkpoints" / "camvid_efflite0_peak"
    if not peak.is_dir():
        if os.environ.get("ARSEG_REQUIRE_CAMVID"):
            pytest.fail(f"the shared CE peak {peak} is missing")
        pytest.skip(f"the shared CE peak {peak} is not here")
    return peak


def test_the_camvid_arena_config_is_the_defaults_and_resolves(tmp_path) -> None:
    from arseg.study.config import check_study

    root = Path(__file__).resolve().parents[2] / "configs" / "camvid" / "pretrained"
    peak = _shared_peak(root)
    arena, _, _ = resolve_arena(root / "default_arena.yaml", out=tmp_path / "out")
    assert arena.baseline == str(peak.resolve())
    assert arena.terms == {t: list(w) for t, w in DEFAULT_LADDERS.items()}
    assert arena.seeds == [1, 2, 3]
    check_study(arena.study(), "default_arena.yaml")  # all 14 arms resolve


def test_the_precision_check_study_resolves_from_the_shared_peak() -> None:
    from arseg.study import load_study_config
    from arseg.study.config import run_config

    root = Path(__file__).resolve().parents[2] / "configs" / "camvid" / "pretrained"
    _shared_peak(root)
    study = load_study_config(root / "precision_check_study.yaml")
    assert set(study.arms) == {"ce", "lovasz", "ce_bf16", "lovasz_bf16"}
    assert all(a.seeds == [1, 2, 3] for a in study.arms.values())
    cfg = run_config(study, Path("out"), "lovasz_bf16", 1)
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["data"]["crop_size"] == [180, 240]
    assert cfg["loss"]["terms"]["lovasz"]["weight"] == 1.0
    assert run_config(study, Path("out"), "lovasz", 1)["trainer"]["precision"] == "32-true"
