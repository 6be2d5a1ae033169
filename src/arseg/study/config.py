"""The study config: what a study is (:class:`StudyConfig`), how it is read and checked, the
resolved run config of each of its runs, and how a recorded study may be extended.

Layout of a study directory (``OUT``): ``study.yaml`` (the config as recorded), ``baseline/``,
``<arm>/seed<k>/`` (standard run directories), ``logs/``, ``state/`` (one record per finished
run), ``compare/<split>/``, ``trend/``, ``report/<split>/``, ``summary_<split>.{md,json}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arseg import rundir
from arseg.rundir import RunDir

__all__ = [
    "Arm",
    "ClusterSettings",
    "StudyConfig",
    "StudyError",
    "check_cluster",
    "check_overrides",
    "check_study",
    "load_study_config",
    "record_study",
    "recorded_study",
    "run_config",
]

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
    "cluster",
}
_ARM_KEYS = {"label", "seeds", "overrides"}
_CLUSTER_KEYS = {"executor", "parameters"}
CLUSTER_EXECUTORS = ("slurm", "local")
# Where runs execute does not change what they compute: a recorded study may be continued
# on a cluster (or back on this machine) without counting as another study.
_EXECUTION_KEYS = {"cluster"}


# Exit status of a worker whose run directory another process holds (its log's last line says
# which): the runner reports it as that one line.
BUSY = 75


class StudyError(ValueError):
    """A study config or study directory that cannot be used."""


@dataclass(frozen=True)
class Arm:
    """One arm: its label in tables, its seeds, and its config overrides (dotted keys)."""

    label: str
    seeds: list[int]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSettings:
    """Run every job through submitit: ``executor`` ``slurm`` (one SLURM job per run) or
    ``local`` (submitit's local executor, for trying a cluster config on one machine);
    ``parameters`` go to ``executor.update_parameters`` (``timeout_min``,
    ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ...)."""

    executor: str = "slurm"
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyConfig:
    """A checked study config. Paths (``baseline``, ``finetune``) are absolute.

    ``baseline`` is a run config to train to its peak, or a finished run directory to
    fine-tune from (:attr:`baseline_is_run`).
    """

    name: str
    baseline: str
    finetune: str
    control: str
    arms: dict[str, Arm]
    parallel: int = 1
    threads: int = 1
    eval_split: str = "val"
    report_num_images: int = 3
    n_boot: int = 10_000
    overrides: dict[str, Any] = field(default_factory=dict)
    cluster: ClusterSettings | None = None

    @property
    def baseline_is_run(self) -> bool:
        """The study starts from a finished run (its ``baseline`` is a run directory)."""
        return Path(self.baseline).is_dir()

    @property
    def threads_per_run(self) -> int:
        """CPU threads of one fine-tune (the baseline gets all ``threads``)."""
        return max(1, self.threads // self.parallel)

    def run_dir(self, out: Path, arm: str | None = None, seed: int | None = None) -> Path:
        """``OUT/baseline`` (``arm=None``; a finished baseline is seen through a view there)
        or ``OUT/<arm>/seed<k>``."""
        return out / "baseline" if arm is None else out / arm / f"seed{seed}"

    def as_dict(self) -> dict[str, Any]:
        """The plain mapping recorded in ``OUT/study.yaml`` (no ``cluster`` when absent)."""
        data = asdict(self)
        if data["cluster"] is None:
            del data["cluster"]
        return data

    def same_runs(self) -> dict[str, Any]:
        """What decides the runs' numbers: everything but where they execute."""
        return {k: v for k, v in self.as_dict().items() if k not in _EXECUTION_KEYS}


# ----------------------------------------------------------------------------- reading
def _check_keys(given: dict[str, Any], valid: set[str], what: str) -> None:
    unknown = set(given) - valid
    if unknown:
        raise StudyError(f"{what} {', '.join(sorted(unknown))}; valid: {', '.join(sorted(valid))}")


def _positive_int(where: str, key: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise StudyError(f"{where}: {key} must be {what}, got {value!r}")
    return value


def check_overrides(where: str, value: Any) -> dict[str, Any]:
    """Config overrides ``{dotted key: value}`` (``None``: none); one line naming ``where``."""
    value = value or {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping of dotted config keys, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _arm(where: str, name: Any, arm: Any) -> Arm:
    if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
        raise StudyError(f"{where}: arm names are letters, digits, '-' and '_', got {name!r}")
    if not isinstance(arm, dict):
        raise StudyError(f"{where}: arm {name!r} must be a mapping, got {type(arm).__name__}")
    _check_keys(arm, _ARM_KEYS, f"{where}: arm {name!r} has unknown key(s)")
    seeds = arm.get("seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise StudyError(
            f"{where}: arm {name!r} needs seeds: a list of distinct ints, got {seeds!r}"
        )
    return Arm(
        label=str(arm.get("label", name)),
        seeds=list(seeds),
        overrides=check_overrides(f"{where}: arm {name!r} overrides", arm.get("overrides")),
    )


def check_cluster(where: str, value: Any) -> ClusterSettings | None:
    """A ``cluster`` section as :class:`ClusterSettings` (``None``: none); one line naming
    ``where``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StudyError(
            f"{where}: cluster must be a mapping (executor, parameters), got {value!r}"
        )
    _check_keys(value, _CLUSTER_KEYS, f"{where}: cluster has unknown key(s)")
    executor = value.get("executor", "slurm")
    if executor not in CLUSTER_EXECUTORS:
        raise StudyError(
            f"{where}: cluster executor must be one of {', '.join(CLUSTER_EXECUTORS)}, "
            f"got {executor!r}"
        )
    parameters = value.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise StudyError(f"{where}: cluster parameters must be a mapping, got {parameters!r}")
    return ClusterSettings(executor=executor, parameters=dict(parameters))


def _from_mapping(raw: dict[str, Any], where: str, base: Path | None) -> StudyConfig:
    """A :class:`StudyConfig` from a config file's mapping (``base``: its folder, against which
    paths resolve) or from a recorded one (``base=None``: paths are already absolute)."""
    _check_keys(raw, _STUDY_KEYS, f"{where}: unknown study key(s)")
    for key in ("baseline", "finetune", "control", "arms"):
        if key not in raw:
            raise StudyError(f"{where}: missing study key {key!r}")
    paths = {}
    for key in ("baseline", "finetune"):
        path = Path(str(raw[key]))
        paths[key] = str((base / path).resolve() if base is not None else path)
    arms = raw["arms"]
    if not isinstance(arms, dict) or not arms:
        raise StudyError(f"{where}: arms must be a non-empty mapping of arm name -> settings")
    study = StudyConfig(
        name=str(raw.get("name", Path(where).stem)),
        baseline=paths["baseline"],
        finetune=paths["finetune"],
        control=raw["control"],
        arms={name: _arm(where, name, arm) for name, arm in arms.items()},
        parallel=_positive_int(where, "parallel", raw.get("parallel", 1)),
        threads=_positive_int(where, "threads", raw.get("threads", 1)),
        eval_split=str(raw.get("eval_split", "val")),
        report_num_images=_positive_int(  # 0: a report without heat maps and overlays
            where, "report_num_images", raw.get("report_num_images", 3), minimum=0
        ),
        n_boot=_positive_int(where, "n_boot", raw.get("n_boot", 10_000)),
        overrides=check_overrides(f"{where}: overrides", raw.get("overrides")),
        cluster=check_cluster(where, raw.get("cluster")),
    )
    if study.control not in study.arms:
        raise StudyError(
            f"{where}: control {study.control!r} is not an arm; arms: {', '.join(study.arms)}"
        )
    return study


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and check a study config; paths become absolute, defaults are filled in.

    Every run config is resolved here, so that a typo in an arm fails before anything trains.

    Raises:
        StudyError: a missing or unknown key, a wrong type, an arm without seeds, a control
            that is not an arm, a baseline or fine-tune config that does not exist or does not
            resolve.
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
    study = _from_mapping(raw, str(path), base=path.parent)
    check_study(study, str(path))
    return study


def check_study(study: StudyConfig, where: str) -> None:
    """Check that the baseline and fine-tune exist and that every run config resolves (one
    :class:`StudyError` line starting with ``where`` otherwise); nothing is written."""
    baseline = Path(study.baseline)
    if baseline.is_dir():  # a finished run to fine-tune from
        if not RunDir(baseline).config.is_file() or not RunDir(baseline).best_ckpt.is_file():
            raise StudyError(
                f"{where}: baseline {baseline} is a directory but not a finished run "
                "(it needs config.yaml and checkpoints/best.ckpt)"
            )
    elif not baseline.is_file():
        raise StudyError(f"{where}: baseline config {baseline} does not exist")
    if not Path(study.finetune).is_file():
        raise StudyError(f"{where}: finetune config {study.finetune} does not exist")
    for arm_name, arm in study.arms.items():
        run_config(study, Path("/nonexistent"), arm_name, arm.seeds[0])
    run_config(study, Path("/nonexistent"))


def _override_strings(overrides: dict[str, Any]) -> list[str]:
    # JSON is YAML: null, 0.1, [12, 6] and "linear" read back as what they were.
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def run_config(
    study: StudyConfig, out: Path, arm: str | None = None, seed: int | None = None
) -> dict[str, Any]:
    """The resolved run config of the baseline (``arm=None``) or of one arm's seed: what
    ``arseg fit`` / ``arseg finetune`` would train from the same config and options.

    A finished run given as the baseline returns its config as it was trained.
    """
    from arseg.engine.config import ConfigError, load_config, merge_config, validate_config

    options: dict[str, Any] = {
        "trainer": {
            "num_threads": study.threads if arm is None else study.threads_per_run,
            "enable_progress_bar": False,
        },
        "run_dir": str(study.run_dir(out, arm, seed)),
    }
    try:
        if arm is None and study.baseline_is_run:
            return load_config(RunDir(study.baseline).config)
        if arm is None:
            cfg = load_config(study.baseline, _override_strings(study.overrides))
        else:
            merged = {**study.overrides, **study.arms[arm].overrides}
            cfg = load_config(study.finetune, _override_strings(merged))
            options["seed"] = int(seed)  # type: ignore[arg-type]
            options["init_from"] = str(study.run_dir(out))
        return validate_config(merge_config(cfg, options, source="the study"))
    except ConfigError as err:
        where = "baseline" if arm is None else f"arm {arm!r}"
        raise StudyError(f"study {study.name}: {where}: {err}") from None


# ----------------------------------------------------------------------------- recording
def recorded_study(path: Path) -> StudyConfig:
    """The study recorded in ``OUT/study.yaml`` (one line naming it when it is damaged)."""
    from arseg.engine.records import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict) or "arms" not in data:
        raise StudyError(f"{path} is damaged: it holds no study (restore it, or use another --out)")
    return _from_mapping(data, str(path), base=None)


def _added_runs(previous: StudyConfig, study: StudyConfig) -> str | None:
    """What ``study`` adds to ``previous`` when it only adds seeds to arms or new arms (every
    finished run stays valid); ``None`` when it changes anything else."""
    before, after = previous.same_runs(), study.same_runs()
    if {k: v for k, v in before.items() if k != "arms"} != {
        k: v for k, v in after.items() if k != "arms"
    }:
        return None
    added = []
    for name, arm in previous.arms.items():
        new = study.arms.get(name)
        if new is None or (arm.label, arm.overrides) != (new.label, new.overrides):
            return None
        if not set(arm.seeds) <= set(new.seeds):
            return None
        extra = [s for s in new.seeds if s not in arm.seeds]
        if extra:
            added.append(f"{name} seeds {extra}")
    added += [f"arm {name} (seeds {arm.seeds})" for name, arm in study.arms.items()
              if name not in previous.arms]  # fmt: skip
    return ", ".join(added) or None


#: An arena's records in its study directory (:mod:`arseg.study.arena`): the resolved arena,
#: and its plan's timings.
ARENA_FILE = "arena.json"
PLAN_FILE = "arena_plan.json"
# What a study directory may hold before its study.yaml: the lock, and an arena's records
# (written first).
_BEFORE_STUDY_YAML = {rundir.LOCK_NAME, ARENA_FILE, PLAN_FILE}


def refuse_foreign(out: Path) -> None:
    """Refuse an ``--out`` that holds something else than a study (before anything is written)."""
    if (out / "study.yaml").is_file() or not out.exists():
        return
    if any(p.name not in _BEFORE_STUDY_YAML for p in out.iterdir()):
        raise StudyError(f"{out} exists and holds no study.yaml: choose another --out")


def record_study(
    study: StudyConfig, config_path: Path, out: Path, *, command: str | None = None
) -> None:
    """Record the study config in ``out``; refuse a directory that holds another study.

    A config that only adds seeds or arms extends the recorded study; one that only changes
    where the runs execute (``cluster``) continues it. ``command``: the command line written
    as the record's first comment (default: the ``arseg study`` that reads ``config_path``).
    """
    import yaml

    recorded = out / "study.yaml"
    if recorded.is_file():
        previous = recorded_study(recorded)
        if previous == study:
            return
        if previous.same_runs() != study.same_runs():
            added = _added_runs(previous, study)
            if added is None:
                before, after = previous.same_runs(), study.same_runs()
                changed = sorted(
                    k for k in set(before) | set(after) if before.get(k) != after.get(k)
                )
                raise StudyError(
                    f"{out} holds a study with other settings ({', '.join(changed)} differ): use "
                    "another --out, or delete it to start over (adding seeds or arms is allowed)"
                )
            print(f"extending the study in {out}: {added}; its finished runs are kept", flush=True)
    else:
        refuse_foreign(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = recorded.with_suffix(".tmp")
    tmp.write_text(
        f"# {command or f'arseg study {config_path} --out {out}'}\n"
        + yaml.safe_dump(study.as_dict(), sort_keys=False)
    )
    os.replace(tmp, recorded)
