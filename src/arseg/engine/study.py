"""``arseg study``: the paper's protocol, every arm and every seed, as one resumable command.

A *study config* names a baseline run config and a fine-tune run config and lists the arms::

    name: camvid_pretrained
    baseline: baseline.yaml        # stage 1: CE to its peak (paths relative to this file);
                                   # or a finished run directory: no baseline is trained
    finetune: finetune.yaml        # stage 2: every arm starts from the baseline's best.ckpt
    control: ce                    # the arm every other arm is compared with
    arms:
      ce: {label: CE only, seeds: [1, 2, 3, 4, 5], overrides: {loss.lambda_ar: 0.0}}
      ar: {label: CE + 0.1 AR, seeds: [1, 2, 3, 4, 5], overrides: {loss.lambda_ar: 0.1}}
    parallel: 2                    # fine-tunes side by side
    threads: 2                     # CPU threads in all: the baseline gets all, a fine-tune
                                   # threads // parallel
    eval_split: val
    report_num_images: 3           # images of the heat maps and overlays
    overrides: {}                  # config overrides of every run, e.g. {trainer.devices: 8}

``arseg study CONFIG --out DIR`` then:

1. trains the baseline (``DIR/baseline``) and evaluates it (a ``baseline`` that names a finished
   run directory, e.g. a model of yours at its peak, is evaluated there and not trained);
2. fine-tunes every arm for every seed from the baseline's best checkpoint
   (``DIR/<arm>/seed<k>``), with the same config but for the arm's overrides, so every arm has
   the same steps and schedule; each run is evaluated at its best-val checkpoint and at its last
   step (fixed length, no selection);
3. compares every arm with the control (``arseg compare``, two-level bootstrap) at both
   checkpoints, fits the AR-loss trend of every arm (``arseg trend``) and writes the report
   (``arseg report``) and ``DIR/summary.md``, and prints the final table.

Each run is one worker process (``python -m arseg.engine.study _job``) that trains and evaluates
it; its log is ``DIR/logs/<arm>_seed<k>.log``. A finished run is recorded in
``DIR/state/<job>.json`` and never run again: a killed study continues where it stopped (a run
that was cut short resumes from its ``last.ckpt``). A config that only adds seeds to arms or
new arms extends the study: its finished runs are kept and only the new ones train.
``arseg study DIR --eval-split SPLIT [--data-root ROOT]`` evaluates every run of a finished
study on a split without retraining (another split, e.g. a test split kept elsewhere, or the
study's own after the evaluation code changed) and writes that split's comparisons, report and
table.

Every run records what produced it (``provenance.json``: arseg version, git commit, torch version,
threads); the study prints it with the final table. Same config, same threads: same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arseg import rundir
from arseg.rundir import RunDir

__all__ = ["StudyError", "load_study_config", "register", "run_study"]

_STUDY_KEYS = {
    "name",
    "baseline",
    "finetune",
    "control",
    "arms",
    "parallel",
    "threads",
    "eval_split",
    "report_num_images",
    "n_boot",
    "overrides",
}
_ARM_KEYS = {"label", "seeds", "overrides"}
# keys added since studies were first recorded: a recorded study without them had these values
_OPTIONAL_DEFAULTS: dict[str, Any] = {"overrides": {}}


class StudyError(ValueError):
    """A study config or study directory that cannot be used."""


# ----------------------------------------------------------------------------- config
def load_study_config(path: str | Path) -> dict[str, Any]:
    """Read and check a study config; paths become absolute, defaults are filled in.

    Raises:
        StudyError: a missing or unknown key, a wrong type, an arm without seeds, a control
            that is not an arm.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study config is a mapping, got {type(raw).__name__}")
    _check_keys(raw, _STUDY_KEYS, f"{path}: unknown study key(s)")
    for key in ("baseline", "finetune", "control", "arms"):
        if key not in raw:
            raise StudyError(f"{path}: missing study key {key!r}")
    cfg: dict[str, Any] = {
        "name": str(raw.get("name", path.stem)),
        "parallel": raw.get("parallel", 1),
        "threads": raw.get("threads", 1),
        "eval_split": str(raw.get("eval_split", "val")),
        "report_num_images": raw.get("report_num_images", 3),
        "n_boot": raw.get("n_boot", 10_000),
        "control": raw["control"],
        "overrides": raw.get("overrides") or {},
    }
    for key in ("parallel", "threads", "n_boot", "report_num_images"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StudyError(f"{path}: {key} must be a positive int, got {value!r}")
    if not isinstance(cfg["overrides"], dict):
        raise StudyError(f"{path}: overrides must be a mapping of dotted config keys")
    cfg["overrides"] = {str(k): v for k, v in cfg["overrides"].items()}
    for key in ("baseline", "finetune"):
        run_config = (path.parent / str(raw[key])).resolve()
        if key == "baseline" and run_config.is_dir():  # a finished run to fine-tune from
            if (
                not RunDir(run_config).config.is_file()
                or not RunDir(run_config).best_ckpt.is_file()
            ):
                raise StudyError(
                    f"{path}: baseline {run_config} is a directory but not a finished run "
                    "(it needs config.yaml and checkpoints/best.ckpt)"
                )
        elif not run_config.is_file():
            raise StudyError(f"{path}: {key} config {run_config} does not exist")
        cfg[key] = str(run_config)
    arms = raw["arms"]
    if not isinstance(arms, dict) or not arms:
        raise StudyError(f"{path}: arms must be a non-empty mapping of arm name -> settings")
    cfg["arms"] = {}
    for name, arm in arms.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise StudyError(f"{path}: arm names are letters, digits, '-' and '_', got {name!r}")
        if not isinstance(arm, dict):
            raise StudyError(f"{path}: arm {name!r} must be a mapping, got {type(arm).__name__}")
        _check_keys(arm, _ARM_KEYS, f"{path}: arm {name!r} has unknown key(s)")
        seeds = arm.get("seeds")
        if (
            not isinstance(seeds, list)
            or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise StudyError(
                f"{path}: arm {name!r} needs seeds: a list of distinct ints, got {seeds!r}"
            )
        overrides = arm.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise StudyError(f"{path}: arm {name!r} overrides must be a mapping of dotted keys")
        cfg["arms"][name] = {
            "label": str(arm.get("label", name)),
            "seeds": list(seeds),
            "overrides": {str(k): v for k, v in overrides.items()},
        }
    if cfg["control"] not in cfg["arms"]:
        raise StudyError(
            f"{path}: control {cfg['control']!r} is not an arm; arms: {', '.join(cfg['arms'])}"
        )
    # Resolve every run config now, so that a typo in an arm fails before anything trains.
    for arm_name in cfg["arms"]:
        _run_config(cfg, arm_name, cfg["arms"][arm_name]["seeds"][0], Path("/nonexistent"))
    _run_config(cfg, None, None, Path("/nonexistent"))
    return cfg


def _check_keys(given: dict[str, Any], valid: set[str], what: str) -> None:
    unknown = set(given) - valid
    if unknown:
        raise StudyError(f"{what} {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}")


def _override_strings(overrides: dict[str, Any]) -> list[str]:
    # JSON is YAML: null, 0.1, [12, 6] and "linear" read back as what they were.
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def _run_config(
    study: dict[str, Any], arm: str | None, seed: int | None, out: Path
) -> dict[str, Any]:
    """The resolved run config of the baseline (``arm=None``) or of one arm's seed."""
    from .config import ConfigError, load_config, merge_config, validate_config

    threads = study["threads"] if arm is None else max(1, study["threads"] // study["parallel"])
    cli: dict[str, Any] = {
        "trainer": {"num_threads": threads, "enable_progress_bar": False},
        "run_dir": str(_run_dir(study, out, arm, seed)),
    }
    try:
        if arm is None and _baseline_is_run(study):
            return load_config(RunDir(study["baseline"]).config)  # as it was trained
        if arm is None:
            cfg = load_config(study["baseline"], _override_strings(study["overrides"]))
        else:
            overrides = _override_strings({**study["overrides"], **study["arms"][arm]["overrides"]})
            cfg = load_config(study["finetune"], overrides)
            cli["seed"] = int(seed)  # type: ignore[arg-type]
            cli["init_from"] = str(_run_dir(study, out, None, None))
        return validate_config(merge_config(cfg, cli, source="the study"))
    except ConfigError as err:
        where = "baseline" if arm is None else f"arm {arm!r}"
        raise StudyError(f"study {study['name']}: {where}: {err}") from None


def _baseline_is_run(study: dict[str, Any]) -> bool:
    """The study starts from a finished run (its ``baseline`` is a run directory)."""
    return Path(study["baseline"]).is_dir()


def _run_dir(study: dict[str, Any], out: Path, arm: str | None, seed: int | None) -> Path:
    if arm is None:
        return out / "baseline"  # a finished baseline run is seen through a view there
    return out / arm / f"seed{seed}"


# What a run directory given as the baseline lends the study: read through symlinks, so its
# evaluation (and nothing else) is written into the study's own ``baseline`` folder and the
# given folder may be read-only or someone else's.
_BASELINE_VIEW = (
    rundir.CONFIG,
    rundir.SUMMARY,
    rundir.METRICS_CSV,
    rundir.PROVENANCE,
    rundir.CHECKPOINTS_DIR,
)


def _prepare_baseline_view(study: dict[str, Any], out: Path) -> None:
    """``OUT/baseline`` of a study that starts from a finished run: symlinks to that run."""
    source = Path(study["baseline"]).resolve()
    view = out / "baseline"
    view.mkdir(parents=True, exist_ok=True)
    for name in _BASELINE_VIEW:
        link = view / name
        if (source / name).exists() and not link.is_symlink() and not link.exists():
            link.symlink_to(source / name, target_is_directory=(source / name).is_dir())
    if _state_path(out, _Job("baseline", None, None)).is_file() and not (view / "eval").exists():
        # a study recorded before the view existed evaluated the baseline inside the run
        (view / "eval").symlink_to(source / "eval", target_is_directory=True)


# ----------------------------------------------------------------------------- jobs
@dataclass
class _Job:
    name: str  # "baseline" or "<arm>_seed<k>"
    arm: str | None
    seed: int | None
    argv: list[str] = field(default_factory=list)  # the arseg command that trains the run
    run_dir: Path = Path()


def _jobs(study: dict[str, Any], out: Path) -> tuple[_Job, list[_Job]]:
    common = ["--run-dir"]
    baseline = _Job("baseline", None, None, run_dir=_run_dir(study, out, None, None))
    threads = study["threads"]
    baseline.argv = (
        []  # a finished run: evaluated, never trained
        if _baseline_is_run(study)
        else [
            "fit",
            study["baseline"],
            *_override_strings(study["overrides"]),
            *common,
            str(baseline.run_dir),
            f"trainer.num_threads={threads}",
            "--no-progress",
        ]
    )
    finetunes = []
    per_run = max(1, threads // study["parallel"])
    # seed-major order: a study stopped early still holds complete seed pairs of every arm
    max_seeds = max(len(a["seeds"]) for a in study["arms"].values())
    for i in range(max_seeds):
        for arm, spec in study["arms"].items():
            if i >= len(spec["seeds"]):
                continue
            seed = spec["seeds"][i]
            job = _Job(f"{arm}_seed{seed}", arm, seed, run_dir=_run_dir(study, out, arm, seed))
            job.argv = [
                "finetune",
                study["finetune"],
                *_override_strings({**study["overrides"], **spec["overrides"]}),
                f"trainer.num_threads={per_run}",
                "--init-from",
                str(baseline.run_dir),
                "--run-dir",
                str(job.run_dir),
                "--seed",
                str(seed),
                "--no-progress",
            ]
            finetunes.append(job)
    return baseline, finetunes


def _state_path(out: Path, job: _Job) -> Path:
    return out / "state" / f"{job.name}.json"


# Exit status of a worker whose run directory another process holds (its log's last line says
# which), and how long a worker waits for an orphan of a killed study to stop in its run.
_BUSY = 75
_ORPHAN_WAIT_S = 600.0


def _worker(spec_path: str) -> int:
    """Train (or resume) one run, then evaluate it at its best and last checkpoints.

    The worker stops with its study (SIGTERM, saving ``last.ckpt`` at the next step, when the
    study process is gone however it ended) and holds its run directory while it runs.
    """
    from arseg.cli import main as arseg_main

    from . import dirlock
    from .parentwatch import stop_with_parent
    from .records import RunError, read_json

    try:
        spec = read_json(spec_path, mapping=True)
    except RunError as err:
        print(f"arseg: error: {err}", file=sys.stderr)
        return 2
    if not stop_with_parent(int(spec.get("study_pid") or os.getppid())):
        print("arseg: the study that started this worker is gone; not starting", file=sys.stderr)
        return 128 + signal.SIGTERM
    run_dir = Path(spec["run_dir"])
    try:  # held until the worker exits; an orphan of a killed study still in it is waited for
        dirlock.acquire_when_free(
            run_dir,
            wait_if=dirlock.orphaned,
            timeout_s=_ORPHAN_WAIT_S,
            notify=lambda message: print(f"waiting: {message}", flush=True),
            command=f"arseg study (the worker of run {spec['name']})",
            record={"parent_pid": os.getppid()},
        )
    except dirlock.DirectoryLockError as err:
        print(f"arseg: error: {err}", file=sys.stderr, flush=True)
        return _BUSY if isinstance(err, dirlock.DirectoryBusyError) else 2
    argv = list(spec["argv"])
    start = time.time()
    if argv:  # empty: evaluate only (a finished study on another split)
        if RunDir(run_dir).last_ckpt.is_file():
            argv.append("--resume")
        elif any(p.name != rundir.LOCK_NAME for p in run_dir.iterdir()):
            argv.append("--overwrite")  # a start that died before its first checkpoint
        print(f"$ arseg {' '.join(argv)}", flush=True)
        rc = arseg_main(argv)
        if rc:
            return rc
    fit_s = time.time() - start
    for checkpoint in spec["checkpoints"]:
        target = run_dir if checkpoint == "best" else RunDir(run_dir).last_ckpt
        done_as = _same_weights_evaluated(run_dir, spec["split"], checkpoint, spec["checkpoints"])
        if done_as is not None:  # the best epoch is the last: its evaluation holds for both
            dest = RunDir(run_dir).eval_dir(spec["split"], checkpoint)
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(done_as, dest)
            _note_copy(dest, done_as)
            print(f"{dest}: same checkpoint step as {done_as}, evaluation copied", flush=True)
            continue
        eval_argv = [
            "eval",
            str(target),
            "--split",
            spec["split"],
            "--out",
            str(RunDir(run_dir).eval_dir(spec["split"], checkpoint)),
            "--no-progress",
        ]
        if spec.get("data_root"):
            eval_argv += ["--data-root", spec["data_root"]]
        print(f"$ arseg {' '.join(eval_argv)}", flush=True)
        rc = arseg_main(eval_argv)
        if rc:
            return rc
    from .provenance import provenance

    state = {
        "job": spec["name"],
        "provenance": provenance(),
        "fit_s": round(fit_s, 1),
        "total_s": round(time.time() - start, 1),
        "argv": spec["argv"],
    }
    tmp = Path(spec["state"]).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, spec["state"])
    return 0


def _checkpoint_step(path: Path) -> int | None:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable checkpoint is simply evaluated (and fails there, clearly)
        return None
    step = ckpt.get("global_step")
    return int(step) if step is not None else None


def _same_weights_evaluated(
    run_dir: Path, split: str, checkpoint: str, checkpoints: list[str]
) -> Path | None:
    """The evaluation folder of an earlier checkpoint of this list that was saved at the same
    step as ``checkpoint`` (best.ckpt and last.ckpt of a run whose best epoch is its last)."""
    names = {name: RunDir(run_dir).checkpoint(name) for name in rundir.CHECKPOINTS}
    here = _checkpoint_step(names[checkpoint])
    if here is None:
        return None
    for earlier in checkpoints[: checkpoints.index(checkpoint)]:
        done = RunDir(run_dir).eval_dir(split, earlier)
        if (done / rundir.EVAL_METRICS).is_file() and _checkpoint_step(names[earlier]) == here:
            return done
    return None


def _note_copy(dest: Path, source: Path) -> None:
    from .records import read_json

    metrics_path = dest / rundir.EVAL_METRICS
    metrics = read_json(metrics_path, mapping=True)
    metrics["copied_from"] = str(source)  # same global step: the same weights
    metrics_path.write_text(json.dumps(metrics, indent=2))


class _Runner:
    """Runs jobs as worker processes, ``parallel`` at a time, and reports progress."""

    def __init__(self, out: Path, total: int, parallel: int) -> None:
        self.out = out
        self.total = total
        self.parallel = parallel
        self.done = 0
        self.start = time.time()
        self.job_times: list[float] = []
        self.running: dict[str, tuple[subprocess.Popen, _Job, float, Any]] = {}

    def _spawn(self, job: _Job, spec: dict[str, Any]) -> None:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        (self.out / "state").mkdir(parents=True, exist_ok=True)
        spec_path = self.out / "state" / f"{job.name}.spec.json"
        tmp = spec_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**spec, "study_pid": os.getpid()}, indent=2))
        os.replace(tmp, spec_path)  # never half-written: the worker reads it whole
        log = open(self.out / "logs" / f"{job.name}.log", "a")  # closed in _reap / stop
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "arseg.engine.study", "_job", str(spec_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.running[job.name] = (proc, job, time.time(), log)

    def _reap(self, block: bool) -> None:
        while self.running:
            for name, (proc, job, started, log) in list(self.running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del self.running[name]
                if rc != 0:
                    self.stop()
                    if rc == _BUSY:  # its run directory is held: the worker's line says by whom
                        line = _tail(self.out / "logs" / f"{job.name}.log", 1)
                        raise StudyError(f"run {job.name}: {line.split('arseg: error: ')[-1]}")
                    tail = _tail(self.out / "logs" / f"{job.name}.log")
                    raise StudyError(
                        f"run {job.name} failed (exit {rc}); its log: "
                        f"{self.out / 'logs' / f'{job.name}.log'}{tail}"
                    )
                took = time.time() - started
                if (
                    job.arm is not None
                ):  # the estimate counts fine-tunes only (the baseline is longer)
                    self.job_times.append(took)
                self.done += 1
                self._progress(job, took)
            if not block or len(self.running) < self.parallel:
                return
            time.sleep(0.5)

    def run(self, job: _Job, spec: dict[str, Any]) -> None:
        self._reap(block=True)
        self._spawn(job, spec)

    def wait(self) -> None:
        while self.running:
            self._reap(block=False)
            time.sleep(0.5)

    def skip(self, job: _Job) -> None:
        self.done += 1
        print(f"[{self.done:>3}/{self.total}] {job.name}: finished earlier, kept", flush=True)

    def stop(self) -> None:
        for proc, _job, _started, _log in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _job, _started, log in self.running.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        self.running.clear()

    def _progress(self, job: _Job, took: float) -> None:
        elapsed = time.time() - self.start
        try:
            metrics = _read_metrics(RunDir(job.run_dir).eval_dir("val", "best"))
            last = _read_metrics(RunDir(job.run_dir).eval_dir("val", "last"))
        except ValueError:  # a damaged record: the analysis names it
            metrics = last = None
        what = ""
        if metrics:
            what = f"val mIoU best {100 * metrics['miou']:.2f}"
            if last:
                what += f", last {100 * last['miou']:.2f}"
        remaining = self.total - self.done
        eta = ""
        if remaining and self.job_times:
            mean = sum(self.job_times) / len(self.job_times)
            eta = f", about {_fmt_s(mean * remaining / self.parallel)} left"
        print(
            f"[{self.done:>3}/{self.total}] {job.name}: done in {_fmt_s(took)}"
            f" ({what}); elapsed {_fmt_s(elapsed)}{eta}",
            flush=True,
        )


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text().strip().splitlines()
    except OSError:
        return ""
    return "" if not text else "; it ends with: " + " | ".join(text[-lines:])


def _fmt_s(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _read_metrics(eval_dir: Path) -> dict[str, Any] | None:
    """An evaluation's metrics.json (None when absent; DamagedRecordError when damaged)."""
    from .records import read_json

    path = eval_dir / rundir.EVAL_METRICS
    if not path.is_file():
        return None
    return read_json(path, mapping=True)


# ----------------------------------------------------------------------------- study
def _prepare_out(study: dict[str, Any], config_path: Path, out: Path) -> None:
    """Record the study config in ``out``; refuse a directory that holds another study."""
    import yaml

    recorded = out / "study.yaml"
    if recorded.is_file():
        previous = _recorded_study(recorded)
        if previous == study:
            return
        added = _added_runs(previous, study)
        if added is None:
            changed = sorted(
                k for k in set(previous) | set(study) if previous.get(k) != study.get(k)
            )
            raise StudyError(
                f"{out} holds a study with other settings ({', '.join(changed)} differ): "
                "use another --out, or delete it to start over (adding seeds or arms is allowed)"
            )
        print(f"extending the study in {out}: {added}; its finished runs are kept", flush=True)
    else:
        _refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = recorded.with_suffix(".tmp")
    tmp.write_text(
        f"# arseg study {config_path} --out {out}\n" + yaml.safe_dump(study, sort_keys=False)
    )
    os.replace(tmp, recorded)


def _recorded_study(path: Path) -> dict[str, Any]:
    """The study recorded in ``OUT/study.yaml`` (one line naming it when it is damaged)."""
    from .records import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict) or "arms" not in data:
        raise StudyError(f"{path} is damaged: it holds no study (restore it, or use another --out)")
    return {**_OPTIONAL_DEFAULTS, **data}


def _refuse_foreign(out: Path) -> None:
    """Refuse an ``--out`` that holds something else than a study (before anything is written)."""
    if (out / "study.yaml").is_file() or not out.exists():
        return
    if any(p.name != rundir.LOCK_NAME for p in out.iterdir()):
        raise StudyError(f"{out} exists and holds no study.yaml: choose another --out")


def _check_states(out: Path) -> None:
    """Every record of a finished run must be readable (one line naming a damaged one)."""
    from .records import RunError, read_json

    for path in sorted((out / "state").glob("*.json")) if (out / "state").is_dir() else []:
        if path.name.endswith(".spec.json"):
            continue  # rewritten before each start
        try:
            read_json(path, mapping=True)
        except RunError as err:
            raise StudyError(
                f"{err}; it records that run {path.name.split('.')[0]} has finished: delete it "
                "and run the study again (the run is then resumed from its last checkpoint, "
                "not trained again if it had finished, and evaluated again)"
            ) from None


def _added_runs(previous: dict[str, Any], study: dict[str, Any]) -> str | None:
    """What ``study`` adds to ``previous`` when it only adds seeds to arms or new arms (every
    finished run stays valid); ``None`` when it changes anything else."""
    if {k: v for k, v in previous.items() if k != "arms"} != {
        k: v for k, v in study.items() if k != "arms"
    }:
        return None
    added = []
    for arm, spec in previous["arms"].items():
        new = study["arms"].get(arm)
        if new is None or {**spec, "seeds": None} != {**new, "seeds": None}:
            return None
        if not set(spec["seeds"]) <= set(new["seeds"]):
            return None
        extra = [s for s in new["seeds"] if s not in spec["seeds"]]
        if extra:
            added.append(f"{arm} seeds {extra}")
    added += [f"arm {arm} (seeds {spec['seeds']})" for arm, spec in study["arms"].items()
              if arm not in previous["arms"]]  # fmt: skip
    return ", ".join(added) or None


def run_study(
    config: str | Path,
    out: str | Path | None = None,
    *,
    eval_split: str | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study; returns the final table as a dict (also ``OUT/summary.json``).

    Args:
        config: a study config file, or the directory of an earlier study (to continue it, or
            with ``eval_split`` to evaluate it on another split).
        out: the study directory (required with a config file).
        eval_split: evaluate the finished runs on this split instead of the study's own
            (no training); the comparisons and the report of that split are written too.
        data_root: dataset root for ``eval_split`` (e.g. where a test split lives).
    """
    from arseg._extras import require

    for module in ("pandas", "matplotlib", "statsmodels"):  # the last step runs the analysis
        require(module, "analysis", "'arseg study'")  # checked before any run is trained
    config = Path(config)
    if config.is_dir():
        if out is not None and Path(out).resolve() != config.resolve():
            raise StudyError("give either a study config with --out, or a study directory")
        out = config
        config = out / "study.yaml"
        if not config.is_file():
            raise StudyError(f"{out} is not a study directory (no study.yaml)")
        study = None
    else:
        if out is None:
            raise StudyError("--out DIR is required with a study config")
        out = Path(out)
        study = load_study_config(config)
        _refuse_foreign(out)
    from .dirlock import acquire

    lock = acquire(out)  # one study process per directory, before anything is written into it
    try:
        if study is None:
            study = _recorded_study(config)
        else:
            _prepare_out(study, config, out)
        return _run_study(study, Path(out).resolve(), eval_split, data_root)
    finally:
        if lock is not None:
            lock.release()


def _run_study(
    study: dict[str, Any], out: Path, eval_split: str | None, data_root: str | None
) -> dict[str, Any]:
    if _baseline_is_run(study):
        _prepare_baseline_view(study, out)
    baseline, finetunes = _jobs(study, out)
    split = eval_split or study["eval_split"]
    # With eval_split, every finished run is evaluated (again) on it, without training: another
    # split, or the study's own after the evaluation code changed.
    retarget = eval_split is not None
    jobs = [baseline, *finetunes]
    parallel = study["parallel"]
    runner = _Runner(out, total=len(jobs), parallel=parallel)
    print(_provenance_line(), flush=True)
    arm_counts = ", ".join(f"{a} x{len(s['seeds'])}" for a, s in study["arms"].items())
    print(
        f"study {study['name']}: 1 baseline + {len(finetunes)} fine-tunes ({arm_counts}), "
        f"{parallel} side by side, {study['threads']} threads in all; output {out}",
        flush=True,
    )

    def on_signal(signum: int, _frame: Any) -> None:
        runner.stop()
        print(
            f"arseg: study stopped by {signal.Signals(signum).name}; finished runs are kept: "
            f"run the same command again to continue",
            file=sys.stderr,
        )
        sys.exit(128 + signum)

    _check_states(out)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for job in jobs:
            state = _state_path(out, job)
            if retarget:
                state = state.with_name(f"{job.name}.{split}.json")
                if not _state_path(out, job).is_file():
                    raise StudyError(
                        f"run {job.name} of {out} is not finished: continue the study first"
                    )
            if state.is_file():
                runner.skip(job)
                continue
            spec = {
                "name": job.name,
                "run_dir": str(job.run_dir),
                "argv": [] if retarget else job.argv,
                "split": split,
                "data_root": data_root,
                "checkpoints": ["best"] if job is baseline else ["best", "last"],
                "state": str(state),
            }
            runner.run(job, spec)
            if job is baseline:
                runner.wait()  # every fine-tune starts from the baseline's best checkpoint
        runner.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _analyse(study, out, split)


def _provenance_line() -> str:
    from .provenance import provenance

    p = provenance()
    commit = p.get("git_commit") or "not a git checkout"
    if p.get("git_dirty"):
        commit += " (with uncommitted changes)"
    return (
        f"arseg {p['arseg_version']} at {commit}; torch {p['torch_version']}; "
        f"python {p['python_version']}; {p['cpu_count']} CPUs"
    )


# ----------------------------------------------------------------------------- analysis
def _analyse(study: dict[str, Any], out: Path, split: str) -> dict[str, Any]:
    """Compare every arm with the control, fit the trends, write the report and the table.

    A step that fails (e.g. on a damaged record, which its command names in one line) does not
    stop the others: the table is made from what could be, then :class:`StudyError` says what
    failed (``arseg study`` exits non-zero).
    """
    from arseg.cli import main as arseg_main

    from .records import damaged_records, read_json

    control = study["control"]
    arms = study["arms"]
    damaged: list[str] = []  # records that cannot be read, one line each
    failed: list[str] = []  # the steps that could not be made
    seen: set[str] = set()  # error lines shown: a damaged file is named once
    runs = [_run_dir(study, out, None, None)]
    runs += [out / arm / f"seed{seed}" for arm, spec in arms.items() for seed in spec["seeds"]]
    for run in runs:  # every record of every run, also those no step below reads
        for problem in damaged_records(run):
            seen.add(f"arseg: error: {problem}")
            print(f"arseg: error: {problem}", file=sys.stderr, flush=True)
            damaged.append(problem)
    cmp_dir = out / "compare" / split
    cmp_dir.mkdir(parents=True, exist_ok=True)
    comparisons: dict[str, dict[str, Any]] = {}
    for arm in arms:
        if arm == control:
            continue
        for checkpoint in ("best", "last"):
            json_path = cmp_dir / f"{arm}_vs_{control}_{checkpoint}.json"
            md_path = json_path.with_suffix(".md")
            argv = [
                "compare",
                str(out / control),
                str(out / arm),
                "--label-a",
                arms[control]["label"],
                "--label-b",
                arms[arm]["label"],
                "--split",
                split,
                "--checkpoint",
                checkpoint,
                "--n-boot",
                str(study["n_boot"]),
                "--markdown",
                "--json",
                str(json_path),
            ]
            try:
                _run_to_file(arseg_main, argv, md_path, seen)
                comparisons[f"{arm}/{checkpoint}"] = read_json(json_path, mapping=True)
            except ValueError:  # StudyError (its error lines are shown), or a damaged record
                failed.append(f"the comparison {arm} vs {control} ({checkpoint})")
    trend_dir = out / "trend"
    trend_dir.mkdir(exist_ok=True)
    for arm, spec in arms.items():
        run = out / arm / f"seed{spec['seeds'][0]}"
        md = trend_dir / f"{arm}.md"
        try:
            _run_to_file(
                arseg_main, ["trend", str(run), "--json", str(md.with_suffix(".json"))], md, seen
            )
        except StudyError as err:  # e.g. a run too short for a regression: the rest still counts
            print(f"arseg: warning: no trend for {arm}: {err}", file=sys.stderr)
    first = {arm: out / arm / f"seed{spec['seeds'][0]}" for arm, spec in arms.items()}
    report_runs = [str(_run_dir(study, out, None, None)), *(str(r) for r in first.values())]
    labels = ["CE baseline", *(f"{arms[a]['label']} (seed {arms[a]['seeds'][0]})" for a in arms)]
    report_argv = [
        "report",
        *report_runs,
        "-o",
        str(out / "report" / split),
        "--labels",
        *labels,
        "--split",
        split,
        "--title",
        f"arseg study {study['name']} ({split})",
        "--n-boot",
        str(study["n_boot"]),
        "--num-images",
        str(study["report_num_images"]),
    ]
    try:
        _run_to_file(arseg_main, report_argv, out / "logs" / f"report_{split}.log", seen)
    except StudyError:
        failed.append("the report")
    table = _table(study, out, split, comparisons)
    (out / f"summary_{split}.md").write_text(table["markdown"])
    (out / f"summary_{split}.json").write_text(json.dumps(table["data"], indent=2))
    print(table["markdown"], flush=True)
    if damaged or failed:
        what = [damaged[0]] if damaged else []
        if len(damaged) > 1:
            what.append(f"{len(damaged) - 1} more damaged file(s) above")
        if failed:
            what.append(f"not made: {', '.join(failed)}")
        raise StudyError(
            f"the analysis of {out} is incomplete: {'; '.join(what)}; the table above holds what "
            "could be read"
        )
    return table["data"]


def _run_to_file(main: Any, argv: list[str], path: Path, seen: set[str] | None = None) -> None:
    """Run an arseg command in this process, its standard output written to ``path``; with
    ``seen``, its error lines are shown once (not again after another step has shown them)."""
    import contextlib
    import io

    buffer, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.ExitStack() as stack:
        if seen is not None:
            stack.enter_context(contextlib.redirect_stderr(errors))
        try:
            rc = main(argv)
        except SystemExit as exit_:  # argparse refusing an option
            rc = exit_.code if isinstance(exit_.code, int) else 2
    for line in errors.getvalue().splitlines():
        if seen is not None and line not in seen:
            seen.add(line)
            print(line, file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    if rc:
        raise StudyError(f"`arseg {' '.join(argv)}` failed (exit {rc}); its output: {path}")


def _metrics_or_none(eval_dir: Path) -> dict[str, Any] | None:
    """:func:`_read_metrics`, None for a damaged file (the analysis has named it)."""
    try:
        return _read_metrics(eval_dir)
    except ValueError:
        return None


def _mean_std(values: list[float]) -> tuple[float, float]:
    # arseg.analysis.scores.mean_std(values, one_value_std=0.0), once the study is a floor above
    # analysis (the engine does not import analysis)
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, var**0.5


def _table(
    study: dict[str, Any], out: Path, split: str, comparisons: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    from .provenance import provenance

    rows: dict[str, Any] = {}
    base = _metrics_or_none(RunDir(_run_dir(study, out, None, None)).eval_dir(split, "best"))
    for arm, spec in study["arms"].items():
        for checkpoint in ("best", "last"):
            metrics = [
                _metrics_or_none(RunDir(out / arm / f"seed{s}").eval_dir(split, checkpoint))
                for s in spec["seeds"]
            ]
            metrics = [m for m in metrics if m]
            row: dict[str, Any] = {"arm": arm, "label": spec["label"], "seeds": len(metrics)}
            for key in ("miou", "boundary_iou", "pixel_acc", "val_ar"):
                values = [m[key] for m in metrics if m.get(key) is not None]
                if values:
                    row[key] = _mean_std(values)
            cmp = comparisons.get(f"{arm}/{checkpoint}")
            if cmp is not None:
                row["delta"] = cmp
            rows[f"{arm}/{checkpoint}"] = row
    data = {
        "study": study["name"],
        "split": split,
        "provenance": provenance(),
        "baseline": base,
        "rows": rows,
    }
    lines = [
        f"## Study {study['name']}: {split} split",
        "",
        _provenance_line(),
        "",
    ]
    if base:
        bi = base.get("boundary_iou")
        lines.append(
            f"CE baseline: mIoU {100 * base['miou']:.2f} %, pixel acc {100 * base['pixel_acc']:.2f} %"
            + (f", Boundary IoU {100 * bi:.2f} %" if bi is not None else "")
            + f", val AR {base['val_ar']:.4f}"
        )
        lines.append("")
    lines += [
        "| arm | checkpoint | seeds | mIoU % | Boundary IoU % | pixel acc % | val AR | "
        "mIoU - control (95% CI) | paired t p | Boundary IoU - control (95% CI) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]

    def pct(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "n/a"
        m, s = row[key]
        return f"{100 * m:.2f} ± {100 * s:.2f}"

    for key, row in rows.items():
        arm, checkpoint = key.split("/")
        ar = f"{row['val_ar'][0]:.4f} ± {row['val_ar'][1]:.4f}" if "val_ar" in row else "n/a"
        if arm == study["control"]:
            deltas = "control | | control"
        else:
            cmp = row.get("delta")
            deltas = f"{_delta_text(cmp)} | {_seed_p(cmp)} | {_delta_text(cmp, 'boundary_iou')}"
        lines.append(
            f"| {row['label']} | {checkpoint} | {row['seeds']} | {pct(row, 'miou')} | "
            f"{pct(row, 'boundary_iou')} | {pct(row, 'pixel_acc')} | {ar} | {deltas} |"
        )
    lines += [
        "",
        "Mean ± std over seeds; differences in points with the two-level bootstrap 95% interval "
        "(images and seed pairs resampled; * = excludes 0) and the paired t-test over seeds. "
        "best = each run's best-val checkpoint, last = its last step (no selection).",
        "",
    ]
    control_seeds = set(study["arms"][study["control"]]["seeds"])
    if any(set(spec["seeds"]) != control_seeds for spec in study["arms"].values()):
        lines[-1:-1] = [
            "An arm with other seeds than the control is compared with it on the seeds both "
            "share (its mean ± std is over all of its own seeds; the control's over all of its).",
        ]
    return {"markdown": "\n".join(lines) + "\n", "data": data}


def _delta_text(cmp: dict[str, Any] | None, metric: str = "miou") -> str:
    """``+0.12 [-0.30, +0.51]`` (points, two-level bootstrap 95% interval) from compare's JSON."""
    if not cmp:
        return "n/a"
    if metric == "miou":
        diff, boot = cmp.get("delta_miou"), cmp.get("bootstrap") or {}
    else:
        entry = cmp.get(metric) or {}
        diff, boot = entry.get("delta"), entry.get("bootstrap") or {}
    lo, hi = boot.get("ci_low"), boot.get("ci_high")
    if diff is None or lo is None or hi is None:
        return "n/a"
    text = f"{100 * diff:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    return text + (" *" if boot.get("excludes_zero") else "")


def _seed_p(cmp: dict[str, Any] | None) -> str:
    test = (cmp or {}).get("seed_test") or {}
    p = test.get("p_value")
    return "n/a" if p is None or p != p else f"{p:.2g}"


# ----------------------------------------------------------------------------- CLI
def _cmd_study(args: argparse.Namespace) -> int:
    from .cli import expected_errors, fail

    try:
        run_study(args.config, args.out, eval_split=args.eval_split, data_root=args.data_root)
    except StudyError as err:  # a refused config: no need to import the engine to say so
        return fail(err)
    except Exception as err:
        if isinstance(err, expected_errors()):
            return fail(err)
        raise
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``arseg study`` to the ``arseg`` parser."""
    p = subparsers.add_parser(
        "study",
        help="the whole protocol: CE baseline, every arm x seed fine-tune, eval, compare, report",
        description="Run a study config (see configs/camvid/pretrained/study.yaml): the CE "
        "baseline, then every fine-tune arm for every seed from its best checkpoint, each run "
        "evaluated at its best and last checkpoints, then compare (every arm vs the control), "
        "trend and report. Resumable: run the same command again after a kill; a config with more "
        "seeds or arms extends the study. With a study "
        "directory and --eval-split, evaluates the finished runs on that split (no training).",
    )
    p.add_argument("config", type=Path, help="study config YAML, or the directory of a study")
    p.add_argument("--out", type=Path, default=None, help="study directory (runs, tables, report)")
    p.add_argument(
        "--eval-split",
        default=None,
        help="evaluate every run of a finished study on this split (no training)",
    )
    p.add_argument(
        "--data-root", default=None, help="dataset root for --eval-split (if it lives elsewhere)"
    )
    p.set_defaults(func=_cmd_study)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_job":
        sys.exit(_worker(sys.argv[2]))
    sys.exit("usage: python -m arseg.engine.study _job SPEC.json (internal to arseg study)")
