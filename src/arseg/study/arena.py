"""``arseg arena``: which structural loss, at which weight, helps this network on this data.

An arena is a study (:mod:`arseg.study`) whose arms it writes itself: CE only (the control) and
every term at every weight of its ladder, each with the same seeds, fine-tuned from one CE peak
with one recipe. It runs, resumes, locks and spreads over a cluster exactly as ``arseg study``
(it *is* one: the arena's directory is a study directory), and ends with a ranked answer
(:mod:`arseg.study.arena_answer`) and one report page (:mod:`arseg.analysis.arena_report`).

    arseg arena --baseline B --finetune F --out DIR [--terms ar,lovasz] [--weights 1,3]
        [--seeds 1,2,3] [--confirm-split test] [--parallel N] [--threads N] [--data-root ROOT]
    arseg arena ARENA.yaml --out DIR        # per-term ladders, overrides, a cluster section
    arseg arena DIR                         # continue (or, with --terms / --weights, extend) it

``B`` is a run config (its CE peak is trained first) or a finished run (read only); ``F`` the
fine-tune recipe. The resolved arena (terms, ladders, seeds, recipe, confirm split) is written
to ``DIR/arena.json`` before the first run; a second command on ``DIR`` continues it, and one
with more terms or weights extends it (the union of both; its finished runs are kept).

Term names are those of :data:`arseg.losses.LOSS_TERMS` plus ``ar_bce`` (AR with
``objective: bce``). Defaults (:data:`DEFAULT_LADDERS`, :data:`DEFAULT_SEEDS`) come from the
CamVid arena (``docs/experiments/camvid_arena.md``; the README says why).

An arena YAML (paths relative to it)::

    name: my_arena
    baseline: runs/peak            # or a run config
    finetune: finetune.yaml
    terms: {ar: [1, 3, 10], lovasz: [1, 3], dice: null}   # null: the term's default ladder
    seeds: [1, 2, 3]
    confirm_split: test            # optional
    parallel: 2
    threads: 2
    overrides: {trainer.channels_last: true}             # every run, control included
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import ARENA_FILE, Arm, ClusterSettings, StudyConfig, StudyError

__all__ = [
    "ARENA_FILE",
    "DEFAULT_LADDERS",
    "DEFAULT_SEEDS",
    "ArenaConfig",
    "ArenaTerm",
    "arena_terms",
    "parse_seeds",
    "parse_terms",
    "parse_weights",
    "resolve_arena",
]

#: The control arm of every arena.
CONTROL = "ce"
#: Each term's weights unless told otherwise (CamVid, docs/experiments/camvid_arena.md: AR's
#: gain still grew at 10; AR bce, Lovasz and Dice gained at 1 and more at 3 where measured;
#: RMI and AAF lost at 1, so their ladder looks below it).
DEFAULT_LADDERS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        "ar": (1.0, 3.0, 10.0),
        "ar_bce": (1.0, 3.0),
        "lovasz": (1.0, 3.0),
        "dice": (1.0, 3.0),
        "rmi": (0.3, 1.0),
        "aaf": (0.3, 1.0),
    }
)
_OTHER_LADDER = (1.0, 3.0)  # a term added to LOSS_TERMS later
#: 3 paired seeds: CamVid's 5 gave intervals of about +-0.3 to 0.5 points at the gains that
#: matter; 3 widen them (by about t(2)/t(4) x sqrt(5/3)) but still separate gains of a point.
DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
_LABELS = {"ar": "AR", "lovasz": "Lovasz", "rmi": "RMI", "aaf": "AAF (exp decay)", "dice": "Dice"}
# a term's settings beside its weight: AAF decays as its authors' 10^(-step/steps)
_SETTINGS = {"aaf": {"schedule": "exp", "final_ratio": 0.1}}
_ARENA_KEYS = {
    "name",
    "baseline",
    "finetune",
    "terms",
    "seeds",
    "confirm_split",
    "eval_split",
    "parallel",
    "threads",
    "n_boot",
    "report_num_images",
    "overrides",
    "cluster",
}


@dataclass(frozen=True)
class ArenaTerm:
    """One contender: its arena name, its label in tables, its default ladder, and the loss
    term (of :data:`arseg.losses.LOSS_TERMS`) with the settings it is trained with."""

    name: str
    label: str
    ladder: tuple[float, ...]
    loss_term: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def overrides(self, weight: float) -> dict[str, Any]:
        """The run-config overrides of this term at ``weight`` (AR off unless it is the term)."""
        if self.name == "ar":  # as every earlier study wrote it
            return {"loss.lambda_ar": float(weight)}
        entry = {"weight": float(weight), **self.settings}
        return {"loss.lambda_ar": 0.0, f"loss.terms.{self.loss_term}": entry}


def arena_terms() -> dict[str, ArenaTerm]:
    """Every term an arena can run: :data:`~arseg.losses.LOSS_TERMS`, and AR a second time as
    ``ar_bce`` (its ``bce`` objective)."""
    from arseg.losses import LOSS_TERMS

    terms: dict[str, ArenaTerm] = {}
    for name in LOSS_TERMS:
        ladder = DEFAULT_LADDERS.get(name, _OTHER_LADDER)
        settings = MappingProxyType(dict(_SETTINGS.get(name, {})))
        terms[name] = ArenaTerm(name, _LABELS.get(name, name), ladder, name, settings)
        if name == "ar":
            terms["ar_bce"] = ArenaTerm(
                "ar_bce", "AR (bce)", DEFAULT_LADDERS["ar_bce"], "ar", {"objective": "bce"}
            )
    return terms


def weight_text(weight: float) -> str:
    """``1``, ``0.3``, ``10``: a weight as tables print it."""
    return f"{weight:g}"


def arm_name(term: str, weight: float) -> str:
    """The study arm of ``term`` at ``weight``: ``ar_10``, ``rmi_0p3``."""
    return f"{term}_{weight_text(weight).replace('.', 'p').replace('+', '')}"


# ----------------------------------------------------------------------------- parsing
def _items(value: Any, what: str) -> list[Any]:
    """A comma-separated string or a list, as a list of its items (none empty)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if any(not v for v in items):
            raise StudyError(f"{what}: an empty item in {value!r} (give e.g. 1,3,10)")
        return items
    if isinstance(value, (list, tuple)) and value:
        return list(value)
    raise StudyError(f"{what}: expected a comma-separated list, got {value!r}")


def parse_terms(value: Any, what: str = "--terms") -> list[str]:
    """Term names (``"ar,dice"`` or a list), checked: known, each once."""
    valid = arena_terms()
    names = [str(v) for v in _items(value, what)]
    for name in names:
        if name not in valid:
            raise StudyError(f"{what}: unknown term {name!r}; valid: {', '.join(valid)}")
    seen = {n for i, n in enumerate(names) if n in names[:i]}
    if seen:
        raise StudyError(f"{what}: {sorted(seen)[0]} is given twice")
    return names


def parse_weights(value: Any, what: str = "--weights") -> list[float]:
    """Positive finite weights (``"1,3,10"`` or a list), each once, sorted."""
    weights: list[float] = []
    for item in _items(value, what):
        try:
            if isinstance(item, bool):
                raise ValueError
            weight = float(item)
        except (TypeError, ValueError):
            raise StudyError(f"{what}: {item!r} is not a positive number") from None
        if not math.isfinite(weight) or weight <= 0:
            raise StudyError(f"{what}: {item!r} is not a positive number")
        if weight in weights:
            raise StudyError(f"{what}: {weight_text(weight)} is given twice")
        weights.append(weight)
    return sorted(weights)


def parse_seeds(value: Any, what: str = "--seeds") -> list[int]:
    """Distinct int seeds: ``"1,2,3"``, ``"1-3"`` or a list."""
    seeds: list[int] = []
    for item in _items(value, what):
        text = str(item)
        low, dash, high = text.partition("-")
        try:
            if isinstance(item, bool) or isinstance(item, float):
                raise ValueError
            span = range(int(low), int(high) + 1) if dash and low else [int(text)]
        except ValueError:
            raise StudyError(
                f"{what}: {text!r} is not an integer (or a range such as 1-3)"
            ) from None
        for seed in span:
            if seed in seeds:
                raise StudyError(f"{what}: seed {seed} is given twice")
            seeds.append(seed)
    if not seeds:
        raise StudyError(f"{what}: no seed in {value!r}")
    return seeds


def seeds_text(seeds: Sequence[int]) -> str:
    """``1-3`` for a run of consecutive seeds, else ``1, 4, 9``."""
    s = list(seeds)
    if len(s) > 1 and s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


# ----------------------------------------------------------------------------- the arena
@dataclass(frozen=True)
class ArenaConfig:
    """A resolved arena (paths absolute); :meth:`study` is the study that runs it."""

    name: str
    baseline: str
    finetune: str
    terms: dict[str, list[float]]
    seeds: list[int]
    confirm_split: str | None = None
    data_root: str | None = None  # where the confirm split's data lives, if elsewhere
    eval_split: str = "val"
    parallel: int = 1
    threads: int = 1
    n_boot: int = 10_000
    report_num_images: int = 3
    overrides: dict[str, Any] = field(default_factory=dict)
    cluster: ClusterSettings | None = None

    @property
    def n_arms(self) -> int:
        """Term-weight arms (the control not counted)."""
        return sum(len(ladder) for ladder in self.terms.values())

    def arms(self) -> dict[str, tuple[str, float]]:
        """``{arm: (term, weight)}`` of every term-weight arm, term by term, weights rising."""
        return {arm_name(t, w): (t, w) for t, ladder in self.terms.items() for w in ladder}

    def study(self) -> StudyConfig:
        """The study of this arena: CE only (``ce``) and one arm per term and weight."""
        known = arena_terms()
        arms = {CONTROL: Arm("CE only", list(self.seeds), {"loss.lambda_ar": 0.0})}
        for arm, (term, weight) in self.arms().items():
            spec = known[term]
            label = f"CE + {weight_text(weight)} {spec.label}"
            arms[arm] = Arm(label, list(self.seeds), spec.overrides(weight))
        return StudyConfig(
            name=self.name,
            baseline=self.baseline,
            finetune=self.finetune,
            control=CONTROL,
            arms=arms,
            parallel=self.parallel,
            threads=self.threads,
            eval_split=self.eval_split,
            report_num_images=self.report_num_images,
            n_boot=self.n_boot,
            overrides=dict(self.overrides),
            cluster=self.cluster,
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["cluster"] is None:
            del data["cluster"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ArenaConfig:
        """An arena as :meth:`as_dict` wrote it (one line naming ``where`` if it is not one)."""
        try:
            raw = dict(data)
            cluster = raw.pop("cluster", None)
            arena = cls(**raw)
            terms = {
                str(t): parse_weights(w, f"{where}: terms.{t}") for t, w in arena.terms.items()
            }
            return replace(
                arena,
                terms=terms,
                seeds=parse_seeds(arena.seeds, f"{where}: seeds"),
                cluster=None if cluster is None else ClusterSettings(**cluster),
            )
        except (TypeError, AttributeError) as err:
            raise StudyError(f"{where} is damaged: it holds no arena ({err})") from None


def _settings_that_differ(a: ArenaConfig, b: ArenaConfig) -> list[str]:
    """What decides the runs' numbers and differs (terms, confirm split, data root and where
    the runs execute may change between commands)."""
    free = {"terms", "confirm_split", "data_root", "cluster"}
    da, db = a.as_dict(), b.as_dict()
    return sorted(k for k in set(da) | set(db) if k not in free and da.get(k) != db.get(k))


def _merge_terms(
    recorded: Mapping[str, list[float]], given: Mapping[str, list[float]]
) -> dict[str, list[float]]:
    """The union of two arenas' ladders, term by term in the known order."""
    merged = {t: sorted({*recorded.get(t, []), *given.get(t, [])}) for t in arena_terms()}
    return {t: w for t, w in merged.items() if w}


def _read_yaml_arena(path: Path) -> dict[str, Any]:
    from arseg.engine.records import read_yaml

    if not path.is_file():
        raise StudyError(f"arena config {path} does not exist")
    try:
        raw = read_yaml(path)
    except ValueError as err:
        raise StudyError(str(err)) from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: an arena config is a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _ARENA_KEYS
    if unknown:
        raise StudyError(
            f"{path}: unknown arena key(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(sorted(_ARENA_KEYS))}"
        )
    base = path.parent
    for key in ("baseline", "finetune"):
        if key in raw:
            raw[key] = str((base / str(raw[key])).resolve())
    return raw


def _yaml_terms(raw: Any, where: str) -> dict[str, list[float]]:
    """``terms:`` of an arena YAML: names (default ladders) or name -> ladder (null: default)."""
    known = arena_terms()
    if isinstance(raw, Mapping):
        names = parse_terms(list(raw), f"{where}: terms")
        return {
            t: parse_weights(raw[t], f"{where}: terms.{t}")
            if raw[t] is not None
            else list(known[t].ladder)
            for t in names
        }
    return {t: list(known[t].ladder) for t in parse_terms(raw, f"{where}: terms")}


def recorded_arena(out: Path) -> ArenaConfig | None:
    """The arena recorded in ``out`` (None when there is none)."""
    from arseg.engine.records import RunError, read_json

    path = out / ARENA_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path, mapping=True)
    except RunError as err:
        raise StudyError(f"{err} (restore it, or use another --out)") from None
    return ArenaConfig.from_dict(data, str(path))


def _positive(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def resolve_arena(
    source: str | Path | None = None,
    *,
    out: str | Path | None = None,
    baseline: str | Path | None = None,
    finetune: str | Path | None = None,
    terms: Any = None,
    weights: Any = None,
    seeds: Any = None,
    confirm_split: str | None = None,
    parallel: int | None = None,
    threads: int | None = None,
    data_root: str | None = None,
) -> tuple[ArenaConfig, Path, ArenaConfig | None]:
    """The arena a command asks for, its directory, and the arena recorded there (or None).

    ``source``: an arena YAML or an arena directory (or None: the options say it all). Options
    given override the YAML; a recorded arena supplies what neither gives. Terms and weights
    extend a recorded arena (the union; ``weights`` without ``terms`` extends the recorded
    terms, not every known one); any other setting that decides the runs' numbers
    (seeds, baseline, recipe, threads, ...) must equal the recorded one.

    Raises:
        StudyError: one line, before anything is written.
    """
    from .config import check_cluster, check_overrides, refuse_foreign

    yaml_raw: dict[str, Any] = {}
    where = "the command line"
    if source is not None:
        source = Path(source)
        if source.is_dir():
            if out is not None and Path(out).resolve() != source.resolve():
                raise StudyError("give either an arena directory, or --out DIR with the options")
            out = source
            if not (source / ARENA_FILE).is_file():
                kind = (
                    "a study (use arseg study)" if (source / "study.yaml").is_file() else "no arena"
                )
                raise StudyError(f"{source} holds {kind}: no {ARENA_FILE}")
        else:
            yaml_raw = _read_yaml_arena(source)
            where = str(source)
    if out is None:
        raise StudyError("--out DIR is required (or give the directory of an arena to continue it)")
    out = Path(out).resolve()
    recorded = recorded_arena(out)
    if recorded is None:
        if (out / "study.yaml").is_file():
            raise StudyError(f"{out} holds a study, not an arena: use another --out")
        refuse_foreign(out)

    def given(key: str, cli: Any) -> Any:
        return cli if cli is not None else yaml_raw.get(key)

    base = recorded
    paths = {}
    for key, cli in (("baseline", baseline), ("finetune", finetune)):
        value = given(key, None if cli is None else str(Path(cli).resolve()))
        if value is None and base is None:
            raise StudyError(f"--{key} is required to start an arena in {out}")
        paths[key] = str(value) if value is not None else getattr(base, key)
    # what was asked about terms and weights
    asked: dict[str, list[float]] | None = None
    ladder = parse_weights(weights) if weights is not None else None
    if terms is not None or ladder is not None or "terms" in yaml_raw:
        known = arena_terms()
        if terms is not None:
            chosen = {t: list(known[t].ladder) for t in parse_terms(terms)}
        elif "terms" in yaml_raw:
            chosen = _yaml_terms(yaml_raw["terms"], where)
        elif base is not None:  # `arseg arena DIR --weights W`: W for the arena's own terms
            chosen = {t: list(w) for t, w in base.terms.items()}
        else:
            chosen = {t: list(spec.ladder) for t, spec in known.items()}
        if terms is not None and "terms" in yaml_raw:  # the YAML's ladders of the chosen terms
            from_yaml = _yaml_terms(yaml_raw["terms"], where)
            chosen = {t: from_yaml.get(t, w) for t, w in chosen.items()}
        asked = {t: list(ladder) if ladder is not None else w for t, w in chosen.items()}
    if asked is None:
        asked = (
            dict(base.terms)
            if base is not None
            else {t: list(spec.ladder) for t, spec in arena_terms().items()}
        )
    seed_value = given("seeds", seeds)
    settings = {
        "name": str(yaml_raw.get("name", base.name if base else out.name)),
        "seeds": parse_seeds(seed_value, "--seeds" if seeds is not None else f"{where}: seeds")
        if seed_value is not None
        else (list(base.seeds) if base else list(DEFAULT_SEEDS)),
        "eval_split": str(yaml_raw.get("eval_split", base.eval_split if base else "val")),
        "parallel": _positive(
            _first(given("parallel", parallel), base and base.parallel, 1), "--parallel"
        ),
        "threads": _positive(
            _first(given("threads", threads), base and base.threads, _cpus()), "--threads"
        ),
        "n_boot": _positive(yaml_raw.get("n_boot", base.n_boot if base else 10_000), "n_boot"),
        "report_num_images": _positive(
            yaml_raw.get("report_num_images", base.report_num_images if base else 3),
            "report_num_images",
            minimum=0,
        ),
        "overrides": check_overrides(f"{where}: overrides", yaml_raw["overrides"])
        if "overrides" in yaml_raw
        else (dict(base.overrides) if base else {}),
        "cluster": check_cluster(where, yaml_raw["cluster"])
        if "cluster" in yaml_raw
        else (base.cluster if base else None),
    }
    split = given("confirm_split", confirm_split)
    arena = ArenaConfig(
        baseline=paths["baseline"],
        finetune=paths["finetune"],
        terms=_merge_terms(base.terms if base else {}, asked),
        confirm_split=str(split) if split is not None else (base.confirm_split if base else None),
        # absolute, as baseline and finetune: a later `arseg arena DIR` may run elsewhere
        data_root=str(Path(data_root).expanduser().resolve())
        if data_root is not None
        else (base.data_root if base else None),
        **settings,
    )
    if arena.data_root is not None and arena.confirm_split is None:  # it would be unused
        raise StudyError(
            "--data-root is the confirm split's: give --confirm-split too (the runs train and "
            "are evaluated on their configs' data.root)"
        )
    if arena.confirm_split is not None and arena.confirm_split == arena.eval_split:
        raise StudyError(
            f"--confirm-split {arena.confirm_split} is the split that picks the weights: "
            "give another split of the data (e.g. test)"
        )
    if base is not None:
        differ = _settings_that_differ(base, arena)
        if differ:
            detail = "; ".join(
                f"{k}: recorded {getattr(base, k)!r}, given {getattr(arena, k)!r}" for k in differ
            )
            raise StudyError(
                f"{out} holds an arena with other settings ({detail}): give the recorded ones "
                "(or none: they are read from it), or use another --out"
            )
    return arena, out, recorded


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    return next(v for v in values if v is not None)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def added_arms(before: ArenaConfig | None, after: ArenaConfig) -> list[str]:
    """The term-weight arms ``after`` adds to ``before`` (``ar 10``, ``dice 3``)."""
    if before is None:
        return []
    old = set(before.arms())
    return [f"{t} {weight_text(w)}" for arm, (t, w) in after.arms().items() if arm not in old]
