"""Fixtures of the study tests: the engine's tiny run configs and the analysis's fake runs."""

from __future__ import annotations

import pytest

from ..analysis.conftest import write_fake_run
from ..engine.conftest import tiny_config, write_config

__all__ = ["tiny_config", "write_config"]


@pytest.fixture
def make_run():
    """The fake finished run of the analysis tests (:func:`write_fake_run`)."""
    return write_fake_run


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here with one BLAS thread (``one_thread`` of tests/conftest.py)."""
