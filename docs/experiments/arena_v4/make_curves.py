"""Evidence v4: the CamVid weight curves of every term, from the shared peak, on val.

    python docs/experiments/arena_v4/make_curves.py runs/studies/arena_turns \
        --out docs/experiments/arena_v4

Reads study 4's ``summary_val.json`` (``configs/camvid/pretrained/arena_turns_study.yaml``) and
puts its arms beside the figures of studies 1-3 that ``docs/experiments/camvid_arena.md``
reports (quoted below: those study directories are not in git). Every figure is a gain over the
same CE-only runs (same peak, recipe and seeds 1-5; study 4's control reproduces them), at the
best-val checkpoint, with its two-level bootstrap 95 % interval, in mIoU points. Writes
``weight_curves_val.png`` and prints study 4's table: best-val and last step, seeds ahead,
Boundary IoU and pixel accuracy differences, and the gain without the one or two classes that
move most.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# term -> weight -> (gain, low, high), points, val, best-val; docs/experiments/camvid_arena.md
# (Lovasz at 3.0: against CE only directly, from the re-run at fd01f7a quoted there)
EARLIER = {
    "AR (mse)": {0.1: (0.03, 0.02, 0.03), 0.3: (0.08, 0.06, 0.09), 1.0: (0.23, 0.18, 0.29),
                 3.0: (0.62, 0.51, 0.75), 10.0: (1.65, 1.37, 1.94)},
    "AR (bce)": {1.0: (0.82, 0.67, 0.99)},
    "Lovasz": {1.0: (4.21, 3.75, 4.64), 3.0: (5.35, 4.84, 5.90)},
    "Dice": {1.0: (1.78, 1.48, 2.06)},
    "RMI": {1.0: (-2.65, -3.42, -1.91)},
    "AAF": {1.0: (-2.20, -2.47, -1.94)},
}  # fmt: skip
# study 4's arms: name -> (term, weight)
STUDY4 = {
    "ar30": ("AR (mse)", 30.0),
    "ar3_bce": ("AR (bce)", 3.0),
    "ar10_bce": ("AR (bce)", 10.0),
    "lovasz10": ("Lovasz", 10.0),
}


def _iv(d: dict) -> tuple[float, float, float]:
    bs = d["bootstrap"]
    return 100 * d["delta_miou"], 100 * bs["ci_low"], 100 * bs["ci_high"]


def _fmt(v: tuple[float, float, float]) -> str:
    star = "*" if v[1] > 0 or v[2] < 0 else ""
    return f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]{star}"


def _ahead(cmp: dict) -> str:
    a = dict(zip(cmp["arm_a"]["seeds"], cmp["arm_a"]["miou"]))
    b = dict(zip(cmp["arm_b"]["seeds"], cmp["arm_b"]["miou"]))
    shared = sorted(set(a) & set(b))
    return f"{sum(b[s] > a[s] for s in shared)}/{len(shared)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="study 4's directory")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads((args.study / "summary_val.json").read_text())["rows"]
    curves = {term: dict(points) for term, points in EARLIER.items()}
    lines = [
        "| arm | ckpt | mIoU % | mIoU - CE only [95% CI] | seeds ahead | Boundary IoU - CE only "
        "| pixel acc - CE only | without the class(es) that move most |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for arm, (term, weight) in STUDY4.items():
        for ckpt in ("best", "last"):
            row = rows[f"{arm}/{ckpt}"]
            cmp = row["delta"]
            if ckpt == "best":
                curves[term][weight] = _iv(cmp)
            carried = "; ".join(
                f"{', '.join(c['classes'])}: {100 * c['delta']:+.2f}"
                for c in cmp.get("leave_out", {}).get("without_top", [])
            )
            boundary = cmp.get("boundary_iou")
            lines.append(
                f"| {row['label']} | {ckpt} | {100 * row['miou'][0]:.2f} ± {100 * row['miou'][1]:.2f}"
                f" | {_fmt(_iv(cmp))} | {_ahead(cmp)} | "
                f"{_fmt((100 * boundary['delta'], 100 * boundary['bootstrap']['ci_low'], 100 * boundary['bootstrap']['ci_high'])) if boundary else 'n/a'}"
                f" | {100 * cmp['deltas']['pixel_acc']:+.2f} | {carried or 'n/a'} |"
            )
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for term, points in curves.items():
        ws = sorted(points)
        g = [points[w][0] for w in ws]
        err = [[points[w][0] - points[w][1] for w in ws], [points[w][2] - points[w][0] for w in ws]]
        ax.errorbar(ws, g, yerr=err, marker="o", capsize=3, label=term)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("weight of the term (CE + weight x term)")
    ax.set_ylabel("val mIoU - CE only (points, 95 % CI)")
    ax.set_title("CamVid, shared peak, 5 paired seeds: gain against the term's weight")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "weight_curves_val.png", dpi=110)


if __name__ == "__main__":
    main()
