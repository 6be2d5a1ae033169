"""``arseg study`` end to end on a tiny synthetic study: tables, determinism, resume after a kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from arseg.study import StudyError, load_study_config

from .conftest import arseg_process, finish, write_config

ARMS = {
    "ce": {"label": "CE only", "seeds": [1, 2], "overrides": {"loss.lambda_ar": 0.0}},
    "ar": {"label": "CE + 0.1 AR", "seeds": [1, 2], "overrides": {"loss.lambda_ar": 0.1}},
}


def _write_study(directory: Path, **changes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_config(directory, "base.yaml", trainer={"max_epochs": 1})
    (directory / "ft.yaml").write_text(
        yaml.safe_dump(
            {"_base_": "base.yaml", "optim": {"lr": 0.005}, "trainer": {"max_epochs": 2}}
        )
    )
    study = {
        "name": "tiny_study",
        "baseline": "base.yaml",
        "finetune": "ft.yaml",
        "control": "ce",
        "arms": ARMS,
        "parallel": 2,
        "threads": 2,
        "n_boot": 200,
        "report_num_images": 1,
        **changes,
    }
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _run_metrics(out: Path) -> dict[str, tuple[float, float]]:
    """(best mIoU, last mIoU) of every run of a finished study."""
    result = {}
    for metrics in sorted(out.glob("*/seed*/eval/val/metrics.json")):
        run = metrics.parents[2]
        last = json.loads((run / "eval" / "val-last" / "metrics.json").read_text())
        result[f"{run.parent.name}/{run.name}"] = (
            json.loads(metrics.read_text())["miou"],
            last["miou"],
        )
    return result


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("study")
    config = _write_study(root / "cfg")
    out = root / "out"
    proc = arseg_process("study", str(config), "--out", str(out))
    stdout = finish(proc)
    assert proc.returncode == 0, stdout
    return config, out, stdout


def test_study_writes_every_run_comparison_and_table(finished_study) -> None:
    _config, out, stdout = finished_study
    assert (out / "baseline" / "checkpoints" / "best.ckpt").is_file()
    runs = _run_metrics(out)
    assert sorted(runs) == ["ar/seed1", "ar/seed2", "ce/seed1", "ce/seed2"]
    # every fine-tune starts from the baseline and has the control's steps
    steps = {json.loads((out / name / "summary.json").read_text())["steps"] for name in runs}
    assert steps == {8}  # 16 images / batch 4 x 2 epochs
    for name in runs:
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        assert Path(cfg["init_from"]) == out / "baseline"
        assert cfg["seed"] == int(name.rsplit("seed", 1)[1])  # seed1 trains with 1, not 3
        assert cfg["loss"]["lambda_ar"] == (0.1 if name.startswith("ar") else 0.0)
        assert cfg["trainer"]["num_threads"] == 1  # 2 threads shared by 2 runs
        (record,) = json.loads((out / name / "provenance.json").read_text())
        assert record["num_threads"] == 1 and record["torch_version"]
        assert "git_commit" in record and record["arseg_version"]
    for checkpoint in ("best", "last"):
        cmp = json.loads((out / "compare" / "val" / f"ar_vs_ce_{checkpoint}.json").read_text())
        assert cmp  # the comparison of the AR arm against the control was written
    summary = json.loads((out / "summary_val.json").read_text())
    row = summary["rows"]["ar/best"]
    assert row["seeds"] == 2
    mean = sum(runs[f"ar/seed{s}"][0] for s in (1, 2)) / 2
    assert row["miou"][0] == pytest.approx(mean)
    assert summary["provenance"]["torch_version"]
    # progress across the whole study and the final table on stdout
    assert "[  5/5]" in stdout
    assert "| CE + 0.1 AR | best | 2 |" in stdout
    # each run's log: its evaluation as `arseg eval` prints it, the per-class table included
    best = json.loads((out / "ar" / "seed1" / "eval" / "val" / "metrics.json").read_text())
    log = (out / "logs" / "ar_seed1.log").read_text()
    assert f"val (best checkpoint): mIoU {best['miou']:.4f}" in log
    assert all(f"  {name}  " in log for name in best["classes"])
    assert (out / "report" / "val" / "report.html").is_file()


def test_study_killed_mid_way_continues_and_gives_the_same_numbers(
    finished_study, tmp_path: Path, capsys
) -> None:
    """Same config, same threads: same numbers; a killed study keeps its finished runs; a second
    study on the directory of a running one is refused in one line and changes nothing."""
    from arseg.cli import main

    config, reference_out, _ = finished_study
    out = tmp_path / "out"
    proc = arseg_process("study", str(config), "--out", str(out))
    first = out / "state" / "ce_seed1.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if not first.is_file():
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no run finished in time:\n{proc.communicate()[0]}")
    recorded = (out / "study.yaml").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["study", str(config), "--out", str(out)]) == 2  # a second study, meanwhile
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"arseg: error: {out} is in use by another arseg process: pid {proc.pid}")
    assert "`arseg study " in err and "Nothing was changed" in err and len(err.splitlines()) == 1
    assert (out / "study.yaml").stat().st_mtime_ns == recorded
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its running workers, without warning
    proc.wait()
    kept = {
        p.name: p.stat().st_mtime_ns
        for p in (out / "state").glob("*_seed*.json")
        if not p.name.endswith(".spec.json")  # a record of a finished run, not a run's spec
    }
    assert "ce_seed1.json" in kept
    best = (out / "ce" / "seed1" / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    assert not (out / "state" / "ar_seed2.json").exists()  # the study was cut short

    proc = arseg_process("study", str(config), "--out", str(out))
    stdout = finish(proc)
    assert proc.returncode == 0, stdout
    assert "ce_seed1: finished earlier, kept" in stdout
    for name, mtime in kept.items():
        assert (out / "state" / name).stat().st_mtime_ns == mtime
    assert (out / "ce" / "seed1" / "checkpoints" / "best.ckpt").stat().st_mtime_ns == best
    assert _run_metrics(out) == _run_metrics(reference_out)


def test_study_refuses_other_settings_in_the_same_directory(
    finished_study, tmp_path, capsys
) -> None:
    from arseg.cli import main

    _config, out, _ = finished_study
    other = _write_study(tmp_path / "cfg", n_boot=100)
    assert main(["study", str(other), "--out", str(out)]) == 2  # before anything runs
    err = capsys.readouterr().err
    assert "n_boot" in err and "another --out" in err


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"control": "xx"}, "control 'xx' is not an arm"),
        ({"arms": {"ce": {"seeds": []}}}, "needs seeds"),
        ({"arms": {"ce": {"seeds": [1], "overrides": {"optim.lrr": 1}}}}, "unknown config key"),
        ({"parallel": 0}, "parallel must be a positive int"),
        ({"colour": 1}, "unknown study key"),
    ],
)
def test_study_config_errors_are_one_line(tmp_path: Path, changes, message) -> None:
    path = _write_study(tmp_path, **changes)
    with pytest.raises(StudyError, match=message):
        load_study_config(path)


def test_camvid_study_config_resolves() -> None:
    root = Path(__file__).resolve().parents[2]
    study = load_study_config(root / "configs" / "camvid" / "pretrained" / "study.yaml")
    assert study.control == "ce"
    assert len(study.arms["ce"].seeds) >= 5 and len(study.arms["ar"].seeds) >= 5
    assert study.arms["linear"].overrides["loss.kernel"] == "linear"
    assert study.arms["fullres"].overrides["loss.scales"] is None


@pytest.mark.parametrize("ablation_seeds", [[1, 2], [1]])
def test_table_says_how_arms_with_fewer_seeds_are_compared(tmp_path, ablation_seeds) -> None:
    from arseg.study import Arm, StudyConfig
    from arseg.study.table import study_table

    study = StudyConfig(
        name="s",
        baseline=str(tmp_path / "baseline.yaml"),
        finetune=str(tmp_path / "finetune.yaml"),
        control="ce",
        arms={"ce": Arm("CE only", [1, 2]), "ar1": Arm("CE + 1.0 AR", ablation_seeds)},
    )
    markdown = study_table(study, tmp_path, "val", {})["markdown"]
    note = "compared with it on the seeds both share"
    assert (note in markdown) == (ablation_seeds != [1, 2])


def test_a_config_that_only_adds_seeds_or_arms_extends_the_recorded_study(tmp_path) -> None:
    from dataclasses import replace

    from arseg.study import Arm, ClusterSettings
    from arseg.study.config import record_study

    config = _write_study(tmp_path / "cfg")
    study = load_study_config(config)
    out = tmp_path / "out"
    record_study(study, config, out)
    ar = study.arms["ar"]
    more = replace(
        study,
        arms={**study.arms, "ar": replace(ar, seeds=[1, 2, 3]), "ar1": Arm("CE + 1.0 AR", [1])},
    )
    record_study(more, config, out)
    recorded = yaml.safe_load((out / "study.yaml").read_text())["arms"]
    assert recorded == more.as_dict()["arms"]

    def arms(**change):
        return replace(more, arms={**more.arms, **change})

    for changed in (
        arms(ar=replace(ar, seeds=[1, 3])),  # a seed that ran is dropped
        arms(ar=replace(ar, seeds=[1, 2, 3], overrides={"loss.lambda_ar": 0.2})),
        arms(ar=replace(ar, seeds=[1, 2, 3], label="renamed")),
        # a change of an arm that has run, hidden behind an added seed or arm, is refused as well
        arms(ar=replace(ar, seeds=[1, 2, 3, 4], overrides={"loss.lambda_ar": 0.2})),
        arms(ar=replace(ar, seeds=[1, 2, 3, 4], label="renamed")),
        arms(
            ce=replace(study.arms["ce"], overrides={"loss.lambda_ar": 0.5}),
            ar2=Arm("CE + 2 AR", [1], {"loss.lambda_ar": 2.0}),
        ),
    ):
        with pytest.raises(StudyError, match="arms differ"):
            record_study(changed, config, out)
    with pytest.raises(StudyError, match="n_boot differ"):
        record_study(replace(more, n_boot=100), config, out)
    assert yaml.safe_load((out / "study.yaml").read_text())["arms"] == recorded
    # where the runs execute is no other study: the same runs continue on a cluster
    record_study(replace(more, cluster=ClusterSettings("local")), config, out)
    assert yaml.safe_load((out / "study.yaml").read_text())["cluster"]["executor"] == "local"


def test_a_recorded_study_whose_configs_no_longer_resolve_stops_before_any_run(
    tmp_path, capsys
) -> None:
    """``arseg study DIR`` resolves every run's config before the first run starts: a fine-tune
    config changed since the study was recorded is one line, and the baseline is not trained."""
    from arseg.cli import main
    from arseg.study.config import record_study

    config = _write_study(tmp_path / "cfg")
    out = tmp_path / "out"
    record_study(load_study_config(config), config, out)
    (config.parent / "ft.yaml").write_text(
        yaml.safe_dump({"_base_": "base.yaml", "optim": {"lr": "fast"}})
    )
    assert main(["study", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("arseg: error: study tiny_study: arm "), (
        err
    )
    assert "optim.lr" in err, err
    assert not (out / "baseline").exists() and not (out / "logs").exists()


@pytest.mark.slow
def test_more_seeds_extend_a_finished_study(finished_study, tmp_path) -> None:
    """A config that only adds a seed trains that run alone and compares everything again."""
    import shutil

    config, out, _ = finished_study
    extended = tmp_path / "out"
    shutil.copytree(out, extended)
    before = {
        p.relative_to(extended): p.stat().st_mtime_ns
        for p in extended.glob("*/**/checkpoints/best.ckpt")
    }
    study = yaml.safe_load(config.read_text())
    study["arms"]["ar"]["seeds"] = [1, 2, 3]
    more = config.with_name("study_more_seeds.yaml")  # beside it: the same base/ft configs
    more.write_text(yaml.safe_dump(study, sort_keys=False))
    proc = arseg_process("study", str(more), "--out", str(extended))
    stdout = finish(proc, timeout=600)
    assert proc.returncode == 0, stdout
    assert "extending the study" in stdout and ": ar seeds [3];" in stdout
    assert stdout.count("finished earlier, kept") == 5  # the baseline and the 4 seed-1/2 runs
    after = {p: (extended / p).stat().st_mtime_ns for p in before}
    assert after == before  # nothing that had finished was trained again
    assert (extended / "ar" / "seed3" / "eval" / "val" / "metrics.json").is_file()
    cmp = json.loads((extended / "compare" / "val" / "ar_vs_ce_best.json").read_text())
    assert cmp["arm_a"]["seeds"] == [1, 2] == cmp["arm_b"]["seeds"]  # paired on shared seeds
    assert any("left out: B's seeds [3]" in w for w in cmp["warnings"])
    assert yaml.safe_load((extended / "study.yaml").read_text())["arms"]["ar"]["seeds"] == [1, 2, 3]
    # a changed setting of an arm that has run is still refused
    study["arms"]["ar"]["overrides"] = {"loss.lambda_ar": 0.2}
    more.write_text(yaml.safe_dump(study, sort_keys=False))
    proc = arseg_process("study", str(more), "--out", str(extended))
    stdout = finish(proc, timeout=300)
    assert proc.returncode == 2 and "arms differ" in stdout


def test_a_finished_run_as_baseline_is_fine_tuned_from_not_trained(tmp_path) -> None:
    from arseg.study.config import run_config
    from arseg.study.runner import plan_jobs

    peak = tmp_path / "my_run"
    (peak / "checkpoints").mkdir(parents=True)
    write_config(peak, "config.yaml")
    config = _write_study(tmp_path / "cfg", baseline=str(peak))
    with pytest.raises(StudyError, match="not a finished run"):
        load_study_config(config)
    (peak / "checkpoints" / "best.ckpt").write_bytes(b"")  # what the study checks for
    study = load_study_config(config)
    assert study.baseline == str(peak.resolve())
    out = tmp_path / "out"
    baseline, finetunes = plan_jobs(study, out)
    # evaluated, not trained, through a view in the study's own folder
    assert not baseline.trains and baseline.run_dir == out / "baseline"
    assert all(job.config(study, out)["init_from"] == str(out / "baseline") for job in finetunes)
    cfg = run_config(study, out, "ar", 1)
    assert cfg["init_from"] == str(out / "baseline") and cfg["loss"]["lambda_ar"] == 0.1


def test_each_seed_of_an_arm_trains_with_its_own_seed(tmp_path) -> None:
    """``OUT/<arm>/seed<k>/config.yaml`` holds seed k, whatever the fine-tune config's default."""
    from arseg.study.runner import plan_jobs

    arms = {k: {**v, "seeds": [1, 2, 7]} for k, v in ARMS.items()}
    study = load_study_config(_write_study(tmp_path / "cfg", arms=arms))
    assert yaml.safe_load((tmp_path / "cfg" / "base.yaml").read_text())["seed"] == 3
    out = tmp_path / "out"
    baseline, finetunes = plan_jobs(study, out)
    assert baseline.config(study, out)["seed"] == 3  # the baseline keeps its config's
    assert sorted((job.arm, job.seed) for job in finetunes) == [
        (arm, seed) for arm in ("ar", "ce") for seed in (1, 2, 7)
    ]
    for job in finetunes:
        cfg = job.config(study, out)
        assert cfg["seed"] == job.seed and cfg["run_dir"] == str(out / job.arm / f"seed{job.seed}")


def test_a_finished_baseline_is_seen_through_links_and_never_written(tmp_path) -> None:
    from arseg.study.run import prepare_baseline_view

    peak = tmp_path / "given" / "peak"
    (peak / "checkpoints").mkdir(parents=True)
    write_config(peak, "config.yaml")
    (peak / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    (peak / "summary.json").write_text("{}")
    study = load_study_config(_write_study(tmp_path / "cfg", baseline=str(peak)))
    before = sorted((p.relative_to(peak), p.stat().st_mtime_ns) for p in peak.rglob("*"))
    out = tmp_path / "out"
    prepare_baseline_view(study, out)
    prepare_baseline_view(study, out)  # a continued study: the view is kept as it is
    view = out / "baseline"
    assert (view / "checkpoints" / "best.ckpt").read_bytes() == b"weights"
    assert (view / "config.yaml").resolve() == (peak / "config.yaml").resolve()
    assert not (view / "metrics.csv").exists()  # only what the run has is linked
    (view / "eval" / "val").mkdir(parents=True)  # where the study evaluates it: its own folder
    assert not (peak / "eval").exists()
    assert sorted((p.relative_to(peak), p.stat().st_mtime_ns) for p in peak.rglob("*")) == before


@pytest.mark.slow
def test_study_from_a_finished_run(finished_study, tmp_path) -> None:
    _config, out, _ = finished_study
    config = _write_study(
        tmp_path / "cfg",
        baseline=str(out / "baseline"),
        arms={k: {**v, "seeds": [1]} for k, v in ARMS.items()},
    )
    new = tmp_path / "out"
    given = out / "baseline"
    before = sorted((p.relative_to(given), p.stat().st_mtime_ns) for p in given.rglob("*"))
    modes = {p: p.stat().st_mode for p in [given, *given.rglob("*")] if p.is_dir()}
    for p in modes:
        p.chmod(0o555)  # given read-only, as a shared peak is
    try:
        proc = arseg_process("study", str(config), "--out", str(new))
        stdout = finish(proc, timeout=600)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert proc.returncode == 0, stdout
    assert sorted((p.relative_to(given), p.stat().st_mtime_ns) for p in given.rglob("*")) == before
    ft = yaml.safe_load((new / "ar" / "seed1" / "config.yaml").read_text())
    assert ft["init_from"] == str(new / "baseline")
    summary = json.loads((new / "summary_val.json").read_text())
    base = json.loads((given / "eval" / "val" / "metrics.json").read_text())
    ours = json.loads((new / "baseline" / "eval" / "val" / "metrics.json").read_text())
    assert summary["baseline"]["miou"] == base["miou"] == ours["miou"]


@pytest.mark.parametrize("name", ["frozen_bn_study.yaml", "full_crop_study.yaml"])
def test_camvid_studies_from_the_first_studys_baseline_resolve(tmp_path, name) -> None:
    """Their baseline is a finished run that CI does not have: stand one in, resolve the rest."""
    root = Path(__file__).resolve().parents[2] / "configs" / "camvid" / "pretrained"
    raw = yaml.safe_load((root / name).read_text())
    assert raw["baseline"] == "../../../runs/studies/camvid_pretrained/baseline"
    peak = tmp_path / "baseline"
    (peak / "checkpoints").mkdir(parents=True)
    (peak / "checkpoints" / "best.ckpt").write_bytes(b"")
    (peak / "config.yaml").write_text((root / "baseline.yaml").read_text())
    raw.update(baseline=str(peak), finetune=str(root / "finetune.yaml"))
    (tmp_path / name).write_text(yaml.safe_dump(raw))
    study = load_study_config(tmp_path / name)  # every arm's run config resolves
    assert study.control == "ce" and all(len(a.seeds) >= 3 for a in study.arms.values())


def test_a_study_compares_a_peer_arm_from_the_same_peak(finished_study, tmp_path) -> None:
    """CE only against CE + Lovasz, switched by an arm's overrides, from a finished peak."""
    _config, out, _ = finished_study
    config = _write_study(
        tmp_path / "cfg",
        baseline=str(out / "baseline"),
        arms={
            "ce": {"label": "CE only", "seeds": [1], "overrides": {"loss.lambda_ar": 0.0}},
            "lovasz": {
                "label": "CE + 1.0 Lovasz",
                "seeds": [1],
                "overrides": {"loss.terms.lovasz": {"weight": 1.0}},
            },
        },
    )
    new = tmp_path / "out"
    proc = arseg_process("study", str(config), "--out", str(new))
    stdout = finish(proc, timeout=600)
    assert proc.returncode == 0, stdout
    ft = yaml.safe_load((new / "lovasz" / "seed1" / "config.yaml").read_text())
    assert ft["loss"]["terms"] == {"lovasz": {"weight": 1.0}} and ft["loss"]["lambda_ar"] == 0
    with open(new / "lovasz" / "seed1" / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    assert {"train/lovasz", "train/lambda_lovasz", "val/lovasz", "train/ar"} <= set(header)
    with open(new / "ce" / "seed1" / "metrics.csv") as f:
        assert "train/lovasz" not in f.readline()
    # the control is the finished study's CE seed 1: same peak, seed, steps and data order
    ce = json.loads((new / "ce" / "seed1" / "eval" / "val" / "metrics.json").read_text())
    same = json.loads((out / "ce" / "seed1" / "eval" / "val" / "metrics.json").read_text())
    assert ce["miou"] == same["miou"]
    assert (new / "compare" / "val" / "lovasz_vs_ce_best.json").is_file()
    assert "| CE + 1.0 Lovasz | best | 1 |" in stdout


@pytest.mark.parametrize(
    ("name", "control"),
    [
        ("arena_weights_study.yaml", "ce"),
        ("arena_peers_study.yaml", "ce"),
        ("arena_on_lovasz_study.yaml", "lovasz"),
    ],
)
def test_evidence_v3_studies_resolve_from_the_shared_peak(name, control) -> None:
    root = Path(__file__).resolve().parents[2] / "configs" / "camvid" / "pretrained"
    peak = root.parents[3] / "shared" / "checkpoints" / "camvid_efflite0_peak"
    if not peak.is_dir():
        if os.environ.get("ARSEG_REQUIRE_CAMVID"):
            pytest.fail(f"the shared CE peak {peak} is missing")
        pytest.skip(f"the shared CE peak {peak} is not here")
    study = load_study_config(root / name)  # every arm's run config resolves
    assert study.baseline == str(peak.resolve()) and study.control == control
    assert all(a.seeds == [1, 2, 3, 4, 5] for a in study.arms.values())
    if control == "lovasz":  # AR on top of the control's Lovasz term, not instead of it
        from arseg.study.config import run_config

        loss = run_config(study, Path("out"), "lovasz_ar10", 1)["loss"]
        assert loss["lambda_ar"] == 10.0 and loss["terms"]["lovasz"]["weight"] == 1.0


def _train_steps(metrics_csv: Path) -> list[int]:
    """The training steps logged so far in a run's metrics.csv (being written: read leniently)."""
    import csv

    try:
        lines = metrics_csv.read_text().splitlines(keepends=True)
    except OSError:
        return []
    steps = []
    for row in csv.DictReader(line for line in lines if line.endswith("\n")):
        try:
            if row.get("train/loss"):
                steps.append(int(float(row["step"])))
        except (TypeError, ValueError):
            continue
    return steps


@pytest.mark.slow
def test_a_second_study_is_refused_and_the_first_finishes_as_if_alone(
    finished_study, tmp_path
) -> None:
    from arseg.analysis.records import damaged_records

    config, reference_out, _ = finished_study
    out = tmp_path / "out"
    first = arseg_process("study", str(config), "--out", str(out))
    started = out / "state" / "ce_seed1.spec.json"  # the fine-tunes are under way
    deadline = time.time() + 600
    while not started.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    # e.g. a scheduler that requeued the job
    second = arseg_process("study", str(config), "--out", str(out))
    refused = finish(second, timeout=300)
    assert second.returncode == 2, refused
    (line,) = refused.strip().splitlines()
    assert line.startswith(
        f"arseg: error: {out} is in use by another arseg process: pid {first.pid}"
    )
    stdout = finish(first)
    assert first.returncode == 0, stdout
    assert _run_metrics(out) == _run_metrics(reference_out)
    for run in [out / "baseline", *out.glob("*/seed*")]:
        assert damaged_records(run) == []
        assert len(json.loads((run / "provenance.json").read_text())) == 1  # one start only


@pytest.mark.slow
def test_workers_of_a_killed_study_stop_and_the_rerun_gives_the_same_numbers(
    finished_study, tmp_path
) -> None:
    """SIGKILL of the study process alone: each worker saves its last.ckpt within a step or
    two and exits (releasing its run); the study run again gives an uninterrupted one's numbers."""
    import torch

    from arseg.engine import dirlock

    config, reference_out, _ = finished_study
    out = tmp_path / "out"
    proc = arseg_process("study", str(config), "--out", str(out))
    logged: dict[Path, int] = {}
    deadline = time.time() + 600
    while not logged and proc.poll() is None and time.time() < deadline:
        for metrics_csv in out.glob("*/seed*/metrics.csv"):
            steps = _train_steps(metrics_csv)
            if steps and max(steps) < 6 and not (metrics_csv.parent / "eval").exists():
                logged[metrics_csv.parent] = 0  # a fine-tune in mid-training
        time.sleep(0.02)
    if not logged:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no fine-tune caught in training:\n{proc.communicate()[0]}")
    logged = {run: max(_train_steps(run / "metrics.csv")) for run in logged}
    proc.kill()  # the study alone, without warning: its workers are left behind
    proc.wait()
    try:
        for run, step in logged.items():
            deadline = time.time() + 180
            while time.time() < deadline:
                try:
                    lock = dirlock.acquire(run)  # free once its worker has exited
                except dirlock.DirectoryBusyError:
                    time.sleep(0.1)
                    continue
                lock.release()
                break
            else:
                pytest.fail(f"the worker of {run} still runs 180 s after its study was killed")
            saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            assert step < saved <= step + 3, (step, saved)  # it stopped within a step or two
            log = out / "logs" / f"{run.parent.name}_{run.name}.log"
            assert "SIGTERM received: saving a checkpoint after this step" in log.read_text()
    finally:
        for run in out.glob("*/seed*"):  # never leave a worker behind: kill what holds a run
            try:
                lock = dirlock.acquire(run, create=False)
            except dirlock.DirectoryBusyError as busy:
                with contextlib.suppress(ProcessLookupError, KeyError):
                    os.kill(busy.holder["pid"], signal.SIGKILL)
            else:
                if lock is not None:
                    lock.release()
    proc = arseg_process("study", str(config), "--out", str(out))
    stdout = finish(proc)
    assert proc.returncode == 0, stdout
    assert _run_metrics(out) == _run_metrics(reference_out)


def test_a_study_without_the_analysis_extra_stops_before_any_work(tmp_path, monkeypatch, capsys):
    """Its last step compares and reports: a missing 'analysis' extra is one line at the start,
    not after every run has trained."""
    from arseg.cli import main

    monkeypatch.setitem(sys.modules, "statsmodels", None)  # as if not installed
    out = tmp_path / "out"
    assert main(["study", str(_write_study(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "arseg: error: 'arseg study' needs the 'analysis' extra: "
        'pip install "arseg[analysis]" (missing module: statsmodels)'
    )
    assert not out.exists()


def test_a_worker_trains_what_arseg_finetune_trains_from_the_same_options(
    finished_study, tmp_path
) -> None:
    """The worker calls ``fit`` and ``evaluate`` with the config the study resolved: the same
    run, bit for bit, as ``arseg finetune`` and ``arseg eval`` given the arm's options."""
    from arseg.cli import main

    config, out, _ = finished_study
    run = tmp_path / "ar_seed2"
    argv = [
        "finetune",
        str(config.with_name("ft.yaml")),
        "loss.lambda_ar=0.1",
        "trainer.num_threads=1",
        "--init-from",
        str(out / "baseline"),
        "--run-dir",
        str(run),
        "--seed",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main(["eval", str(run), "--split", "val", "--no-progress"]) == 0
    by_cli = yaml.safe_load((run / "config.yaml").read_text())
    by_study = yaml.safe_load((out / "ar" / "seed2" / "config.yaml").read_text())
    assert {**by_cli, "run_dir": None} == {**by_study, "run_dir": None}
    cli_metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    study_metrics = json.loads((out / "ar" / "seed2" / "eval" / "val" / "metrics.json").read_text())
    for key in ("miou", "boundary_iou", "pixel_acc", "val_ar", "iou_per_class"):
        assert cli_metrics[key] == study_metrics[key], key
    assert (run / "eval" / "val" / "per_image_confusion.npy").read_bytes() == (
        out / "ar" / "seed2" / "eval" / "val" / "per_image_confusion.npy"
    ).read_bytes()


def test_a_study_sent_through_submitit_gives_the_numbers_of_local_workers(
    finished_study, tmp_path
) -> None:
    """``cluster: {executor: local}``: one submitit job per run (submitit's local executor, as
    a SLURM cluster would run them), the same runs and numbers as the local workers, also when
    the scheduler stops a job mid-training in either of its two ways: SIGTERM to the worker
    (preemption without a requeue signal: the study submits the run again) and the requeue
    signal to the job (submitit's checkpoint hook stops the worker, the job is requeued); each
    run resumes from the checkpoint its worker saved."""
    pytest.importorskip("submitit")
    from arseg.engine import dirlock

    _config, out, _ = finished_study
    config = _write_study(
        tmp_path / "cfg",
        baseline=str(out / "baseline"),
        arms={name: {**arm, "seeds": [1]} for name, arm in ARMS.items()},
        cluster={"executor": "local", "parameters": {"timeout_min": 30}},
    )
    new = tmp_path / "out"
    proc = arseg_process("study", str(config), "--out", str(new))
    # ar: SIGTERM to its worker; ce: submitit's requeue signal (USR2) to its job's process
    pending = {new / "ar" / "seed1": "worker", new / "ce" / "seed1": "job"}
    deadline = time.time() + 300
    while pending and proc.poll() is None and time.time() < deadline:
        for run, whom in list(pending.items()):
            steps = _train_steps(run / "metrics.csv")
            if not steps or max(steps) >= 6 or (run / "eval").exists():
                continue
            try:
                dirlock.acquire(run, create=False).release()
            except dirlock.DirectoryBusyError as busy:  # held by the worker: stop it
                if whom == "worker":
                    os.kill(busy.holder["pid"], signal.SIGTERM)
                else:
                    os.kill(busy.holder["parent_pid"], signal.SIGUSR2)
                del pending[run]
        time.sleep(0.02)
    if pending:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"not caught in training: {pending}:\n{proc.communicate()[0]}")
    stdout = finish(proc, timeout=600)
    assert proc.returncode == 0, stdout
    assert "through submitit (local)" in stdout and "ar_seed1: submitted as job" in stdout
    assert "ar_seed1: job " in stdout and "stopped by SIGTERM (preempted); resubmitted" in stdout
    for name in ("ar_seed1", "ce_seed1"):
        log = (new / "logs" / f"{name}.log").read_text()
        assert "SIGTERM received: saving a checkpoint after this step" in log, name
        assert "resuming " in log and "from its last checkpoint" in log, name
    assert list((new / "submitit").iterdir())  # submitit's own job folders
    for name in ("ce/seed1", "ar/seed1"):
        mine = json.loads((new / name / "eval" / "val" / "metrics.json").read_text())
        local = json.loads((out / name / "eval" / "val" / "metrics.json").read_text())
        assert mine["miou"] == local["miou"] and mine["val_ar"] == local["val_ar"], name
    assert "| CE + 0.1 AR | best | 1 |" in stdout


def test_a_cluster_study_without_submitit_names_the_extra(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from arseg._extras import MissingExtraError
    from arseg.study import ClusterSettings
    from arseg.study.run import make_runner

    study = replace(load_study_config(_write_study(tmp_path)), cluster=ClusterSettings("local"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "arseg.study.cluster", raising=False)
    with pytest.raises(MissingExtraError, match=r'pip install "arseg\[cluster\]"'):
        make_runner(study, tmp_path / "out", total=1, split="val")
