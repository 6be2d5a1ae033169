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
3. compares every arm with the control (:func:`arseg.analysis.compare.compare_runs`, two-level
   bootstrap) at both checkpoints, fits the AR-loss trend of every arm and writes the report
   and ``DIR/summary_<split>.md``, and prints the final table.

Each run is one worker process (``python -m arseg.study.worker``) that trains and evaluates
it in Python (``fit`` and ``evaluate`` of :mod:`arseg.engine`, from the run config the study
resolved and checked before its first run); its log is ``DIR/logs/<arm>_seed<k>.log``. A finished run is recorded in
``DIR/state/<job>.json`` and never run again: a killed study continues where it stopped (a run
that was cut short resumes from its ``last.ckpt``). A config that only adds seeds to arms or
new arms extends the study: its finished runs are kept and only the new ones train.
``arseg study DIR --eval-split SPLIT [--data-root ROOT]`` evaluates every run of a finished
study on a split without retraining (another split, e.g. a test split kept elsewhere, or the
study's own after the evaluation code changed) and writes that split's comparisons, report and
table.

Every run records what produced it (``provenance.json``: arseg version, git commit, torch version,
threads); the study prints it with the final table. Same config, same threads: same numbers.

Where the runs execute: on this machine (worker processes, ``parallel`` at a time), or, with a
``cluster`` section, one submitit job per run (SLURM, or submitit's local executor)::

    cluster:
      executor: slurm
      parameters: {timeout_min: 120, slurm_partition: gpu, gpus_per_node: 1, cpus_per_task: 8}

``arseg arena`` (:mod:`~arseg.study.arena`) builds a study itself: CE only and every structural
loss term at every weight of its ladder, and answers which term to add, at which weight.

The package is a floor above :mod:`arseg.engine` and :mod:`arseg.analysis`:
:mod:`~arseg.study.config` (the study config), :mod:`~arseg.study.runner` and
:mod:`~arseg.study.worker` and :mod:`~arseg.study.cluster` (where and how runs execute), :mod:`~arseg.study.table` (the
analysis and the final table), :mod:`~arseg.study.run` (:func:`run_study`) and
:mod:`~arseg.study.cli` (``arseg study``).
"""

from .config import Arm, ClusterSettings, StudyConfig, StudyError, load_study_config
from .run import run_study

__all__ = [
    "Arm",
    "ClusterSettings",
    "StudyConfig",
    "StudyError",
    "load_study_config",
    "run_study",
]
