"""Experiment configs: YAML files with ``_base_`` inheritance and dotted ``key=value`` overrides.

A config is a nested dict whose keys are fixed by :data:`DEFAULTS`: every key a file or an
override names must exist there (a typo is an error, never a silently ignored setting). The
only open-ended sections are the ``options`` dicts that are passed through as keyword arguments
(``model.options``, ``data.options``, ``data.train_options``, ``data.val_options``).

Example:
    >>> cfg = load_config(None, ["model.name=lwrefinenet18", "optim.lr=0.02"])
    >>> cfg["optim"]["lr"]
    0.02
    >>> load_config(None, ["optim.lrr=0.1"])
    Traceback (most recent call last):
    ...
    arseg.engine.config.ConfigError: unknown config key 'optim.lrr' (from the command line); valid keys in 'optim': encoder_lr_mult, lr, momentum, nesterov, poly_power, weight_decay
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "complete_config",
    "dump_config",
    "load_config",
    "load_yaml",
    "merge_config",
    "parse_overrides",
    "resolve_data_root",
    "run_data_root",
    "validate_config",
]


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


#: Every key a config may set, with its default. ``None`` means "any type / unset".
DEFAULTS: dict[str, Any] = {
    "name": "experiment",  # used for the default run directory runs/<name>
    "run_dir": None,  # default: runs/<name>
    "seed": 42,
    "init_from": None,  # checkpoint whose weights start the run (fine-tuning); fresh optimiser
    "model": {
        "name": "lwrefinenet50",
        "num_classes": None,  # default: the dataset's
        "pretrained": False,
        "freeze_bn": False,  # keep BatchNorm statistics fixed (LW-RefineNet recipe)
        "options": {},  # extra keyword arguments of build_model, e.g. decoder_channels
    },
    "data": {
        "name": "synthetic",
        "root": None,
        "train_split": "train",
        "val_split": "val",
        "options": {},  # keyword arguments of build_dataset for every split
        "train_options": {},  # ... only for the training split
        "val_options": {},  # ... only for the validation split
        "crop_size": [64, 64],
        "scale_range": [0.5, 2.0],  # None: no random scaling
        "min_short_side": None,  # shorter side never scaled below this (LW-RefineNet: 350)
        "rotate_degrees": 0.0,  # random rotation in [-d, d] (semseg PSPNet: 10)
        "blur_prob": 0.0,  # probability of a 5x5 Gaussian blur of the image (semseg: 0.5)
        "hflip": True,
        "eval_resize": None,  # None: evaluate at the full image size
        "batch_size": 8,
        "val_batch_size": 4,
        "num_workers": 2,
    },
    "loss": {
        "lambda_ar": 0.0,  # 0: CE only (the AR value is still logged, computed without grad)
        "scales": [12, 6],
        "method": "auto",
        "kernel": "sqrt",  # AR affinity kernel: "sqrt" (the paper) or "linear" (A = P^T P)
        "lambda_schedule": "constant",  # lambda_ar over the run: constant | linear | exp | poly
        "lambda_final_ratio": 0.1,  # lambda at the last step / lambda_ar (not for constant)
        "lambda_power": 0.9,  # exponent of the poly lambda schedule
        "class_weight": None,  # list of C floats
        "ignore_index": 255,
        "aux": True,  # add the model's auxiliary losses with model.aux_weights
        # further terms of the objective, name -> {weight, schedule, final_ratio, power,
        # options...}: lovasz, rmi, aaf, dice, or ar (arseg/engine/objective.py)
        "terms": {},
    },
    "optim": {
        "lr": 0.01,  # decoder/head learning rate
        "encoder_lr_mult": 1.0,  # encoder LR = lr * encoder_lr_mult (0.1 in the LW-RefineNet recipe)
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "poly_power": 0.9,  # LR factor (1 - step / total_steps) ** poly_power, per step
    },
    "trainer": {
        "max_epochs": 200,
        "max_steps": -1,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "deterministic": "warn",
        "check_val_every_n_epoch": 1,
        "log_every_n_steps": 1,
        "checkpoint_every_n_steps": None,  # also save last.ckpt every N steps (mid-epoch resume)
        "limit_train_batches": None,
        "limit_val_batches": None,
        "gradient_clip_val": None,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": True,
        "num_threads": None,  # torch CPU threads (set_num_threads); None: torch's default
        # model and input batches in channels_last (NHWC): about 2x faster training steps of the
        # depthwise EfficientNet-Lite on CPU (benchmarks/train_step.py); same math, other
        # float rounding, so a run's numbers differ from a contiguous run's within seed noise
        "channels_last": False,
    },
    "eval": {
        "scales": [1.0],  # e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] for PSPNet
        "flip": False,
        "mode": "whole",  # or "slide"
        "window": None,  # [h, w] of the sliding window
        "stride": None,  # [h, w] of the sliding-window step (default: 2/3 of the window)
    },
}

# Sections whose contents are free-form keyword arguments.
_OPEN_SECTIONS = {
    ("model", "options"),
    ("data", "options"),
    ("data", "train_options"),
    ("data", "val_options"),
    ("loss", "terms"),
}
# Open sections whose entries are themselves settings mappings, merged one level deeper.
_TERM_SECTIONS = {("loss", "terms")}


# Keys whose value may take several types (Lightning accepts e.g. devices=2, "auto" or [0, 1]).
_ANY_TYPE = {"trainer.deterministic", "trainer.devices", "trainer.precision", "trainer.strategy"}


# Keys that may be set to null (YAML ``null`` / ``~``): those whose default is None, and these.
_NULLABLE = {
    "data.scale_range",
    "loss.scales",
    # Lightning's own defaults apply to these when null
    "trainer.max_epochs",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.check_val_every_n_epoch",
}

# The type of each key whose default is None (any type would otherwise pass).
_TYPES_OF_NONE_DEFAULTS: dict[str, tuple[type, ...]] = {
    "run_dir": (str,),
    "init_from": (str,),
    "model.num_classes": (int,),
    "data.root": (str,),
    "data.eval_resize": (list, tuple),
    "data.min_short_side": (int,),
    "loss.class_weight": (list, tuple),
    "trainer.checkpoint_every_n_steps": (int,),
    "trainer.limit_train_batches": (int, float),
    "trainer.limit_val_batches": (int, float),
    "trainer.gradient_clip_val": (int, float),
    "trainer.num_threads": (int,),
    "eval.window": (list, tuple),
    "eval.stride": (list, tuple),
}


def _where(source: str | None) -> str:
    return f" (from {source})" if source else ""


def _a(type_name: str) -> str:
    return f"an {type_name}" if type_name[:1] in "aeiou" else f"a {type_name}"


# Floats with an exponent, in every spelling users type: YAML 1.1 (PyYAML) reads ``1e-9``,
# ``5e-4``, ``1E5``, ``.5e3`` or ``1e+3`` as strings (it wants a dot and a signed exponent).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@functools.cache
def _loader() -> type:
    """A ``yaml.SafeLoader`` that also reads exponent floats as floats (yaml imported lazily)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-9``-style floats as floats."""
    import yaml

    return yaml.load(text, Loader=_loader())  # a SafeLoader subclass: safe


def _check_type(path: str, default: Any, value: Any, source: str | None) -> Any:
    if path in _ANY_TYPE:
        return value
    if value is None:
        if default is None or path in _NULLABLE:
            return value
        raise ConfigError(
            f"config key '{path}'{_where(source)} cannot be null: it expects "
            f"{_a(type(default).__name__)} (default {default!r})"
        )
    if isinstance(value, os.PathLike):
        value = os.fspath(value)  # paths from the Python API are stored as strings
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays, tensors
    if default is None:
        types = _TYPES_OF_NONE_DEFAULTS.get(path)
        if types is None:
            return value
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(tp.__name__ for tp in types)
            raise ConfigError(
                f"config key '{path}'{_where(source)} expects {names} or null, "
                f"got {type(value).__name__} {value!r}"
            )
        return list(value) if isinstance(value, tuple) else value
    ok: bool
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        if ok:
            value = list(value)
    elif isinstance(default, dict):
        ok = isinstance(value, Mapping)
    else:  # pragma: no cover - DEFAULTS only holds the types above
        ok = True
    if not ok:
        raise ConfigError(
            f"config key '{path}'{_where(source)} expects {_a(type(default).__name__)} "
            f"(default {default!r}), got {type(value).__name__} {value!r}"
        )
    return value


def merge_config(
    base: dict[str, Any],
    update: Mapping[str, Any],
    *,
    source: str | None = None,
    schema: Mapping[str, Any] = DEFAULTS,
    _prefix: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``, checking keys and types against ``schema``."""
    if not isinstance(update, Mapping):
        where = ".".join(_prefix) or "the top level"
        raise ConfigError(f"config{_where(source)}: {where} must be a mapping, got {update!r}")
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = (*_prefix, str(key))
        dotted = ".".join(path)
        if key not in schema:
            valid = ", ".join(sorted(schema))
            section = ".".join(_prefix) or "the top level"
            raise ConfigError(
                f"unknown config key '{dotted}'{_where(source)}; valid keys in '{section}': {valid}"
                if _prefix
                else f"unknown config key '{dotted}'{_where(source)}; valid top-level keys: {valid}"
            )
        default = schema[key]
        if path in _OPEN_SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"config key '{dotted}'{_where(source)} expects a mapping of keyword "
                    f"arguments, got {value!r}"
                )
            merged = dict(out.get(key) or {})
            for name, entry in copy.deepcopy(dict(value)).items():
                if path in _TERM_SECTIONS and isinstance(entry, Mapping):
                    # one term's settings merge key by key (an arm changes only its weight)
                    entry = {**(merged.get(name) or {}), **entry}
                merged[name] = entry
            out[key] = merged
        elif isinstance(default, dict):
            out[key] = merge_config(
                out.get(key, {}), value, source=source, schema=default, _prefix=path
            )
        else:
            out[key] = _check_type(dotted, default, copy.deepcopy(value), source)
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], str]]:
    """The layers of a config file, bases first: [(mapping, source name), ...]."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"circular _base_ inheritance: {cycle}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    import yaml

    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    bases = data.pop("_base_", None)
    layers: list[tuple[dict[str, Any], str]] = []
    if bases is not None:
        if isinstance(bases, str):
            bases = [bases]
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"config file {path}: _base_ must be a path or a list of paths")
        for base in bases:
            layers.extend(_read_yaml(path.parent / base, (*chain, path)))
    layers.append((data, str(path)))
    return layers


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "model.options.decoder_channels=32"]`` into a nested dict.

    Values are parsed as YAML (``0.1`` -> float, ``[12, 6]`` -> list, ``null`` -> None,
    ``true`` -> bool); anything else stays a string.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        import yaml

        try:
            value = load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of '{part}'")
            node = child
        node[parts[-1]] = value
    return nested


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the values that must be consistent with each other; returns ``cfg``."""

    def pair(path: str, value: Any) -> None:
        if value is None:
            return
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, int) and v > 0 for v in value)
        ):
            raise ConfigError(
                f"config key '{path}' expects [height, width] positive ints, got {value!r}"
            )

    pair("data.crop_size", cfg["data"]["crop_size"])
    pair("data.eval_resize", cfg["data"]["eval_resize"])
    pair("eval.window", cfg["eval"]["window"])
    pair("eval.stride", cfg["eval"]["stride"])
    window, stride = cfg["eval"]["window"], cfg["eval"]["stride"]
    if window is not None and stride is not None and any(s > w for s, w in zip(stride, window)):
        raise ConfigError(
            f"config key 'eval.stride' {stride} must not exceed eval.window {window} (a longer "
            "step would leave pixels no window covers)"
        )
    sr = cfg["data"]["scale_range"]
    if sr is not None and (
        len(sr) != 2 or not all(_is_number(v) for v in sr) or not (0 < sr[0] <= sr[1])
    ):
        raise ConfigError(
            f"config key 'data.scale_range' expects [low, high] with 0 < low <= high, got {sr!r}"
        )
    weights = cfg["loss"]["class_weight"]
    if weights is not None and not all(_is_number(v) and v >= 0 for v in weights):
        raise ConfigError(
            f"config key 'loss.class_weight' expects a list of numbers >= 0, got {weights!r}"
        )
    if cfg["loss"]["scales"] is not None:
        from arseg.losses.sampling import normalize_scales

        try:
            normalize_scales(cfg["loss"]["scales"])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key 'loss.scales': {err}") from None
    if not 0 <= cfg["data"]["rotate_degrees"] <= 180:
        raise ConfigError(
            f"config key 'data.rotate_degrees' must be in [0, 180], got {cfg['data']['rotate_degrees']}"
        )
    if not 0 <= cfg["data"]["blur_prob"] <= 1:
        raise ConfigError(
            f"config key 'data.blur_prob' must be in [0, 1], got {cfg['data']['blur_prob']}"
        )
    if cfg["data"]["min_short_side"] is not None and cfg["data"]["min_short_side"] < 1:
        raise ConfigError(
            "config key 'data.min_short_side' must be >= 1 or null, "
            f"got {cfg['data']['min_short_side']}"
        )
    for key in ("checkpoint_every_n_steps", "num_threads"):  # 0 or null: off / torch's default
        value = cfg["trainer"][key]
        if value is not None and value < 0:
            raise ConfigError(f"config key 'trainer.{key}' must be >= 0 or null, got {value}")
    from arseg.losses import KERNELS
    from arseg.losses.functional import METHODS

    choices = {"method": METHODS, "kernel": KERNELS}
    for key, allowed in choices.items():
        if cfg["loss"][key] not in allowed:
            raise ConfigError(
                f"config key 'loss.{key}' must be one of {allowed}, got {cfg['loss'][key]!r}"
            )
    from arseg.losses.schedule import check_lambda_schedule

    try:
        check_lambda_schedule(
            cfg["loss"]["lambda_schedule"],
            cfg["loss"]["lambda_final_ratio"],
            cfg["loss"]["lambda_power"],
        )
    except ValueError as err:
        raise ConfigError(f"config keys 'loss.lambda_*': {err}") from None
    if cfg["loss"]["lambda_ar"] < 0:
        raise ConfigError(
            f"config key 'loss.lambda_ar' must be >= 0, got {cfg['loss']['lambda_ar']}"
        )
    from .objective import check_loss_terms

    try:
        check_loss_terms(cfg["loss"])
    except ValueError as err:
        raise ConfigError(f"config key {err}" if str(err).startswith("'") else str(err)) from None
    if cfg["optim"]["lr"] <= 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg['optim']['lr']}")
    if cfg["eval"]["mode"] not in ("whole", "slide"):
        raise ConfigError(
            f"config key 'eval.mode' must be 'whole' or 'slide', got {cfg['eval']['mode']!r}"
        )
    if cfg["eval"]["mode"] == "slide" and cfg["eval"]["window"] is None:
        raise ConfigError("config key 'eval.window' must be set when eval.mode is 'slide'")
    if not cfg["eval"]["scales"] or any(
        not isinstance(s, (int, float)) or s <= 0 for s in cfg["eval"]["scales"]
    ):
        raise ConfigError(
            f"config key 'eval.scales' expects positive numbers, got {cfg['eval']['scales']!r}"
        )
    for key in ("batch_size", "val_batch_size"):
        if cfg["data"][key] < 1:
            raise ConfigError(f"config key 'data.{key}' must be >= 1, got {cfg['data'][key]}")
    if cfg["data"]["num_workers"] < 0:
        raise ConfigError(
            f"config key 'data.num_workers' must be >= 0, got {cfg['data']['num_workers']}"
        )
    return cfg


def complete_config(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored by a run (checkpoint or config.yaml) with every key of today's DEFAULTS.

    Keys added to arseg after the run was written take their defaults; the stored values are
    kept as they are (they were valid when the run started, and are not re-checked).
    """

    def fill(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(dict(defaults))
        for key, value in values.items():
            if isinstance(out.get(key), dict) and isinstance(value, Mapping):
                out[key] = fill(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out

    return fill(DEFAULTS, stored)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> dict[str, Any]:
    """Load a config: defaults <- ``_base_`` files <- ``path`` <- overrides.

    Args:
        path: a YAML file, or ``None`` for the defaults alone.
        overrides: dotted ``key=value`` strings (command line) or a nested mapping.

    Returns:
        The resolved config, a plain nested dict (YAML-serialisable).

    Raises:
        ConfigError: a missing file, invalid YAML, an unknown key or a value of the wrong type.
    """
    cfg = copy.deepcopy(DEFAULTS)
    root_file: Path | None = None  # the file that set data.root last
    if path is not None:
        for layer, source in _read_yaml(Path(path)):
            cfg = merge_config(cfg, layer, source=source)
            if isinstance(layer.get("data"), Mapping) and "root" in layer["data"]:
                root_file = Path(source)
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
        source = "the command line"
    else:
        source = "overrides"
    cfg = merge_config(cfg, overrides, source=source)
    if isinstance(overrides.get("data"), Mapping) and "root" in overrides["data"]:
        root_file = None  # relative to the current directory
    if root_file is not None:
        cfg["data"]["root"] = resolve_data_root(cfg["data"]["root"], root_file.parent)
    return validate_config(cfg)


def resolve_data_root(root: str | None, config_dir: Path) -> str | None:
    """A relative ``data.root`` set in a config file, as an absolute path.

    It is looked up next to the config file that sets it, then (configs written for the
    current directory, e.g. ``root: data/nyuv2`` run from the project root) in the current
    directory; when neither exists it is left as it is (the dataset reports the missing folder).
    """
    if root is None or Path(root).is_absolute():
        return root
    for candidate in (config_dir / root, Path(root)):
        if candidate.exists():
            return str(candidate.resolve())
    return root


def run_data_root(root: str | None, checkpoint: str | Path) -> str | None:
    """The ``data.root`` stored in a run's checkpoint, as an absolute path where it is relative:
    relative to that run's directory (a run handed over with its data beside it, possibly seen
    through a symlinked view: the link is followed), else to the current one."""
    from arseg.rundir import RunDir

    return resolve_data_root(root, RunDir.of_checkpoint(Path(checkpoint).resolve()).path)


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write a resolved config as YAML (``load_config(path)`` reads it back unchanged)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
