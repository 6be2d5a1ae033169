"""Config loading: defaults, _base_ inheritance, dotted overrides, errors for unknown keys/types."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arseg.engine.config import DEFAULTS, ConfigError, dump_config, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_and_overrides_parse_yaml_values():
    cfg = load_config(
        None,
        [
            "optim.lr=0.5",
            "loss.scales=[8, 4]",
            "model.options.decoder_channels=32",
            "data.eval_resize=null",
            "data.hflip=false",
            "trainer.devices=2",
        ],
    )
    assert cfg["optim"]["lr"] == 0.5
    assert cfg["loss"]["scales"] == [8, 4]
    assert cfg["model"]["options"] == {"decoder_channels": 32}
    assert cfg["data"]["hflip"] is False
    assert cfg["trainer"]["devices"] == 2
    # untouched keys keep their defaults, and the defaults themselves are not mutated
    assert cfg["optim"]["momentum"] == DEFAULTS["optim"]["momentum"]
    assert DEFAULTS["model"]["options"] == {}


def test_int_is_accepted_for_float_keys():
    assert load_config(None, ["optim.lr=1"])["optim"]["lr"] == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("modell.name=x", "unknown config key 'modell'"),
        ("optim.lr=fast", "expects a float"),
        ("data.batch_size=2.5", "expects an int"),
        ("data.hflip=1", "expects a bool"),
        ("optim=3", "must be a mapping"),
        ("noequals", "key.subkey=value"),
        ("loss.lambda_ar=-1", "lambda_ar"),
        ("data.crop_size=[0, 4]", "crop_size"),
        ("eval.mode=slide", "eval.window"),
        ("optim.lr=null", r"optim\.lr.* cannot be null"),
        ("loss.lambda_ar=null", "cannot be null"),
        ("data.batch_size=null", "cannot be null"),
        ("seed=null", "cannot be null"),
        ("trainer.num_threads=two", r"num_threads.* expects int or null, got str"),
        ("trainer.checkpoint_every_n_steps=abc", "checkpoint_every_n_steps"),
        ("trainer.checkpoint_every_n_steps=-1", "must be >= 0 or null"),
        ("trainer.checkpoint_every_n_steps=0", None),  # 0: off, as before
        ("trainer.num_threads=0", None),
        ("trainer.max_epochs=null", None),  # Lightning's default
        ("data.root=null", None),
        ("trainer.limit_train_batches=abc", "limit_train_batches"),
        ("loss.class_weight=5", r"class_weight.* expects list or tuple or null"),
        ("loss.class_weight=[1, a]", "list of numbers >= 0"),
        ("loss.scales=[12, 0]", "'loss.scales'.*positive"),
        ("data.scale_range=[a, b]", "scale_range"),
        ("data.min_short_side=0", r"data\.min_short_side' must be >= 1 or null"),
        ("data.rotate_degrees=200", "rotate_degrees"),
        ("data.blur_prob=2", "blur_prob"),
        ("eval.window=[20, 20]", None),
    ],
)
def test_bad_overrides_are_errors(override, message):
    if message is None:  # a valid override among the invalid ones: no error
        load_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_nullable_keys_and_stride_longer_than_window():
    cfg = load_config(None, ["data.scale_range=null", "loss.scales=null", "init_from=null"])
    assert cfg["data"]["scale_range"] is None and cfg["loss"]["scales"] is None
    with pytest.raises(ConfigError, match=r"must not exceed eval\.window"):
        load_config(None, ["eval.window=[20, 20]", "eval.stride=[30, 10]"])


def test_base_inheritance_and_unknown_keys_in_files(tmp_path):
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"name": "b", "optim": {"lr": 0.3, "momentum": 0.5}})
    )
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump({"_base_": "base.yaml", "optim": {"lr": 0.1}})
    )
    cfg = load_config(tmp_path / "child.yaml", ["optim.momentum=0.7"])
    assert (cfg["name"], cfg["optim"]["lr"], cfg["optim"]["momentum"]) == ("b", 0.1, 0.7)

    (tmp_path / "typo.yaml").write_text(
        yaml.safe_dump({"_base_": "base.yaml", "trainer": {"max_epoch": 3}})
    )
    with pytest.raises(ConfigError, match=r"trainer.max_epoch.*typo.yaml"):
        load_config(tmp_path / "typo.yaml")

    (tmp_path / "loop_a.yaml").write_text("_base_: loop_b.yaml\n")
    (tmp_path / "loop_b.yaml").write_text("_base_: loop_a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop_a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_roundtrip(tmp_path):
    cfg = load_config(None, ["model.options.decoder_channels=8", "loss.class_weight=[1, 2.5]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize(
    "path",
    # study and arena configs (arseg study, arseg arena) have their own schema and tests
    sorted(p for p in CONFIGS.rglob("*.yaml") if not p.stem.endswith(("study", "arena"))),
    ids=lambda p: str(p.relative_to(CONFIGS)),
)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg["model"]["name"]
    if "finetune_ar" in path.name:
        assert cfg["loss"]["lambda_ar"] == pytest.approx(0.1)
    if "finetune_ce" in path.name:
        assert cfg["loss"]["lambda_ar"] == 0.0


def test_complete_config_fills_keys_added_since_a_run_was_written():
    from arseg.engine.config import DEFAULTS, complete_config

    stored = load_config(None, ["model.name=pspnet50", "trainer.num_threads=0"])
    del stored["data"]["rotate_degrees"], stored["eval"]
    full = complete_config(stored)
    assert full["data"]["rotate_degrees"] == DEFAULTS["data"]["rotate_degrees"]
    assert full["eval"] == DEFAULTS["eval"]
    assert full["model"]["name"] == "pspnet50" and full["trainer"]["num_threads"] == 0
    assert "rotate_degrees" not in stored["data"]  # the stored config is not modified


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-9", 1e-9),
        ("5e-4", 5e-4),
        ("1E5", 1e5),
        ("1e+3", 1e3),
        ("+1e-3", 1e-3),
        ("-2E-2", -2e-2),
        (".5e3", 500.0),
        ("1.e-3", 1e-3),
        ("2.5e-4", 2.5e-4),
        ("0.001", 0.001),
    ],
)
def test_every_float_spelling_is_a_float_in_overrides_and_files(tmp_path, text, value):
    """YAML 1.1 (PyYAML) reads 1e-9 or 5e-4 as strings: they must still be floats."""
    parsed = parse_overrides([f"optim.lr={text}"])["optim"]["lr"]
    assert parsed == pytest.approx(value) and isinstance(parsed, float)
    (tmp_path / "c.yaml").write_text(f"optim:\n  lr: {text}\nloss:\n  lambda_ar: {text}\n")
    if value > 0:
        cfg = load_config(None, [f"optim.lr={text}", f"optim.weight_decay={text}"])
        assert cfg["optim"]["lr"] == pytest.approx(value)
        assert cfg["optim"]["weight_decay"] == pytest.approx(value)
        cfg = load_config(tmp_path / "c.yaml")
        assert cfg["optim"]["lr"] == pytest.approx(value)
        assert cfg["loss"]["lambda_ar"] == pytest.approx(value)


def test_exponent_strings_that_are_not_numbers_stay_strings():
    assert parse_overrides(["name=1e5x", "run_dir=e5"]) == {"name": "1e5x", "run_dir": "e5"}


def test_relative_data_root_is_resolved_against_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "data" / "set").mkdir(parents=True)
    (tmp_path / "configs" / "sub").mkdir(parents=True)
    (tmp_path / "configs" / "base.yaml").write_text("data:\n  root: ../data/set\n")
    (tmp_path / "configs" / "sub" / "child.yaml").write_text("_base_: ../base.yaml\nseed: 1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # relative to the file that sets it (base.yaml), whatever the current directory
    cfg = load_config(tmp_path / "configs" / "sub" / "child.yaml")
    assert cfg["data"]["root"] == str(tmp_path / "data" / "set")
    # a config written for the current directory still works from there
    (tmp_path / "configs" / "cwd.yaml").write_text("data:\n  root: data/set\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(tmp_path / "configs" / "cwd.yaml")["data"]["root"] == str(
        tmp_path / "data" / "set"
    )
    # an override is the user's own path: kept relative to the current directory
    cfg = load_config(tmp_path / "configs" / "base.yaml", ["data.root=data/set"])
    assert cfg["data"]["root"] == "data/set"
