"""Checkpoints: atomic writes, ``weights_only=True`` loads, config/checkpoint consistency.

An arseg checkpoint is a Lightning checkpoint (``state_dict`` keys prefixed ``model.``) plus
``checkpoint["arseg_config"]``, the resolved config of the run as plain YAML types, so that
:func:`load_model` rebuilds the network without any other file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from arseg.rundir import CHECKPOINTS, RunDir

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointMismatchError",
    "atomic_torch_save",
    "check_compatible",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "model_state_dict",
]


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the config (model, number of classes, weights)."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: ``path`` is the old file or the
    new one, never half of one (a crash, a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: write to a temporary file then rename; load with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def find_checkpoint(ckpt_or_run_dir: str | Path) -> Path:
    """A checkpoint file, or ``RUN/checkpoints/best.ckpt`` (else ``last.ckpt``) of a run directory."""
    path = Path(ckpt_or_run_dir)
    if path.is_dir():
        for name in CHECKPOINTS:
            candidate = RunDir(path).checkpoint(name)
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"no checkpoints/best.ckpt or checkpoints/last.ckpt in run directory {path}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint from its first bytes, or None when it may be one.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``), older torch a pickle (``\\x80``).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "the file is empty (0 bytes)"
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        return "the file was not written by torch.save"
    return None


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; a file that is not an arseg checkpoint (empty,
    foreign, truncated, holding code objects) is a one-line :class:`CheckpointMismatchError`.

    Never advises ``weights_only=False`` (torch's message does): that runs code from the file.
    """
    path = Path(path)
    if path.is_file():
        reason = _not_a_checkpoint(path)
        if reason is not None:
            raise CheckpointMismatchError(f"{path} is not an arseg checkpoint: {reason}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as err:  # objects a weights-only load refuses
        raise CheckpointMismatchError(
            f"{path} is not an arseg checkpoint: it holds Python objects other than tensors and "
            "plain values (not loaded: unpickling them could run code from the file)"
        ) from err
    except Exception as err:  # truncated archives, corrupt records
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
        raise CheckpointMismatchError(
            f"{path} is not a readable arseg checkpoint (truncated or corrupt?): {first}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"{path} is not an arseg checkpoint (no 'state_dict')")
    return ckpt


def model_state_dict(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's weights from a Lightning checkpoint (keys without the ``model.`` prefix)."""
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def check_compatible(
    cfg: dict[str, Any], ckpt: dict[str, Any], num_classes: int, path: Any = "checkpoint"
) -> None:
    """Raise :class:`CheckpointMismatchError` when ``ckpt`` was trained for another model or class count."""
    saved = ckpt.get("arseg_config")
    if saved is None:
        raise CheckpointMismatchError(f"{path} has no arseg config: it was not written by arseg")
    saved_model = saved["model"]["name"]
    saved_classes = saved["model"].get("num_classes")
    if saved_model != cfg["model"]["name"]:
        raise CheckpointMismatchError(
            f"{path} holds a '{saved_model}' model but the config asks for '{cfg['model']['name']}'"
        )
    if saved_classes is not None and saved_classes != num_classes:
        raise CheckpointMismatchError(
            f"{path} was trained for {saved_classes} classes ({saved['data']['name']}) but the "
            f"config has {num_classes} classes ({cfg['data']['name']})"
        )
    if saved["model"].get("options", {}) != cfg["model"].get("options", {}):
        raise CheckpointMismatchError(
            f"{path} was trained with model.options {saved['model'].get('options')} but the config "
            f"has {cfg['model'].get('options')}"
        )


def load_weights(
    model: nn.Module, state: dict[str, torch.Tensor], path: Any = "checkpoint"
) -> None:
    """``model.load_state_dict(state)`` with a readable error on any key or shape mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} of another shape (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise CheckpointMismatchError(
            f"the weights in {path} do not fit the model: " + "; ".join(parts)
        )
    model.load_state_dict(state)


def load_model(
    ckpt_or_run_dir: str | Path, map_location: Any = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of an arseg checkpoint or run directory.

    Args:
        ckpt_or_run_dir: a ``.ckpt`` file or a run directory (its ``checkpoints/best.ckpt``,
            else ``last.ckpt``).
        map_location: where the weights go (``torch.load`` semantics).

    Returns:
        ``(model in eval mode, resolved config dict)``; a relative ``data.root`` in it is made
        absolute against the run's directory (see :func:`arseg.engine.config.run_data_root`).
    """
    from arseg.models import build_model

    path = find_checkpoint(ckpt_or_run_dir)
    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = ckpt.get("arseg_config")
    if cfg is None:
        raise CheckpointMismatchError(f"{path} has no arseg config: it was not written by arseg")
    if isinstance(cfg.get("data"), dict) and cfg["data"].get("root"):
        from .config import run_data_root

        cfg["data"]["root"] = run_data_root(cfg["data"]["root"], path)
    model_cfg = cfg["model"]
    model = build_model(
        model_cfg["name"],
        num_classes=model_cfg["num_classes"],
        pretrained=False,
        **model_cfg["options"],
    )
    load_weights(model, model_state_dict(ckpt), path)
    if map_location is not None and not callable(map_location):
        model = model.to(map_location)
    return model.eval(), cfg
