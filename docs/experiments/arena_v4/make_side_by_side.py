"""Evidence v4: the arenas side by side (CamVid LW-RefineNet, quoted; and any arena or study
directory given), on val.

    python docs/experiments/arena_v4/make_side_by_side.py \
        --arena "Stanford Background, LW-RefineNet=runs/arenas/stanford" \
        --arena "CamVid, DeepLabV3+=runs/studies/smp_arena" \
        --out docs/experiments/arena_v4

Each directory is a finished study (an arena is one) analysed by ``arseg study DIR``, which
writes ``summary_val.json`` with the best-val and last-step rows of every arm against CE only;
an arena without it gives its curves from ``arena_answer.json`` (no tables).
The CamVid LW-RefineNet arena is quoted (``camvid_arena.md`` and study 4: those directories are
not in git). Prints, per directory: every arm at best-val and at the last step (mean ± std,
gain with its two-level bootstrap 95 % interval, seeds ahead, Boundary IoU and pixel accuracy
differences, the gain without the one or two classes that move most), the per-class gains at
best-val, and each term's ranking at its best weight. Writes ``side_by_side_curves_val.png``
(gain against weight, one panel per arena) and ``side_by_side_forest_val.png``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from make_curves import EARLIER, _ahead, _fmt, _iv

# study 4 (arena_v4.md), best-val: the CamVid curves' largest weights
CAMVID_STUDY4 = {
    "AR (mse)": {30.0: (2.81, 2.32, 3.31)},
    "AR (bce)": {3.0: (1.92, 1.59, 2.28), 10.0: (3.31, 2.73, 3.93)},
    "Lovasz": {10.0: (5.44, 4.76, 6.26)},
}
CAMVID_LW = "CamVid, LW-RefineNet (quoted)"
# a term's label in an arm's label ("CE + 3.0 AR (bce)") -> its name in the curves
_TERM = {"AR": "AR (mse)", "AR (bce)": "AR (bce)", "Lovasz": "Lovasz", "Dice": "Dice",
         "RMI": "RMI", "AAF": "AAF", "AAF (exp decay)": "AAF"}  # fmt: skip
_LABEL = re.compile(r"^CE \+ ([0-9.]+) (.+)$")


def term_and_weight(label: str) -> tuple[str, float] | None:
    """``"CE + 3.0 AR (bce)"`` -> ``("AR (bce)", 3.0)``; CE only -> None."""
    match = _LABEL.match(label)
    if match is None:
        return None
    return _TERM.get(match.group(2), match.group(2)), float(match.group(1))


def read_rows(directory: Path) -> dict[str, dict]:
    path = directory / "summary_val.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `arseg study {directory}` (it trains nothing)")
    return json.loads(path.read_text())["rows"]


def _pp(d: dict, key: str) -> str:
    """A metric's difference with its interval, in points, or n/a."""
    m = d.get(key)
    if not m:
        return "n/a"
    bs = m["bootstrap"]
    return _fmt((100 * m["delta"], 100 * bs["ci_low"], 100 * bs["ci_high"]))


def arm_table(rows: dict[str, dict]) -> list[str]:
    lines = [
        "| arm | ckpt | mIoU % | mIoU - CE only [95% CI] | seeds ahead | Boundary IoU - CE only "
        "| pixel acc - CE only | without the class(es) that move most |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for key, row in rows.items():
        cmp = row.get("delta")
        if cmp is None:  # the control
            continue
        carried = "; ".join(
            f"{', '.join(c['classes'])}: {100 * c['delta']:+.2f}"
            for c in cmp.get("leave_out", {}).get("without_top", [])
        )
        lines.append(
            f"| {row['label']} | {key.split('/')[1]} | {100 * row['miou'][0]:.2f} ± "
            f"{100 * row['miou'][1]:.2f} | {_fmt(_iv(cmp))} | {_ahead(cmp)} | "
            f"{_pp(cmp, 'boundary_iou')} | {100 * cmp['deltas']['pixel_acc']:+.2f} | "
            f"{carried or 'n/a'} |"
        )
    return lines


def control_line(rows: dict[str, dict]) -> str:
    control = next(row for row in rows.values() if row.get("delta") is None)
    best = rows[f"{control['arm']}/best"]
    last = rows[f"{control['arm']}/last"]
    return (
        f"{control['label']}: {100 * best['miou'][0]:.2f} ± {100 * best['miou'][1]:.2f} % (best), "
        f"{100 * last['miou'][0]:.2f} ± {100 * last['miou'][1]:.2f} (last), pixel accuracy "
        f"{100 * best['pixel_acc'][0]:.2f} %, Boundary IoU {100 * best['boundary_iou'][0]:.2f} %."
    )


def per_class_table(rows: dict[str, dict]) -> list[str]:
    best = {k: r for k, r in rows.items() if k.endswith("/best") and r.get("delta")}
    classes = [c["class"] for c in next(iter(best.values()))["delta"]["per_class"]]
    lines = [
        "| arm | " + " | ".join(classes) + " |",
        "| --- | " + " | ".join("---:" for _ in classes) + " |",
    ]
    for row in best.values():
        cells = [
            f"{100 * c['delta']:+.2f}" + ("*" if c["ci_low"] > 0 or c["ci_high"] < 0 else "")
            for c in row["delta"]["per_class"]
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def curves_of(rows: dict[str, dict]) -> dict[str, dict[float, tuple[float, float, float]]]:
    curves: dict[str, dict[float, tuple[float, float, float]]] = {}
    for key, row in rows.items():
        tw = term_and_weight(row["label"])
        if key.endswith("/best") and tw is not None and row.get("delta"):
            curves.setdefault(tw[0], {})[tw[1]] = _iv(row["delta"])
    return curves


def answer_curves(path: Path) -> dict[str, dict[float, tuple[float, float, float]]]:
    """Every term's weight curve from an arena's ``arena_answer.json`` (best-val)."""
    answer = json.loads(path.read_text())
    return {
        _TERM.get(row["label"], row["label"]): {
            w: (100 * g, 100 * lo, 100 * hi) for w, g, lo, hi in row["curve"]
        }
        for row in answer["rows"]
    }


def ranking(curves: dict[str, dict[float, tuple[float, float, float]]]) -> list[str]:
    """Each term at its best val weight, best first (the best of a ladder on val: flattering)."""
    best = {t: max(points.items(), key=lambda p: p[1][0]) for t, points in curves.items()}
    order = sorted(best, key=lambda t: -best[t][1][0])
    return [f"{t} {best[t][0]:g}: {_fmt(best[t][1])}" for t in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arena", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    camvid = {t: {**EARLIER.get(t, {}), **CAMVID_STUDY4.get(t, {})} for t in EARLIER}
    panels = {CAMVID_LW: camvid}
    print(
        f"## {CAMVID_LW}\n\nranking at each term's best val weight: " + "; ".join(ranking(camvid))
    )
    for item in args.arena:
        name, sep, directory = item.rpartition("=")
        if not sep or not name:
            raise SystemExit(f"--arena wants NAME=DIR, got {item!r}")
        if (
            not (Path(directory) / "summary_val.json").is_file()
            and (Path(directory) / "arena_answer.json").is_file()
        ):  # an arena not yet re-analysed by `arseg study`: its curves only
            panels[name] = answer_curves(Path(directory) / "arena_answer.json")
            print(f"\n## {name}\n\nranking: " + "; ".join(ranking(panels[name])))
            continue
        rows = read_rows(Path(directory))
        panels[name] = curves_of(rows)
        print(f"\n## {name}\n\n{control_line(rows)}\n")
        print("\n".join(arm_table(rows)))
        print("\nPer class at best-val (IoU points; * = interval excludes 0):\n")
        print("\n".join(per_class_table(rows)))
        print("\nranking at each term's best val weight: " + "; ".join(ranking(panels[name])))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = list(dict.fromkeys(t for curves in panels.values() for t in curves))
    colors = {t: f"C{i}" for i, t in enumerate(terms)}
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.2), sharex=True, sharey=True
    )
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (name, curves) in zip(axes, panels.items()):
        for term, points in curves.items():
            ws = sorted(points)
            g = [points[w][0] for w in ws]
            err = [[points[w][0] - points[w][1] for w in ws],
                   [points[w][2] - points[w][0] for w in ws]]  # fmt: skip
            ax.errorbar(ws, g, yerr=err, marker="o", capsize=3, label=term, color=colors[term])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("weight (CE + weight x term)")
        ax.set_title(name, fontsize=10)
    axes[0].set_ylabel("val mIoU - CE only (points, 95 % CI)")
    axes[0].legend(fontsize=8, loc="lower right")  # the quoted CamVid panel has every term
    fig.suptitle("Gain against weight, 5 paired seeds, best-val checkpoint", fontsize=11)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "side_by_side_curves_val.png", dpi=110)

    # forest: every arm of every panel, grouped by term then weight
    entries = [
        (name, term, w, curves[term][w])
        for term in terms
        for name, curves in panels.items()
        if term in curves
        for w in sorted(curves[term])
    ]
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(entries) + 1.2))
    markers = {name: m for name, m in zip(panels, "osD^v")}
    for y, (name, term, _, (g, lo, hi)) in enumerate(reversed(entries)):
        ax.errorbar([g], [y], xerr=[[g - lo], [hi - g]], fmt=markers[name], color=colors[term],
                    capsize=2, ms=4)  # fmt: skip
    ax.set_yticks(range(len(entries)))
    ax.set_yticklabels([f"{t} {w:g} [{n}]" for n, t, w, _ in reversed(entries)], fontsize=7)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("val mIoU - CE only (points, 95 % CI)")
    fig.tight_layout()
    fig.savefig(args.out / "side_by_side_forest_val.png", dpi=110)


if __name__ == "__main__":
    main()
