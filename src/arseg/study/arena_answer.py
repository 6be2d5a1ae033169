"""The answer of an arena: each term's best weight, ranked, and the term to add (or none).

Every arm is compared with CE only by the study floor (:func:`arseg.study.table.compare_arms`:
:func:`arseg.analysis.compare.compare_runs`, the two-level bootstrap over images and seed
pairs), at each run's best-val checkpoint. Per term the weight with the largest mIoU gain on
the selection split is picked; with a confirm split, only CE only and the picked weights are
evaluated on it (the study floor's ``eval_split`` pass) and compared there, and the answer is
stated on that split, beside the selection split's figures. Without one the table says that its
figures are the best of a ladder on the split that chose them.

A term *helps* where its gain's interval excludes 0 and the gain is positive (on the confirm
split when there is one). Written: ``DIR/arena_answer.{md,json}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from arseg.rundir import write_json

from .arena import CONTROL, ArenaConfig, arena_terms, arm_name, weight_text
from .config import StudyConfig

__all__ = [
    "ANSWER_FILE",
    "build_answer",
    "comparison_figures",
    "format_answer",
    "next_weight",
    "pick_weights",
]

ANSWER_FILE = "arena_answer"


def comparison_figures(cmp: Any) -> dict[str, Any]:
    """What the answer reads of a :class:`~arseg.analysis.compare.Comparison` (IoU 0..1)."""
    bs = cmp.bootstrap
    data = cmp.as_dict()
    pairs = list(zip(cmp.miou_a, cmp.miou_b))
    bd = cmp.boundary
    pixel_t = cmp.seed_tests.get("pixel_acc")
    return {
        "gain": bs.delta,
        "low": bs.ci_low,
        "high": bs.ci_high,
        "excludes_zero": bool(bs.excludes_zero),
        "seeds_ahead": sum(b > a for a, b in pairs),
        "pairs": len(pairs),
        "miou": sum(cmp.miou_b) / len(cmp.miou_b),
        "control_miou": sum(cmp.miou_a) / len(cmp.miou_a),
        "boundary": None
        if bd is None
        else {
            "delta": bd.delta,
            "low": bd.ci_low,
            "high": bd.ci_high,
            "excludes_zero": bool(bd.excludes_zero),
        },
        "pixel_acc": data["deltas"].get("pixel_acc"),
        "pixel_acc_p": None if pixel_t is None else pixel_t.p_value,
        "verdict": cmp.verdict,
        "warnings": list(cmp.warnings),
    }


def helps(fig: Mapping[str, Any] | None) -> bool:
    """A positive gain whose interval excludes 0."""
    return bool(fig) and fig["excludes_zero"] and fig["gain"] > 0  # type: ignore[index]


def pick_weights(arena: ArenaConfig, comparisons: Mapping[str, Any]) -> dict[str, str]:
    """``{term: arm}``: each term's weight with the largest gain (ties: the smaller weight)."""
    picks = {}
    for term, ladder in arena.terms.items():
        scored = [
            (comparisons[f"{arm_name(term, w)}/best"].bootstrap.delta, -w, arm_name(term, w))
            for w in ladder
            if f"{arm_name(term, w)}/best" in comparisons
        ]
        scored = [s for s in scored if not math.isnan(s[0])]
        if scored:
            picks[term] = max(scored)[2]
    return picks


def build_answer(
    arena: ArenaConfig,
    study: StudyConfig,
    comparisons: Mapping[str, Any],
    confirm: Mapping[str, Any],
    plan: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The answer as plain data: ranked term rows, curves, the recommendation."""
    picks = pick_weights(arena, comparisons)
    known = arena_terms()
    step_s = (plan or {}).get("step_s", {})
    rows = []
    for term, ladder in arena.terms.items():
        curve = []
        for w in ladder:
            cmp = comparisons.get(f"{arm_name(term, w)}/best")
            if cmp is not None:
                bs = cmp.bootstrap
                curve.append([w, bs.delta, bs.ci_low, bs.ci_high])
        arm = picks.get(term)
        row: dict[str, Any] = {
            "term": term,
            "label": known[term].label,
            "weights": list(ladder),
            "curve": curve,
            "arm": arm,
            "weight": arena.arms()[arm][1] if arm else None,
            "arm_label": study.arms[arm].label if arm else None,
            "val": comparison_figures(comparisons[f"{arm}/best"]) if arm else None,
            "confirm": None,
            "cost": step_s[term] / step_s[CONTROL]
            if term in step_s and step_s.get(CONTROL)
            else None,
        }
        # the gain still largest at the ladder's largest weight: a larger one may gain more
        # (CamVid: AR rose from 10 to 30, AR bce from 3 to 10; docs/experiments/arena_v4.md)
        row["at_top"] = bool(
            arm and len(ladder) > 1 and row["weight"] == max(ladder) and row["val"]["gain"] > 0
        )
        if arm and f"{arm}/best" in confirm:
            row["confirm"] = comparison_figures(confirm[f"{arm}/best"])
        rows.append(row)
    on = "confirm" if arena.confirm_split else "val"

    def key(row: dict[str, Any]) -> float:
        fig = row[on]
        return -math.inf if not fig or math.isnan(fig["gain"]) else fig["gain"]

    rows.sort(key=key, reverse=True)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    best = next((row for row in rows if helps(row[on])), None)
    return {
        "arena": arena.name,
        "split": arena.eval_split,
        "confirm_split": arena.confirm_split,
        "seeds": list(arena.seeds),
        "rows": rows,
        "recommended": None if best is None else best["term"],
        "plan": dict(plan or {}),
    }


def next_weight(weight: float) -> float:
    """The next weight of a 1-3-10 ladder above ``weight``: 1 -> 3, 3 -> 10, 10 -> 30."""
    decade = 10.0 ** math.floor(math.log10(weight) + 1e-9)  # 0.3: 0.1, not 0.01
    step = 10 if round(weight / decade, 9) >= 3 else 3
    return round(step * decade, 12)


def _pt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:+.2f}"


def _interval(fig: Mapping[str, Any] | None) -> str:
    if not fig:
        return "n/a"
    text = f"{_pt(fig['gain'])} [{_pt(fig['low'])}, {_pt(fig['high'])}]"
    return text + (" *" if fig["excludes_zero"] else "")


def _boundary(fig: Mapping[str, Any] | None) -> str:
    b = (fig or {}).get("boundary")
    if not b:
        return "n/a"
    return f"{_pt(b['delta'])} [{_pt(b['low'])}, {_pt(b['high'])}]" + (
        " *" if b["excludes_zero"] else ""
    )


def _pixel(fig: Mapping[str, Any] | None) -> str:
    if not fig or fig.get("pixel_acc") is None:
        return "n/a"
    p = fig.get("pixel_acc_p")
    return _pt(fig["pixel_acc"]) + ("" if p is None or p != p else f" (p {p:.2g})")


def _ahead(fig: Mapping[str, Any] | None) -> str:
    return "n/a" if not fig else f"{fig['seeds_ahead']}/{fig['pairs']}"


def recommendation(answer: Mapping[str, Any]) -> str:
    """The last line: the term to add, or that none of them helps here."""
    split = answer["confirm_split"] or answer["split"]
    on = "confirm" if answer["confirm_split"] else "val"
    rows = {row["term"]: row for row in answer["rows"]}
    term = answer["recommended"]
    if term is None:
        return (
            f"answer: none of them helps here (no term's gain on {split} has an interval that "
            "excludes 0)"
        )
    row = rows[term]
    return (
        f"answer: add {row['label']} at weight {weight_text(row['weight'])}: "
        f"{_interval(row[on]).rstrip(' *')} mIoU points over CE only on {split}"
    )


def format_answer(answer: Mapping[str, Any]) -> str:
    """The ranked table, its notes and the recommendation, as Markdown."""
    split, confirm = answer["split"], answer["confirm_split"]
    rows = answer["rows"]
    lines = [f"## Arena {answer['arena']}: which structural loss helps here", ""]
    control = next((r["val"] for r in rows if r["val"]), None)
    if control:
        text = f"CE only: mIoU {100 * control['control_miou']:.2f} % on {split}"
        conf = next((r["confirm"] for r in rows if r["confirm"]), None)
        if conf:
            text += f", {100 * conf['control_miou']:.2f} % on {confirm}"
        lines += [text + f" (mean over seeds {', '.join(map(str, answer['seeds']))}).", ""]
    if confirm:
        lines += [
            f"| rank | term | weight (best of n on {split}) | gain on {split} [95% CI] | "
            f"gain on {confirm} [95% CI] | seeds ahead ({confirm}) | Boundary IoU diff "
            f"({confirm}) | pixel acc diff ({confirm}) | cost / step |",
            "| ---: | --- | ---: | --- | --- | ---: | --- | ---: | ---: |",
        ]
    else:
        lines += [
            f"| rank | term | weight (best of n on {split}) | mIoU % | gain on {split} [95% CI] | "
            "seeds ahead | Boundary IoU diff [95% CI] | pixel acc diff | cost / step |",
            "| ---: | --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
        ]
    for row in rows:
        weight = "n/a" if row["weight"] is None else weight_text(row["weight"])
        weight += f" (of {len(row['weights'])})"
        cost = "n/a" if row["cost"] is None else f"{row['cost']:.2f}x"
        val = row["val"]
        if confirm:
            fig = row["confirm"]
            cells = [_interval(val), _interval(fig), _ahead(fig), _boundary(fig), _pixel(fig)]
        else:
            miou = "n/a" if not val else f"{100 * val['miou']:.2f}"
            cells = [miou, _interval(val), _ahead(val), _boundary(val), _pixel(val)]
        lines.append(
            f"| {row['rank']} | {row['label']} | {weight} | {' | '.join(cells)} | {cost} |"
        )
    lines.append("")
    pairs = next((r["val"]["pairs"] for r in rows if r["val"]), 0)
    notes = [
        "Gains in mIoU points over CE only, each run at its best-val checkpoint, seed paired "
        f"with CE only ({pairs} pairs); 95% two-level bootstrap intervals (images and seed "
        "pairs resampled; * = excludes 0). A term helps where its interval excludes 0 and the "
        "gain is positive.",
    ]
    compared = ", ".join(f"{r['term']} {len(r['weights'])}" for r in rows)
    if confirm:
        notes.append(
            f"Each term's weight was picked on {split} (weights compared: {compared}); only the "
            f"picked weights and CE only were evaluated on {confirm}, which chose nothing: the "
            f"{confirm} figures are the ones to believe, the {split} ones are flattered by the "
            "pick."
        )
    else:
        notes.append(
            f"These figures are the best of each term's ladder on {split}, the split that chose "
            f"them (weights compared: {compared}): they flatter the picked weight. Give "
            "--confirm-split SPLIT (a split the data has beyond val) to state them on images "
            "that chose nothing."
        )
    top = [r for r in rows if r.get("at_top")]
    if top:
        notes.append(
            f"At the top of its ladder on {split}: "
            + ", ".join(f"{r['label']} {weight_text(r['weight'])}" for r in top)
            + " (its gain was largest at its largest weight): a larger weight may gain more; "
            "try the next one with "
            + "; ".join(
                f"`arseg arena DIR --terms {r['term']} --weights {weight_text(next_weight(r['weight']))}`"
                for r in top
            )
            + "."
        )
    from arseg.analysis.stats import MIN_SEED_PAIRS

    if 0 < pairs < MIN_SEED_PAIRS:
        notes.append(
            f"With {pairs} seed pairs (fewer than {MIN_SEED_PAIRS}) the seed level of the "
            "intervals is coarse: read the ranking as a screen, and confirm a close call with "
            "more seeds."
        )
    plan = answer.get("plan") or {}
    if plan.get("step_s"):
        how = [f"{plan.get('steps_timed', 2)} steps each"]
        how += [f"{plan['threads']} thread(s)"] if plan.get("threads") else []
        how += [str(plan[k]) for k in ("device", "timed_at") if plan.get(k)]
        notes.append(
            "Cost / step: a training step of the recipe with the term, relative to CE only, "
            f"timed by the arena's plan ({', '.join(how)}); n/a: not timed."
        )
    lines += [*notes, "", recommendation(answer), ""]
    return "\n".join(lines)


def write_answer(out: Path, answer: Mapping[str, Any]) -> str:
    """Write ``DIR/arena_answer.{md,json}``; returns the Markdown."""
    text = format_answer(answer)
    (out / f"{ANSWER_FILE}.md").write_text(text)
    write_json(out / f"{ANSWER_FILE}.json", dict(answer))
    return text
