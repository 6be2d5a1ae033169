"""``arseg study`` on a finished study with damaged records: each named in one line, the table
printed from what can be read, a non-zero exit; nothing is trained (fake finished runs)."""

from __future__ import annotations

import json
import shutil

import yaml

from arseg.cli import main
from arseg.engine.dirlock import LOCK_NAME

ARMS = {
    "ce": {"label": "CE only", "seeds": [1, 2], "overrides": {"loss.lambda_ar": 0.0}},
    "ar": {"label": "CE + 0.1 AR", "seeds": [1, 2], "overrides": {"loss.lambda_ar": 0.1}},
}


def _finished_study(root, make_run):
    """A study directory as a finished ``arseg study`` leaves it (runs, evaluations, states)."""
    out = root / "out"
    study = {
        "name": "fake",
        "parallel": 1,
        "threads": 1,
        "eval_split": "val",
        "report_num_images": 0,  # no checkpoints to draw images from
        "n_boot": 200,
        "control": "ce",
        "overrides": {},
        "baseline": str(root / "base.yaml"),
        "finetune": str(root / "ft.yaml"),
        "arms": ARMS,
    }
    out.mkdir()
    (out / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    runs = {"baseline": out / "baseline"}
    runs |= {
        f"{a}_seed{s}": out / a / f"seed{s}" for a, spec in ARMS.items() for s in spec["seeds"]
    }
    (out / "state").mkdir()
    for i, (job, run) in enumerate(runs.items()):
        seed = int(job[-1]) if job != "baseline" else 0
        make_run(run, seed=seed, accuracy=0.6 + 0.1 * job.startswith("ar"), confusion_seed=i)
        shutil.copytree(run / "eval" / "val", run / "eval" / "val-last")
        (out / "state" / f"{job}.json").write_text(json.dumps({"job": job}))
    return out


def _files(out):
    return sorted(
        (str(p.relative_to(out)), p.stat().st_mtime_ns)
        for p in out.rglob("*")
        if p.is_file() and p.name != LOCK_NAME
    )


def test_a_study_with_damaged_records_names_them_and_prints_what_it_can(
    tmp_path, make_run, capsys
) -> None:
    out = _finished_study(tmp_path, make_run)
    csv_path = out / "ar" / "seed1" / "metrics.csv"
    text = csv_path.read_text()
    csv_path.write_text(text[: len(text) // 2 + 7])  # cut in the middle of a row
    n_lines = len(csv_path.read_text().splitlines())
    assert main(["study", str(out)]) == 2
    captured = capsys.readouterr()
    named = f"{csv_path} is damaged: line {n_lines} is cut short"
    errors = [line for line in captured.err.splitlines() if line.startswith("arseg: error:")]
    assert errors and all(named in line for line in errors)
    assert errors[-1].startswith(f"arseg: error: the analysis of {out} is incomplete")
    assert "Traceback" not in captured.err and "pandas" not in captured.err
    # the table it could make: every arm, the comparisons did not need metrics.csv
    assert "| CE + 0.1 AR | best | 2 |" in captured.out and "| CE only | last | 2 |" in captured.out
    summary = json.loads((out / "summary_val.json").read_text())
    assert summary["rows"]["ar/best"]["delta"]["delta_miou"] > 0

    csv_path.write_text(text)
    assert main(["study", str(out)]) == 0  # repaired: the whole analysis again
    capsys.readouterr()


def test_an_empty_state_file_is_named_before_anything_runs(tmp_path, make_run, capsys) -> None:
    out = _finished_study(tmp_path, make_run)
    state = out / "state" / "ce_seed2.json"
    state.write_text("")
    before = _files(out)
    assert main(["study", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"arseg: error: {state} is damaged: it is empty; it records that run ce_seed2 has "
        "finished: delete it and run the study again (the run is then resumed from its last "
        "checkpoint, not trained again if it had finished, and evaluated again)"
    )
    assert _files(out) == before
    # a damaged study record of the directory itself
    (out / "study.yaml").write_text("arms: [ce\n")
    assert main(["study", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"arseg: error: {out / 'study.yaml'} is damaged: it is not valid YAML")


def test_a_damaged_worker_spec_is_one_line_in_its_log(tmp_path, capsys) -> None:
    from arseg.study.worker import run_job

    spec = tmp_path / "ce_seed1.spec.json"
    spec.write_text('{"name": "ce_seed1", "run_dir": ')  # cut short
    assert run_job(str(spec)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"arseg: error: {spec} is damaged: it is not valid JSON (")
    assert len(err.splitlines()) == 1
