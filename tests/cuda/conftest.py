"""The CUDA tests: what the CPU tests check, run on a GPU.

Every test in this folder is marked ``cuda`` and skipped, with one reason, where CUDA is not
available, so the default CPU run stays green. On a machine with a GPU::

    pytest -m cuda tests/cuda

Checking the tests' own logic without a GPU: ``ARSEG_TEST_DEVICE=cpu`` runs the same bodies on
the CPU (accelerator ``cpu``, gloo instead of NCCL); the few checks that exist only on CUDA (the
device-side assert, NCCL, cuDNN determinism, ``16-mixed`` on Lightning's CPU) are skipped or take
their CPU form, as each test says. Never set it in the default run: it takes minutes::

    ARSEG_TEST_DEVICE=cpu pytest -m cuda tests/cuda
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
DEVICE_ENV = "ARSEG_TEST_DEVICE"


def device_name() -> str:
    """``"cuda"`` (the default) or the device ``ARSEG_TEST_DEVICE`` forces (``"cpu"``)."""
    name = os.environ.get(DEVICE_ENV, "cuda").strip().lower() or "cuda"
    if name not in ("cuda", "cpu"):
        raise pytest.UsageError(f"{DEVICE_ENV} must be 'cuda' or 'cpu', got {name!r}")
    return name


def on_cuda() -> bool:
    return device_name() == "cuda"


def accelerator() -> str:
    """The engine's ``--accelerator`` for the test device."""
    return "gpu" if on_cuda() else "cpu"


def _skip_reason() -> str | None:
    if on_cuda() and not torch.cuda.is_available():
        return "CUDA is not available (ARSEG_TEST_DEVICE=cpu runs these tests' bodies on the CPU)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark and skip only those of this folder.
    reason = _skip_reason()
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.cuda)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def device() -> torch.device:
    return torch.device(device_name())


@pytest.fixture(autouse=True)
def _strict_float32():
    """Plain float32 on the GPU: no TF32 in matrix products or convolutions (cuDNN allows TF32
    by default on Ampere and later, ~1e-3 relative error), so that "equal to the CPU" can be
    checked at float32 tolerances. Tests of the engine's mixed precision do not depend on it."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def synchronize() -> None:
    if on_cuda():
        torch.cuda.synchronize()
