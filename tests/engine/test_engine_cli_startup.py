"""``arseg --help``, ``--version`` and every ``<command> --help`` stay fast: building the parser
imports no heavy library (checked by import inspection in a fresh interpreter, not by timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from arseg.cli import main

HEAVY = {
    "h5py",
    "lightning",
    "matplotlib",
    "mmseg",
    "numpy",
    "pandas",
    "PIL",
    "pytorch_lightning",
    "scipy",
    "segmentation_models_pytorch",
    "statsmodels",
    "timm",
    "torch",
    "torchmetrics",
    "torchvision",
    "yaml",
}

# In a fresh interpreter: build the parser, then ask every command (nested ones included) for
# its --help; print the commands seen and the heavy top-level modules that got imported.
PROBE = """
import argparse, contextlib, io, json, sys
import arseg.cli

def commands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from commands(sub, (*prefix, name))

seen = []
for argv in [["--version"], ["--help"], *([*c, "--help"] for c in commands(arseg.cli.build_parser()))]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        arseg.cli.main(argv)
    seen.append(" ".join(argv))
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"seen": seen, "heavy": heavy}))
"""


def test_help_and_version_import_no_heavy_module():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(sorted(HEAVY))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    for command in ("fit --help", "eval --help", "demo --help", "data check --help"):
        assert command in result["seen"]
    assert result["heavy"] == [], f"building the parser imported {result['heavy']}"


def test_every_parse_error_has_the_same_prefix(capsys):
    for argv in (["fit"], ["eval", "--bogus"], ["data", "check"], ["nonsense"]):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("arseg: error: "), (argv, err)
        if argv == ["fit"]:  # the optional overrides are not reported as missing
            assert err.splitlines()[-1].endswith("required: config"), err


def test_data_check_of_an_unknown_dataset_lists_the_valid_names(capsys):
    assert main(["data", "check", "nyu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("arseg: error: unknown dataset 'nyu'") and "camvid" in err


def test_analysis_errors_have_the_same_prefix(tmp_path, capsys):
    assert main(["trend", str(tmp_path / "missing")]) != 0
    assert capsys.readouterr().err.startswith("arseg: error: ")


def test_gpu_requested_without_one_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (
        ["eval", str(tmp_path), "--accelerator", "gpu"],
        [
            "predict",
            str(tmp_path),
            str(tmp_path),
            "--out",
            str(tmp_path / "p"),
            "--accelerator",
            "gpu",
        ],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("arseg: error: --accelerator gpu: no CUDA GPU is available"), err
        assert len(err.strip().splitlines()) == 1


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``arseg config show | head -1``: the closed pipe ends the command quietly."""
    arseg = Path(sys.executable).with_name("arseg")
    proc = subprocess.Popen(
        [str(arseg), "config", "show"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""
