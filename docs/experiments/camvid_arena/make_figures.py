"""The evidence-v3 tables and figures from finished `arseg study` directories.

    python docs/experiments/camvid_arena/make_figures.py OUT/DIR [OUT/DIR ...] \
        --out docs/experiments/camvid_arena [--split val]

Reads each study's ``study.yaml``, ``summary_<split>.json`` (every arm against its control,
best-val and last step) and ``state/*.json`` (each run's fit time), and writes:

* ``forest_<split>.png``: every arm of every study against its own control (mIoU points);
* ``weight_curve_<split>.png``: the AR arms of a study whose arms differ only in
  ``loss.lambda_ar``, the difference against lambda;
* ``tables_<split>.md``: the main table (mIoU and Boundary IoU differences with the two-level
  bootstrap interval, paired t, seeds ahead, fit time per run relative to the control) and the
  per-class differences at best-val. It is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from arseg.analysis.figures import plot_arm_deltas, save_figure


def _load(study_dir: Path, split: str) -> dict:
    study = yaml.safe_load((study_dir / "study.yaml").read_text())
    summary = json.loads((study_dir / f"summary_{split}.json").read_text())
    fit_s: dict[str, list[float]] = {}
    for arm, spec in study["arms"].items():
        for seed in spec["seeds"]:
            state = study_dir / "state" / f"{arm}_seed{seed}.json"
            if state.is_file():
                fit_s.setdefault(arm, []).append(json.loads(state.read_text())["fit_s"])
    return {"dir": study_dir, "study": study, "summary": summary, "fit_s": fit_s}


def _interval(d: dict | None) -> tuple[float, float, float] | None:
    if not d:
        return None
    bs = d["bootstrap"]
    return d["delta"] if "delta" in d else d["delta_miou"], bs["ci_low"], bs["ci_high"]


def _fmt(iv: tuple[float, float, float] | None) -> str:
    if iv is None:
        return "n/a"
    star = "*" if iv[1] > 0 or iv[2] < 0 else ""
    return f"{100 * iv[0]:+.2f} [{100 * iv[1]:+.2f}, {100 * iv[2]:+.2f}]{star}"


def _seeds_ahead(cmp: dict) -> str:
    a = dict(zip(cmp["arm_a"]["seeds"], cmp["arm_a"]["miou"]))
    b = dict(zip(cmp["arm_b"]["seeds"], cmp["arm_b"]["miou"]))
    shared = sorted(set(a) & set(b))
    return f"{sum(b[s] > a[s] for s in shared)}/{len(shared)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    studies = [_load(d, args.split) for d in args.studies]

    lines = [
        "| study | arm | ckpt | seeds | mIoU % | mIoU - control [95% CI] | paired t p | "
        "seeds ahead | Boundary IoU - control [95% CI] | pixel acc - control (p) | "
        "fit time / control |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    several = len(studies) > 1
    panels: dict[str, list[tuple[str, float, float, float]]] = {"best-val": [], "last step": []}
    per_class: list[str] = []
    for s in studies:
        control = s["study"]["control"]
        base_fit = statistics.mean(s["fit_s"][control])
        tag = f" [{s['study']['name'].rsplit('_', 1)[-1]}]" if several else ""
        for key, row in s["summary"]["rows"].items():
            arm, ckpt = key.split("/")
            mean, std = row["miou"]
            label = row["label"] + tag
            fit = statistics.mean(s["fit_s"].get(arm, [float("nan")])) / base_fit
            if arm == control:
                lines.append(
                    f"| {s['study']['name']} | {row['label']} | {ckpt} | {row['seeds']} | "
                    f"{100 * mean:.2f} ± {100 * std:.2f} | control | | | control | "
                    f"({100 * row['pixel_acc'][0]:.2f} %) | 1.00 |"
                )
                continue
            cmp = row["delta"]
            iv = _interval(cmp)
            t = cmp.get("seed_test") or {}
            p = f"{t['p_value']:.2g}" if t else "n/a"
            acc_t = (cmp.get("seed_tests") or {}).get("pixel_acc") or {}
            acc = f"{100 * cmp['deltas']['pixel_acc']:+.2f}" + (
                f" ({acc_t['p_value']:.2g})" if acc_t else ""
            )
            lines.append(
                f"| {s['study']['name']} | {row['label']} | {ckpt} | {row['seeds']} | "
                f"{100 * mean:.2f} ± {100 * std:.2f} | {_fmt(iv)} | {p} | {_seeds_ahead(cmp)} | "
                f"{_fmt(_interval(cmp.get('boundary_iou')))} | {acc} | {fit:.2f} |"
            )
            panels["best-val" if ckpt == "best" else "last step"].append((label, *iv))
            if ckpt == "best":
                cells = [
                    f"{c['class']} {100 * c['delta']:+.2f}"
                    + ("*" if c["ci_low"] > 0 or c["ci_high"] < 0 else "")
                    for c in cmp["per_class"]
                ]
                per_class.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\nPer class at best-val (IoU points, * = interval excludes 0):\n\n"
    text += "\n".join(per_class) + "\n"
    (args.out / f"tables_{args.split}.md").write_text(text)
    print(text)
    control_label = studies[0]["study"]["arms"][studies[0]["study"]["control"]]["label"]
    fig = plot_arm_deltas(panels, control=control_label)
    save_figure(fig, args.out / f"forest_{args.split}.png")

    for s in studies:  # the weight curve of a study whose arms differ only in lambda_ar
        arms = s["study"]["arms"]
        weights = {
            a: spec["overrides"].get("loss.lambda_ar")
            for a, spec in arms.items()
            if set(spec["overrides"]) == {"loss.lambda_ar"} and a != s["study"]["control"]
        }
        if len(weights) < 3:
            continue
        order = sorted(weights, key=lambda a: weights[a])
        rows = s["summary"]["rows"]
        curve = {
            title: [(arms[a]["label"], *_interval(rows[f"{a}/{ckpt}"]["delta"])) for a in order]
            for title, ckpt in (("best-val", "best"), ("last step", "last"))
        }
        fig = plot_arm_deltas(
            curve,
            control=arms[s["study"]["control"]]["label"],
            x=[weights[a] for a in order],
            xlabel="AR weight lambda",
            log_x=True,
        )
        save_figure(fig, args.out / f"weight_curve_{args.split}.png")


if __name__ == "__main__":
    main()
