"""Packaging: a torch-only core, extras that declare what their code imports, and a CLI that
names the missing extra.

The core runs in a subprocess where the optional libraries cannot be imported (a meta-path
finder installed before anything else raises ``ModuleNotFoundError`` for them, as if they were
not installed).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (3.10 would need tomli)
requirements = pytest.importorskip("packaging.requirements")
utils = pytest.importorskip("packaging.utils")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "arseg"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# what a torch-only install lacks
BLOCKED = (
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "timm",
    "torchvision",
    "torchmetrics",
    "matplotlib",
    "scipy",
    "statsmodels",
    "pandas",
    "yaml",
    "PIL",
    "h5py",
    "tqdm",
    "segmentation_models_pytorch",
)
BLOCKER = textwrap.dedent(
    f"""
    import sys

    class _Absent:
        # find_spec raising ModuleNotFoundError is what an uninstalled top-level package gives
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{top!r}}", name=top)
            return None

    sys.meta_path.insert(0, _Absent())
    """
)

# import name -> distribution name, where they differ
DISTRIBUTION = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "lightning_fabric": "lightning",
    "pytorch_lightning": "lightning",
}
# each part of the package -> the extra that must declare everything it imports ("" = core)
AREAS = {
    # the study (arseg study) is a floor above engine and analysis: it trains, then compares and
    # reports; its cluster runner needs submitit (the first key that matches a file counts)
    "study/cluster.py": "cluster",
    "study": "analysis",
    "models": "models",
    "data": "data",
    "engine": "train",
    "analysis": "analysis",
    "integrations/smp.py": "smp",
}
# mmsegmentation is installed by its users (mmcv is built per torch version): no arseg extra
NOT_CHECKED = ("integrations/mmseg.py",)


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _name(requirement: str) -> str:
    return utils.canonicalize_name(requirements.Requirement(requirement).name)


def _extra(name: str, seen: tuple[str, ...] = ()) -> set[str]:
    """Distribution names an extra installs (core included), self-references resolved."""
    out = {_name(r) for r in PYPROJECT["dependencies"]}
    for text in PYPROJECT["optional-dependencies"][name]:
        req = requirements.Requirement(text)
        if utils.canonicalize_name(req.name) == "arseg":
            assert not set(req.extras) & {name, *seen}, f"circular extra {name}"
            for sub in req.extras:
                out |= _extra(sub, (*seen, name))
        else:
            out.add(utils.canonicalize_name(req.name))
    return out


def test_core_dependencies_are_torch_only():
    assert {_name(r) for r in PYPROJECT["dependencies"]} <= {"torch", "numpy"}
    assert "torch" in {_name(r) for r in PYPROJECT["dependencies"]}
    extras = PYPROJECT["optional-dependencies"]
    assert {"models", "weights", "data", "train", "analysis", "smp", "all", "dev"} <= set(extras)
    for name in extras:
        assert "cityscapesscripts" not in _extra(name)
    every = set().union(*(_extra(n) for n in extras if n not in ("all", "dev", "tensorboard")))
    assert _extra("all") == every
    assert _extra("dev") >= every | {"pytest", "pytest-timeout", "hypothesis", "ruff"}
    assert _extra("train") >= _extra("models") | _extra("data")
    assert "pandas" in _extra("analysis")  # arseg.analysis.runs imports it
    # the ranges admit the torch / torchvision this project is tested with
    pins = {"torch": "2.14.1", "torchvision": "0.29.1"}
    for text in [*PYPROJECT["dependencies"], *(r for n in extras for r in extras[n])]:
        req = requirements.Requirement(text)
        if req.name in pins:
            assert req.specifier.contains(pins[req.name]), text


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level third-party modules and arseg areas that ``path`` imports, anywhere in it."""
    third, areas = set(), set()
    package = path.relative_to(SRC.parent).with_suffix("").parts[:-1]  # ("arseg", "data")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [".".join((*base, node.module or ""))]
            else:
                names = [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "require"
            and isinstance(node.args[0], ast.Constant)
        ):
            names = [node.args[0].value]  # arseg._extras.require("module", "extra", ...)
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "arseg":
                areas.add(_area_of("/".join(parts[1:])))
            elif parts[0] not in sys.stdlib_module_names and parts[0] != "__future__":
                third.add(utils.canonicalize_name(DISTRIBUTION.get(parts[0], parts[0])))
    return third, areas


def _area_of(relative: str) -> str:
    """``"data/base.py"`` or ``"data/base"`` -> its key of AREAS (``""`` = core)."""
    stem = relative.removesuffix(".py")
    for key in AREAS:
        prefix = key.removesuffix(".py")
        if stem == prefix or stem.startswith(prefix + "/"):
            return key
    return ""


def test_every_extra_declares_what_its_code_imports():
    direct: dict[str, set[str]] = {}
    uses: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative in NOT_CHECKED:
            continue
        area = _area_of(relative)
        third, areas = _imports(path)
        direct.setdefault(area, set()).update(third)
        uses.setdefault(area, set()).update(areas - {area})
    assert set(AREAS) <= set(direct), "an area of AREAS has no module"

    def needs(area: str, seen: frozenset = frozenset()) -> set[str]:
        out = set(direct.get(area, ()))
        for other in uses.get(area, ()):
            if other not in seen:
                out |= needs(other, seen | {area})
        return out

    core = {_name(r) for r in PYPROJECT["dependencies"]}
    assert needs("") <= core, f"the core imports {sorted(needs('') - core)}"
    for area, extra in AREAS.items():
        missing = needs(area) - _extra(extra)
        assert not missing, f"{area} imports {sorted(missing)}, not declared in [{extra}]"


def test_extras_table_of_the_cli_matches_pyproject():
    from arseg._extras import EXTRA_OF_COMMAND_MODULE, EXTRA_OF_MODULE

    for module, extra in EXTRA_OF_MODULE.items():
        dist = utils.canonicalize_name(DISTRIBUTION.get(module, module))
        assert dist in _extra(extra), f"{module}: [{extra}] does not install {dist}"
    for module, extra in EXTRA_OF_COMMAND_MODULE.items():
        relative = module.removeprefix("arseg.").replace(".", "/") + ".py"
        assert AREAS[_area_of(relative)] == extra, module


def test_core_works_with_torch_alone(tmp_path):
    result = _run(
        """
        import json
        import torch
        import arseg
        from arseg import ARLoss, CEARLoss, ar_loss, label_affinity, sqrt_affinity

        for name in ("lightning", "PIL.Image", "yaml"):  # the blocker itself works
            try:
                __import__(name)
            except ModuleNotFoundError:
                pass
            else:
                raise AssertionError(name + " imported")
        torch.manual_seed(0)
        logits = torch.randn(2, 5, 16, 16, requires_grad=True)
        target = torch.randint(0, 5, (2, 64, 64))
        loss = ar_loss(logits, target)
        loss.backward()
        M, valid = label_affinity(target)
        A = sqrt_affinity(logits)
        assert bool(valid.all()) and A.shape == M.shape == (2, 180, 180)
        assert torch.allclose(loss, ((A - M) ** 2).mean(), atol=1e-6)
        assert torch.allclose(ARLoss()(logits, target), loss)
        total, ce, ar = CEARLoss(lambda_ar=0.1)(logits, target)
        assert torch.allclose(total, ce + 0.1 * ar) and torch.allclose(ar, loss)
        assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
        print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules})))
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "arseg" in loaded and not loaded & set(BLOCKED)


def test_cli_names_the_missing_extra(tmp_path):
    (tmp_path / "tiny.yaml").write_text("model: {name: lwrefinenet18}\n")
    result = _run(
        """
        from arseg.cli import main
        raise SystemExit(main(["fit", "tiny.yaml", "--run-dir", "run"]))
        """,
        tmp_path,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    blocked = "|".join(re.escape(m) for m in BLOCKED)
    assert re.fullmatch(
        r"arseg: error: 'arseg fit' needs the 'train' extra: pip install \"arseg\[train\]\" "
        rf"\(missing module: ({blocked})\)",
        lines[0],
    ), lines[0]
    assert not (tmp_path / "run").exists()
