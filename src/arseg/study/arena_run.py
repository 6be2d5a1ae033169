"""Running an arena: check everything, print the plan, record, run the study, answer, report.

:func:`run_arena` is ``arseg arena``. Every check (the options, the recorded arena, every run
config, the confirm split) comes before anything is written; the plan line comes before the
first run; the runs are the study floor's (:func:`arseg.study.run.run_jobs`: resumable, locked,
on this machine or a cluster); the answer is :mod:`arseg.study.arena_answer`'s and the page
:func:`arseg.analysis.arena_report.build_arena_report`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from arseg.rundir import write_json

from .arena import ARENA_FILE, CONTROL, ArenaConfig, resolve_arena
from .arena_answer import build_answer, pick_weights, recommendation, write_answer
from .arena_plan import PLAN_FILE, plan_arena
from .config import StudyConfig, StudyError, check_study, record_study, run_config
from .run import run_jobs
from .table import AnalysisErrors, compare_arms, provenance_line

__all__ = ["analyse_arena", "check_confirm_split", "run_arena"]


def check_confirm_split(arena: ArenaConfig, study: StudyConfig, out: Path) -> int:
    """The images of the confirm split (one line when the data cannot build it)."""
    from arseg.engine.cli import expected_errors
    from arseg.engine.datamodule import build_eval_dataset

    split = arena.confirm_split
    cfg = run_config(study, out, CONTROL, arena.seeds[0])
    if arena.data_root is not None:
        cfg["data"]["root"] = str(arena.data_root)
    try:
        dataset = build_eval_dataset(cfg, split)
        n = len(dataset)
    except (*expected_errors(), OSError) as err:
        raise StudyError(f"--confirm-split {split}: the data has no such split ({err})") from None
    if n == 0:
        raise StudyError(f"--confirm-split {split}: the split holds no image")
    return n


def run_arena(
    source: str | Path | None = None,
    *,
    out: str | Path | None = None,
    budget_s: float = 45.0,
    **options: Any,
) -> dict[str, Any]:
    """Run (continue, extend) an arena; returns its answer (also ``DIR/arena_answer.json``).

    Args:
        source: an arena YAML, an arena directory, or None (the options say it all).
        out: the arena directory.
        budget_s: seconds the plan may spend timing the recipe's steps.
        options: ``baseline``, ``finetune``, ``terms``, ``weights``, ``seeds``,
            ``confirm_split``, ``parallel``, ``threads``, ``data_root``
            (:func:`arseg.study.arena.resolve_arena`).

    Raises:
        StudyError: a refused input (one line, before anything runs), a failed run, or an
            incomplete analysis.
        DirectoryBusyError: another process holds the arena's directory.
    """
    from arseg._extras import require
    from arseg.engine.dirlock import acquire

    for module in ("pandas", "matplotlib", "statsmodels"):  # the answer and the report
        require(module, "analysis", "'arseg arena'")
    arena, out_dir, _recorded = resolve_arena(source, out=out, **options)
    study = arena.study()
    check_study(study, f"arena {arena.name}")
    confirm_images = check_confirm_split(arena, study, out_dir) if arena.confirm_split else 0
    lock = acquire(out_dir)  # one arena process per directory, before anything is written
    try:
        print(provenance_line(), flush=True)
        plan = plan_arena(arena, study, out_dir, confirm_images=confirm_images, budget_s=budget_s)
        print(plan.line, flush=True)
        write_json(out_dir / ARENA_FILE, arena.as_dict())
        record_study(study, out_dir / ARENA_FILE, out_dir, command=f"arseg arena {out_dir}")
        if plan.record:
            write_json(out_dir / PLAN_FILE, plan.record)
        run_jobs(study, out_dir, announce=False)
        return analyse_arena(arena, study, out_dir)
    finally:
        if lock is not None:
            lock.release()


def analyse_arena(arena: ArenaConfig, study: StudyConfig, out: Path) -> dict[str, Any]:
    """Compare, pick, confirm, answer and report a finished arena; prints the answer last."""
    from arseg.engine.records import RunError, read_json

    errors = AnalysisErrors()
    split = arena.eval_split
    comparisons = compare_arms(study, out, split, errors, checkpoints=("best",))
    picks = pick_weights(arena, comparisons)
    confirm: dict[str, Any] = {}
    if arena.confirm_split and picks:
        sub = replace(
            study,
            arms={CONTROL: study.arms[CONTROL], **{arm: study.arms[arm] for arm in picks.values()}},
        )
        chosen = ", ".join(study.arms[arm].label for arm in picks.values())
        print(
            f"confirm: CE only and each term's best weight on {split} ({chosen}) evaluated on "
            f"{arena.confirm_split}",
            flush=True,
        )
        run_jobs(sub, out, eval_split=arena.confirm_split, data_root=arena.data_root,
                 announce=False)  # fmt: skip
        confirm = compare_arms(sub, out, arena.confirm_split, errors, checkpoints=("best",))
    try:
        plan = read_json(out / PLAN_FILE, mapping=True) if (out / PLAN_FILE).is_file() else None
    except RunError as err:  # the costs are n/a; the rest stands
        errors.show(str(err))
        plan = None
    answer = build_answer(arena, study, comparisons, confirm, plan)
    text = write_answer(out, answer)
    _report(arena, study, out, answer, text, comparisons, confirm, errors)
    print(text.rstrip("\n"), flush=True)
    if errors.damaged or errors.failed:
        raise StudyError(
            f"the analysis of {out} is incomplete: not made: {', '.join(errors.failed)}; the "
            "answer above holds what could be read"
        )
    return answer


def _report(
    arena: ArenaConfig,
    study: StudyConfig,
    out: Path,
    answer: dict[str, Any],
    text: str,
    comparisons: dict[str, Any],
    confirm: dict[str, Any],
    errors: AnalysisErrors,
) -> None:
    from arseg.analysis.arena_report import build_arena_report

    split = arena.confirm_split or arena.eval_split
    top = next((r for r in answer["rows"] if r["term"] == answer["recommended"]), None)
    if top is None and answer["rows"] and answer["rows"][0]["arm"]:
        top = answer["rows"][0]
    seeds = arena.seeds
    source = confirm if arena.confirm_split else comparisons
    top_cmp = source.get(f"{top['arm']}/best") if top else None
    try:
        paths = build_arena_report(
            answer,
            text,
            recommendation(answer),
            out / "report" / "arena",
            control_runs=[study.run_dir(out, CONTROL, s) for s in seeds],
            top_runs=[study.run_dir(out, top["arm"], s) for s in seeds] if top else [],
            top_cmp=top_cmp,
            split=split,
            num_images=arena.report_num_images,
            data_root=arena.data_root if arena.confirm_split else None,
            n_boot=arena.n_boot,
        )
    except (ValueError, OSError) as err:
        errors.show(str(err))
        errors.failed.append("the report")
        return
    print(f"report: {paths.html}", flush=True)
